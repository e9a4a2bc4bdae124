"""HSTU CollectiveKV with the candidate token projected vs routed (``collective_target``), from two runs of the
compression suite (ml100k, 1 epoch, seed 2024; commands on docs/results/hstu_collective_target_ml100k.md): AUC of
each through the serving path (fp32 and int8 codecs) against the full cache, and projected - routed, by the
project's bootstrap (one seed each, so over users only).

One command: ``.venv/bin/python bench/hstu_collective_target.py [EVIDENCE_DIR] [OUT.json]``."""
import json
import sys
from pathlib import Path

import numpy as np

from seqctr.data import prepare
from seqctr.experiments.summary import predictions
from seqctr.metrics.stats import cluster_bootstrap

E = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache/seqctr/evidence/ml100k/hstu-target"
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[1] / "docs/results/hstu_collective_target_ml100k.json"
ds, _, _ = prepare("ml100k")
ti = np.sort(ds.indices("test"))
y, users, L = ds.label[ti], ds.sample_user[ti], ds.sample_pos[ti]
P = lambda t, v: predictions(E / t / "compression/hstu" / v / "seed2024", ti)
out = {"auc": {}}
fmt = lambda d: f"{d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
for codec in ("fp32", "int8"):
    full = P("projected", f"full_{codec}")
    assert np.allclose(full, P("routed", f"full_{codec}"), atol=1e-6), "the two full runs differ"
    for name, a, b in [("routed - full", full, P("routed", f"ckv_{codec}")),
                       ("projected - full", full, P("projected", f"ckv_{codec}")),
                       ("projected - routed", P("routed", f"ckv_{codec}"), P("projected", f"ckv_{codec}"))]:
        o = cluster_bootstrap(y, users, [a], [b])
        s = cluster_bootstrap(y, users, [a], [b], mask=L < 100)
        out[f"{codec}: {name}"] = {"overall": o, "lt100": s}
        print(f"{codec:5s} {name:20s} overall {fmt(o)}   <100 events {fmt(s)}")
for t in ("routed", "projected"):
    for v in ("full_fp32", "ckv_fp32"):
        r = cluster_bootstrap(y, users, [P(t, v)])
        out["auc"][f"{t}/{v}"] = r
        print(t, v, f"AUC {r['value']:.4f} [{r['lo']:.4f}, {r['hi']:.4f}]")
OUT.write_text(json.dumps(out, indent=1, default=float))
