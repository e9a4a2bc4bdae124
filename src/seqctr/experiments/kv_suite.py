"""CollectiveKV experiment: accuracy and per-user cache bytes of compressed vs uncompressed K/V.

Per backbone, one group per variant (all at the CollectiveKV paper's attention width, 256, for
the target-attention backbones; HSTU's width is its model width):

- ``base``: uncompressed K/V;
- ``silu``: uncompressed with the extra SiLU on q/K/V the authors' code applies (the control:
  CollectiveKV runs carry that SiLU too, so ``silu`` vs ``ckv`` isolates the compression);
- ``ck`` / ``cv`` / ``ckv``: CollectiveK, CollectiveV, CollectiveKV (``d_u`` 1, ``m`` 10,000);

plus, on the sweep backbone, CollectiveKV with other user widths (``du{d}``) and pool sizes
(``m{m}``). HSTU already applies SiLU to its keys and values, so it has no ``silu`` control and
its CollectiveKV runs are compared with ``base``. Accuracy is summarised as in the LAIN suite
(mean and t-interval over seeds, paired bootstrap of each group's difference to the control);
cache bytes come from :func:`~seqctr.serving.accounting.kv_cache_bytes` at the mean (truncated)
test history length and at ``max_len``.
"""
from __future__ import annotations

from pathlib import Path

from .summary import finish, format_summary, mark_significance, specs, summarise
from .runner import run_specs

VARIANTS = ("base", "silu", "ck", "cv", "ckv")
WIDE = ["model.options.attention_dim=256"]
USER_DIM, POOL_SIZE = 1, 10000   # the paper's d_u and m: the ``ck``/``cv``/``ckv`` runs; sweeps vary one


def _ckv(user_dim: int, pool_size: int, share_k: bool = True, share_v: bool = True) -> str:
    return (f"model.options.collective_kv={{user_dim: {user_dim}, pool_size: {pool_size}, "
            f"share_k: {str(share_k).lower()}, share_v: {str(share_v).lower()}}}")


def variant_overrides(backbone: str, variant: str, user_dim: int = USER_DIM,
                      pool_size: int = POOL_SIZE) -> list[str] | None:
    """``--set`` overrides of one variant, or None where it does not apply (HSTU's ``silu``)."""
    hstu = backbone == "hstu"
    base = [] if hstu else list(WIDE)
    silu = [] if hstu else ["model.options.silu_qkv=true"]
    if variant == "base":
        return base
    if variant == "silu":
        return None if hstu else base + silu
    share = {"ck": (True, False), "cv": (False, True), "ckv": (True, True)}[variant]
    return base + silu + [_ckv(user_dim, pool_size, *share)]


def control_variant(backbone: str) -> str:
    """The variant every Δ of ``backbone`` is taken against: the SiLU control, or ``base`` where
    there is none (HSTU)."""
    return "silu" if variant_overrides(backbone, "silu") is not None else "base"


def kv_groups(backbones: list[str], config_dir: Path, variants=VARIANTS, sweep_backbone: str | None = None,
              user_dims=(USER_DIM,), pool_sizes=(POOL_SIZE,)) -> dict[str, tuple[str, list]]:
    """``{group: (config path, overrides)}`` for every backbone x variant, plus the sweeps. Each
    backbone's control (``silu``; ``base`` for HSTU) is always included: every Δ is taken against it."""
    groups = {}
    for b in backbones:
        cfg = str(Path(config_dir) / f"{b}.yaml")
        for v in dict.fromkeys([control_variant(b), *variants]):
            ov = variant_overrides(b, v)
            if ov is not None:
                groups[f"{b}/{v}"] = (cfg, ov)
        if b == sweep_backbone:
            for d in user_dims:
                if d != USER_DIM:
                    groups[f"{b}/ckv_du{d}"] = (cfg, variant_overrides(b, "ckv", user_dim=d))
            for m in pool_sizes:
                if m != POOL_SIZE:
                    groups[f"{b}/ckv_m{m}"] = (cfg, variant_overrides(b, "ckv", pool_size=m))
    return groups


def cache_accounting(groups: dict[str, tuple[str, list]], sets: list[str] = ()) -> dict[str, dict]:
    """Per group: :func:`kv_cache_bytes` at the mean truncated test history length and at
    ``max_len`` (built from the config; bytes do not depend on the weights)."""
    import numpy as np

    from ..config import load_config
    from ..data import prepare_config
    from ..models import build_model
    from .accounting import kv_cache_bytes

    out, data = {}, {}
    for g, (cfg_path, ov) in groups.items():
        cfg = load_config(cfg_path, list(sets) + list(ov))
        key = (cfg.data.source, cfg.data.max_len)
        if key not in data:
            ds, _, _ = prepare_config(cfg.data)
            L = ds.sample_pos[ds.indices("test")]
            data[key] = (ds.meta, float(np.minimum(L, cfg.data.max_len).mean()))
        meta, mean_len = data[key]
        backbone = build_model(cfg.model, meta).backbone
        out[g] = {"mean_events": kv_cache_bytes(backbone, events=round(mean_len)),
                  "max_len": kv_cache_bytes(backbone, events=cfg.data.max_len)}
    return out


def _pct(x: float) -> str:
    return "–" if x != x else f"{x:.2%}"    # NaN: no compressed layer


def format_bytes_table(acc: dict[str, dict]) -> str:
    rows = ["| group | events | full K/V bytes/user | cached bytes/user | ratio | ratio w/o indices "
            "| ratio, compressed layers only | pool bytes (shared) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for g, a in acc.items():
        for k in ("mean_events", "max_len"):
            r = a[k]
            rows.append(f"| {g} | {r['events']} | {r['full_bytes']:,} | {r['cached_bytes']:,} | {r['ratio']:.2%} "
                        f"| {r['ratio_without_indices']:.2%} | {_pct(r['ratio_compressed'])} | {r['pool_bytes']:,} |")
    return "\n".join(rows)


def kv(backbones: list[str], seeds: list[int], out: Path, config_dir: Path, sets: list[str] = (),
       variants=VARIANTS, sweep_backbone: str | None = None, user_dims=(1, 2, 4, 8), pool_sizes=(100, 1000, 10000),
       jobs: int = 2, threads: int = 1, log=print) -> dict:
    """Backbones x CollectiveKV variants x seeds, plus d_u / m sweeps on ``sweep_backbone``."""
    root = Path(out) / "kv"
    groups = kv_groups(backbones, config_dir, variants, sweep_backbone, user_dims, pool_sizes)
    metrics = run_specs(specs(groups, seeds, sets), root, jobs, threads, log)
    acc = cache_accounting(groups, sets)
    res, md = {"backbones": {}, "cache": acc}, ["# CollectiveKV: accuracy and per-user cache", ""]
    for b in backbones:
        mine = {g: None for g in groups if g.startswith(b + "/")}
        res["backbones"][b] = summarise(root, mine, seeds, f"{b}/{control_variant(b)}", metrics)
    mark_significance(res)
    for b in backbones:
        md += [format_summary(res["backbones"][b], f"{b} (Δ vs {control_variant(b)})"), ""]
    md += ["## Per-user cache bytes (float32 K/V; CollectiveKV: user parts + pool indices)", "",
           format_bytes_table(acc)]
    return finish(Path(out), "kv", res, "\n".join(md))
