"""Warm start (``train.init``): a trained model continues on newer data whose vocabularies have grown.

The newer data is rewritten into the trained model's id space, grown by its new ids
(:func:`seqctr.data.remap.remap`), and saved as a prepared dataset folder; the run's config then
names that folder as its source, so evaluation, export and serving of the new run need nothing
else. The trained weights are loaded with every embedding table grown: the old rows bit for bit,
the new rows a copy of the trained out-of-vocabulary row (``train.init_rows: oov``, so a new id
first scores as the unknown id did) or the model's own random init (``fresh``). The optimiser
starts afresh (a new run's Adam state); LAIN's L0 is kept (``train.init_l0: keep``) or taken from
the new data (``data``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..config import RunConfig
from ..data import SeqDataset, prepare_config
from ..data.remap import IdSpace, remap
from ..errors import SeqctrError
from ..models import load_trained
from ..utils.io import seqctr_home


def trained_space(path: str | Path) -> tuple[IdSpace, dict]:
    """The id space and weights of a run's ``best.pt`` or a model bundle folder."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "bundle.json").is_file():
        state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        return IdSpace.of_bundle(path), state
    model, _, ds, folder = load_trained(path)       # its checks: a best checkpoint, its data's vocabularies
    return IdSpace.of_dataset(ds, folder), model.state_dict()


def _space_key(space: IdSpace) -> str:
    h = hashlib.sha256(json.dumps(space.sizes, sort_keys=True).encode())
    for n in sorted(space.vocabs):
        h.update(n.encode())
        h.update("\x1f".join(map(str, space.vocabs[n])).encode())
    h.update(space.item_feats.tobytes())
    return h.hexdigest()[:16]


def warm_data(cfg: RunConfig, home: Path | None = None) -> tuple[SeqDataset, Path, dict]:
    """The run's data in the id space of ``cfg.train.init`` grown by its new ids, written once as a
    prepared folder (``<home>/prepared/<data>-init-<hash>``). Returns ``(dataset, folder, weights)``."""
    space, state = trained_space(cfg.train.init)
    ds, folder, _ = prepare_config(cfg.data)
    out = Path(home or seqctr_home()) / "prepared" / f"{Path(folder).name}-init-{_space_key(space)}"
    if not (out / "meta.json").is_file():
        grown, _ = remap(ds, folder, space, grow=True)
        grown.save(out, replace=False)          # runs warm-starting at once (seeds in parallel) share it
    return SeqDataset.load(out), out, state


def grow_state(model: torch.nn.Module, old: dict, rows: str = "oov") -> dict:
    """Load ``old`` weights into ``model`` (built for grown vocabularies): a tensor whose first axis
    grew (an embedding table) keeps its old rows and fills the new ones by ``rows``; any other shape
    change is an error. Returns ``{name: (old rows, new rows)}`` of the grown tensors."""
    state = model.state_dict()
    grown = {}
    for k, v in old.items():
        if k not in state:
            raise SeqctrError(f"warm start: the trained weights have {k}, which this model does not")
        cur = state[k]
        if cur.shape == v.shape:
            state[k] = v
            continue
        if v.dim() == 0 or cur.shape[1:] != v.shape[1:] or cur.shape[0] < v.shape[0]:
            raise SeqctrError(f"warm start: {k} has shape {list(v.shape)} in the trained model and {list(cur.shape)} "
                              "here; only vocabulary tables may grow (same model config otherwise)")
        new = cur.clone()
        new[:v.shape[0]] = v
        if rows == "oov" and v.shape[0] > 1:
            new[v.shape[0]:] = v[1]
        state[k] = new
        grown[k] = (int(v.shape[0]), int(cur.shape[0]))
    missing = sorted(set(state) - set(old))
    if missing:
        raise SeqctrError(f"warm start: the trained weights lack {missing[:5]} (another model config?)")
    model.load_state_dict(state)
    return grown
