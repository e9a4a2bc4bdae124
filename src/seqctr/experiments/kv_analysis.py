"""``seqctr analyze kv``: how much of the cached K/V is shared across users (CollectiveKV, §5).

For users whose short window is full (no padding), take the short-branch ``K = W_k S`` and
``V = W_v S`` (``n x d`` each), stack all users' rows, and compute the SVD. Reported:

- the energy spectrum and the rank ``r`` holding ``energy`` (default 90%) of it;
- per user, the principal part ``K V_r V_r^T`` and the residual; the Pearson correlation of every
  user pair's flattened, position-aligned principal parts and residual parts (the paper reports
  broad principal correlations and residual ones clustered at 0);
- the energy beyond rank ``d - d_u`` for ``d_u`` = 1, 2, 4, 8 (room for a user-specific channel).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def collect_short_kv(model, ds, users: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``{"k": [U, n, d], "v": [U, n, d]}`` from each chosen user's last test sample."""
    from ..data import gather_batch

    backbone = model.backbone
    S = backbone.short_seq_len - 1
    test = ds.indices("test")
    last = {}
    for i in test:                                   # the last test sample of each user
        last[int(ds.sample_user[i])] = i
    idx = np.array([i for i in last.values() if ds.sample_pos[i] >= S], dtype=np.int64)
    rng = np.random.default_rng(seed)
    idx = rng.choice(idx, size=min(users, len(idx)), replace=False) if len(idx) else idx
    if len(idx) < 2:
        raise ValueError(f"need at least 2 users with >= {S} events, found {len(idx)}")
    batch = gather_batch(ds, np.sort(idx), S)
    model.eval()
    with torch.no_grad():
        hist = model.embedding.items(batch.hist)
        att = backbone.short_attention
        if att.ckv is not None:
            k, v = att.ckv(hist[..., : att.key_dim], hist)[:2]
        else:
            k, v = att.W_k(hist[..., : att.key_dim]), att.W_v(hist)
    return {"k": k.numpy().astype(np.float64), "v": v.numpy().astype(np.float64)}


def svd_share(x: np.ndarray, energy: float = 0.9, center: bool = True) -> dict:
    """SVD diagnostic of ``x [U, n, d]``: spectrum, rank at ``energy``, principal/residual
    cross-user correlations, energy beyond ``d - d_u``."""
    U, n, d = x.shape
    flat = x.reshape(U * n, d)
    if center:
        flat = flat - flat.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(flat, full_matrices=False)
    e = s ** 2 / np.sum(s ** 2)
    cum = np.cumsum(e)
    r = int(np.searchsorted(cum, energy) + 1)
    basis = vt[:r].T                                        # [d, r]
    xc = flat.reshape(U, n, d)
    principal = xc @ basis @ basis.T
    residual = xc - principal

    def pair_corr(a):
        z = a.reshape(U, -1)
        z = z - z.mean(1, keepdims=True)
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        c = z @ z.T
        return c[np.triu_indices(U, 1)]

    cp, cr = pair_corr(principal), pair_corr(residual)
    return {"users": U, "events_per_user": n, "dim": d, "energy_share": e.tolist(), "rank_at_energy": r,
            "energy": energy, "principal_corr": {"mean_abs": float(np.mean(np.abs(cp))), "std": float(cp.std()),
                                                 "hist": np.histogram(cp, bins=40, range=(-1, 1))[0].tolist()},
            "residual_corr": {"mean_abs": float(np.mean(np.abs(cr))), "std": float(cr.std()),
                              "hist": np.histogram(cr, bins=40, range=(-1, 1))[0].tolist()},
            "energy_beyond_rank": {str(du): float(1 - cum[d - du - 1]) if d - du - 1 >= 0 else 1.0
                                   for du in (1, 2, 4, 8) if du < d}}


def plot_kv(results: dict, path: Path) -> bool:
    from ..utils.plot import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return False

    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    centers = np.linspace(-1, 1, 41)[:-1] + 1 / 40
    for row, name in enumerate(("k", "v")):
        r = results[name]
        ax = axes[row, 0]
        ax.plot(np.cumsum(r["energy_share"]), marker=".")
        ax.axhline(r["energy"], color="r", ls="--", lw=0.8)
        ax.set_title(f"{name.upper()}: cumulative SVD energy (rank {r['rank_at_energy']} holds {r['energy']:.0%})",
                     fontsize=9)
        ax.set_xlabel("singular component (largest first)")
        ax.set_ylabel("share of energy")
        ax.set_ylim(0, 1.02)
        ax = axes[row, 1]
        ax.bar(centers, r["principal_corr"]["hist"], width=0.05, alpha=0.6, label="shared (top components)")
        ax.bar(centers, r["residual_corr"]["hist"], width=0.05, alpha=0.6, label="user-specific (residual)")
        ax.set_title(f"{name.upper()}: correlation between users' K/V parts", fontsize=9)
        ax.set_xlabel("correlation between two users")
        ax.set_ylabel("share of user pairs")
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=100)
    return True


def analyze_kv(model, ds, out: Path, users: int = 500, energy: float = 0.9) -> dict:
    from ..utils.io import write_json, write_text

    kv = collect_short_kv(model, ds, users)
    res = {name: svd_share(x, energy) for name, x in kv.items()}
    out = Path(out)
    write_json(out / "kv.json", res)
    lines = ["# Short-branch K/V: shared vs user-specific (SVD)", "",
             "| | users x events | d | rank at 90% energy | mean abs corr principal | mean abs corr residual | "
             "energy beyond d-1 | beyond d-8 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res.items():
        lines.append(f"| {name.upper()} | {r['users']} x {r['events_per_user']} | {r['dim']} | {r['rank_at_energy']} | "
                     f"{r['principal_corr']['mean_abs']:.3f} | {r['residual_corr']['mean_abs']:.3f} | "
                     f"{r['energy_beyond_rank'].get('1', float('nan')):.2e} | "
                     f"{r['energy_beyond_rank'].get('8', float('nan')):.2e} |")
    if plot_kv(res, out / "kv.png"):
        lines += ["", "![SVD energy and cross-user correlations](kv.png)"]
    write_text(out / "kv.md", "\n".join(lines) + "\n")
    return res
