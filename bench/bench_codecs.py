"""Bytes per user and decode / scoring time of every cache codec, per model and history length.

``python bench/bench_codecs.py [--models twin,sim,hstu] [--lengths 50,200,1000] [--codecs ...] [--cpu 0]``

The benchmark models of ``bench/serving_models.py`` (random weights, the CollectiveKV paper's widths;
bytes and times do not depend on training), full K/V and CollectiveKV caches, each cache in every codec
of :mod:`seqctr.serving.codecs`: the bytes a store keeps for one user (``KVCache.nbytes`` of the encoded
cache, and the length of its byte form), users per GB of cache, the encode and decode times and the time to score
200 candidates from the decoded cache (medians of ``--repeats`` calls, one thread), and the largest
change of a probability against the fp32 cache. Accuracy on real data (AUC per codec) is the
frontier experiment's. Writes ``docs/results/cache_codecs.{json,md}``.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import serving_models as sm

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    args = sm.cache_bench_args(__doc__.splitlines()[0], "twin,sim,hstu", "docs/results/cache_codecs",
                               codecs="fp32,bf16,int8,rank16,rank32")
    import torch

    from seqctr.serving.codecs import Codec
    from seqctr.serving.runtime import score

    rows = []
    for name, variant, T, model, cache, cands in sm.benchmark_caches(args):
        with torch.no_grad():
            ref = score(model, cache, cands)
        for codec in args.codecs.split(","):
            stored = Codec(codec).encode(cache)
            if codec.startswith("rank") and not stored.meta.get("rank"):
                continue                                  # nothing factored: the int8 row again
            blob = stored.to_bytes()
            dec = Codec.decode(stored)
            with torch.no_grad():
                t_enc = sm.timed(lambda: Codec(codec).encode(cache), args.repeats)
                t_dec = sm.timed(lambda: Codec.decode(stored), args.repeats)
                t_score = sm.timed(lambda: score(model, dec, cands), args.repeats)
                dev = float((score(model, dec, cands) - ref).abs().max())
            nbytes = stored.nbytes()
            rows.append({"model": name, "cache": variant, "events": T, "codec": codec, "bytes": nbytes,
                         "blob_bytes": len(blob), "x_fp32_full": None, "users_per_gb": 1e9 / nbytes,
                         "encode_ms": 1e3 * statistics.median(t_enc), "decode_ms": 1e3 * statistics.median(t_dec),
                         "score_ms": 1e3 * statistics.median(t_score), "max_prob_change": dev})
            print(f"{name:5s} {variant:4s} T={T:5d} {codec:6s} {nbytes:>10,} B  encode / decode "
                  f"{rows[-1]['encode_ms']:.3f} / {rows[-1]['decode_ms']:.3f} ms  score {rows[-1]['score_ms']:.2f} ms  |dp| {dev:.2e}", flush=True)
    full = {(r["model"], r["events"]): r["bytes"] for r in rows if r["cache"] == "full" and r["codec"] == "fp32"}
    for r in rows:
        r["x_fp32_full"] = r["bytes"] / full[(r["model"], r["events"])]
    cmd, load, out = sm.write_results(args, __file__, {"rows": rows})
    lines = ["# Cache codecs: bytes per user, decode and scoring time", "",
             f"`{cmd}` (generated; do not edit). Benchmark models of `bench/serving_models.py` (random weights, "
             "attention 256 / 8 heads; HSTU 128, 2 layers), one user, "
             f"{args.candidates} candidates, medians of {args.repeats} calls on one thread. `bytes`: what a store "
             "keeps for the user (`KVCache.nbytes` of the encoded cache; `blob`: its byte form, header included); `x fp32 full`: against the full fp32 "
             "cache at the same length; `|dp|`: the largest change of a probability against the fp32 cache of the "
             "same model (random weights: a bound on the rounding, not an accuracy; AUC per codec comes from the "
             f"frontier experiment). Load average (1 min) at the end: {load:.1f} on 2 cores (times are comparable "
             "only between runs at a similar load; bytes are exact).", "",
             "A `rankR` row is shown only where the codec factors a tensor (elsewhere it is the int8 row). HSTU's "
             "other caches (`models/hstu.py`): `ckv-proj`, CollectiveKV with the candidate token projected instead "
             "of routed (`collective_target: projected`: no router GEMM per request, other weights); `ckv-lean` / "
             "`full-lean`, the first layer left out of the cache and rebuilt from the cached ids per request "
             "(`cache_first_layer: false`: the same weights).", "",
             "| model | cache | events | codec | bytes | blob | x fp32 full | users / GB | encode ms | decode ms | score ms | |dp| |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['cache']} | {r['events']:,} | {r['codec']} | {r['bytes']:,} | "
                     f"{r['blob_bytes']:,} | {100 * r['x_fp32_full']:.2f}% | {r['users_per_gb']:,.0f} | "
                     f"{r['encode_ms']:.3f} | {r['decode_ms']:.3f} | "
                     f"{r['score_ms']:.2f} | {r['max_prob_change']:.1e} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
