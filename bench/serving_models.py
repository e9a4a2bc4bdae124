"""The models the serving benchmarks time (shared by bench_serving.py and bench_cache_store.py).

Random weights (latency and bytes do not depend on training). Target-attention models at the
CollectiveKV paper's width (attention_dim 256, 8 heads); HSTU at its ml100k width (128, 2 layers,
2 heads) with room for 1,000 events. CollectiveKV: d_u 1, pool 10,000, on both branches of the
two-branch models (their whole K/V cache) and on every HSTU layer.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Without these, glibc hands every large per-request buffer (e.g. the no-cache forward's [N, T, D]
# history broadcast) back to the OS and page-faults it in again on the next request: most of that
# path's time, and a noise source for every variant. A CPU server would run like this (or use jemalloc).
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def with_tuned_malloc(script: str) -> None:
    """Re-run ``script`` (this process's command line) with :data:`TUNED_MALLOC` set, unless it
    already is: glibc reads these at start-up only."""
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") != TUNED_MALLOC["MALLOC_TRIM_THRESHOLD_"]:
        os.execve(sys.executable, [sys.executable, script, *sys.argv[1:]], {**os.environ, **TUNED_MALLOC})

def timed(fn, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn()`` in seconds, sorted, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)


def paired(runs: dict, rounds: int) -> dict:
    """Two callables ``runs = {a: fa, b: fb}`` timed in ``rounds`` alternating paired rounds
    (:func:`seqctr.serving.export.paired_times`): ``{a_ms, b_ms}`` (medians) and ``speedup``, the median
    per-round ratio ``a / b`` with its first and third quartiles (``speedup_q1``, ``speedup_q3``)."""
    import statistics

    from seqctr.serving.export import paired_times

    (a, b) = runs
    ts = paired_times(runs, rounds)
    return {f"{a}_ms": statistics.median(ts[a]) * 1e3, f"{b}_ms": statistics.median(ts[b]) * 1e3,
            **ratio_summary(ts[a], ts[b])}


def ratio_summary(a: list[float], b: list[float], name: str = "speedup") -> dict:
    """Paired rounds' times ``a``, ``b`` -> ``{name: median of the per-round ratios a / b, name_q1, name_q3}`` (their
    first and third quartiles)."""
    import statistics

    rs = sorted(x / y for x, y in zip(a, b))
    return {name: statistics.median(rs), f"{name}_q1": rs[len(rs) // 4], f"{name}_q3": rs[(3 * len(rs)) // 4]}


def write_page(out: Path, lines: list[str]) -> None:
    """The results page ``out``.md from ``lines``, also printed."""
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_results(args, script: str, payload: dict):
    """Write ``args.out``.json: the command line that made it, this machine's load average (1 min) now,
    and ``payload``. Returns ``(command, load, out path)`` for the page written beside it."""
    import json

    cmd = f"python bench/{Path(script).name} " + " ".join(sys.argv[1:])
    load = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, "load_average_1m": load, **payload}, indent=1))
    return cmd, load, out


def setup(cpu: str):
    """Pin this process to ``cpu`` ('' = no pinning), one torch thread, and the prepared ml100k:
    ``(dataset, item feature rows [I, Fi] as a LongTensor)``."""
    if cpu:
        os.sched_setaffinity(0, {int(cpu)})
    import torch

    from seqctr.data import prepare

    torch.set_num_threads(1)
    ds, _, _ = prepare("ml100k")
    return ds, torch.from_numpy(ds.item_feats).long()


WIDE = {"sim": ["model.options.attention_dim=256", "model.options.num_heads=8"],
        "twin": ["model.options.attention_dim=256", "model.options.num_heads=8"],
        "eta": ["model.options.attention_dim=256", "model.options.num_heads=8"],
        "hstu": ["model.options.max_len=1024"]}
COLLECTIVE = {name: ['model.options.collective_kv={"user_dim": 1, "pool_size": 10000, "branches": ["short", "long"]}']
              for name in ("sim", "twin", "eta")}
COLLECTIVE["hstu"] = ['model.options.collective_kv={"user_dim": 1, "pool_size": 10000}']
# HSTU's other cache forms (models/hstu.py): CollectiveKV with the candidate token projected instead of
# routed (collective_target), and caches without the first layer, rebuilt from the ids (cache_first_layer)
EXTRA = {"hstu": {"ckv-proj": COLLECTIVE["hstu"] + ["model.options.collective_target=projected"],
                  "ckv-lean": COLLECTIVE["hstu"] + ["model.options.cache_first_layer=false"],
                  "full-lean": ["model.options.cache_first_layer=false"]}}


def variants(name: str) -> list[str]:
    """The caches benchmarked for ``name``: full, CollectiveKV where it exists, and :data:`EXTRA`'s."""
    return ["full"] + (["ckv"] if name in COLLECTIVE else []) + list(EXTRA.get(name, {}))


def overrides(name: str, collective: bool | str = False) -> list[str]:
    """``--set`` overrides of ``configs/ml100k/{name}.yaml`` for the benchmark model; ``collective``: a
    :func:`variants` name, or True for ``ckv``."""
    variant = {True: "ckv", False: "full"}.get(collective, collective)
    base = {"full": [], "ckv": COLLECTIVE.get(name)}
    return WIDE.get(name, []) + (base[variant] if variant in base else EXTRA[name][variant])


def build(name: str, meta: dict, collective: bool | str = False):
    """The benchmark model in eval mode, seeded so every variant starts from the same weights."""
    import torch

    from seqctr.config import load_config
    from seqctr.models import build_model

    torch.manual_seed(0)
    return build_model(load_config(ROOT / f"configs/ml100k/{name}.yaml", overrides(name, collective)).model,
                       meta).eval()


def gemm_ceiling(n: int = 1536, reps: int = 5) -> float:
    """GFLOP/s of a large square fp32 ``torch.mm`` on this thread (median of ``reps``): the core's ceiling."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * n ** 3 / sorted(ts)[reps // 2] / 1e9


def cache_bench_args(description: str, models: str, out: str, codecs: str = "", extra=(),
                     lengths: str = "50,200,1000"):
    """The options every per-cache benchmark takes (models, lengths, candidates, repeats, cpu, out; ``--codecs``
    when ``codecs`` gives its default), parsed."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--models", default=models)
    ap.add_argument("--lengths", default=lengths)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cpu", default="")
    ap.add_argument("--out", default=str(ROOT / out))
    if codecs:
        ap.add_argument("--codecs", default=codecs, help="cache codecs (seqctr.serving.codecs), comma-separated")
    for flag, kind, default, help_text in extra:          # a script's own options: (flag, type, default, help)
        ap.add_argument(flag, type=kind, default=default, help=help_text)
    return ap.parse_args()


def benchmark_caches(args):
    """For each benchmark model x cache (:func:`variants`) x history length of ``args``
    (:func:`cache_bench_args`): ``(name, variant, events, model, cache, candidates)`` — one user's
    prefilled cache of random events and ``args.candidates`` random candidates (seeded: the same in every run)."""
    ds, items = setup(args.cpu)
    import torch

    from seqctr.serving.runtime import prefill

    g = torch.Generator().manual_seed(0)
    user = torch.from_numpy(ds.user_feats[0]).long()
    cands = items[torch.randint(2, len(items), (args.candidates,), generator=g)]
    for name in args.models.split(","):
        for variant in variants(name):
            model = build(name, ds.meta, collective=variant)
            for T in map(int, args.lengths.split(",")):
                hist = items[torch.randint(2, len(items), (T,), generator=g)]
                yield name, variant, T, model, prefill(model, user, hist, max_len=T), cands
