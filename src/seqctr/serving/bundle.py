"""A model bundle: one folder that is all a server needs, loadable without unpickling anything.

``export_bundle(checkpoint, out)`` writes:

- ``bundle.json``: format and major version, seqctr and torch versions, the run config, the
  dataset meta (features, vocabulary sizes, ``mean_train_len`` / ``mean_user_len``: LAIN's L0 choices), the fingerprint of
  the weights and the SHA-256 of every other file (a damaged bundle is refused);
- ``weights.pt``: the state dict (tensors only; read with ``torch.load(weights_only=True)``);
- ``vocab_<feature>.npy``: raw value of vocabulary id ``i + 2`` at index ``i`` (strings), for every
  feature that has raw values (LongCTR data has none: its ids are used as given);
- ``items.npy [I, C]``: the item feature table by item id (row 1 = out-of-vocabulary);
- ``users.npy [V, Fu]``: the user feature table by user vocabulary id (row 1 = unknown user).

``bundle.json``'s ``serving`` records the cache form the bundle is meant to be served with (``cache_codec``,
``rebuild_first_layer``; ``seqctr export --cache-codec ... --rebuild-first-layer``): the defaults of
``seqctr serve`` and ``seqctr.load``, which either may override.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import SeqctrError
from ..utils.io import atomic_dir

FORMAT = "seqctr-bundle"
MAJOR = 1
DEFAULT_SERVING = {"cache_codec": "fp32", "rebuild_first_layer": False}


def check_serving(model, cache_codec: str, rebuild_first_layer: bool) -> dict:
    """The cache form ``{"cache_codec", "rebuild_first_layer"}`` if ``model`` allows it, else a ``ValueError``
    naming what it does not allow (an unknown codec; a first layer to rebuild on a backbone without one)."""
    from .codecs import check_codec

    check_codec(cache_codec)
    if rebuild_first_layer and not hasattr(model.backbone, "set_cache_first_layer"):
        raise ValueError(f"rebuild_first_layer: the {model.backbone.registry_name} backbone has no first layer "
                         "to rebuild (HSTU only)")
    return {"cache_codec": cache_codec, "rebuild_first_layer": bool(rebuild_first_layer)}


@dataclass
class Bundle:
    """A loaded bundle: the model (eval mode) and what maps raw ids to its inputs."""

    model: object
    info: dict
    vocabs: dict          # feature -> sorted raw values (id = index + 2)
    items: np.ndarray     # [I, C] item feature ids by item id
    users: np.ndarray     # [V, Fu] user feature ids by user id
    path: Path

    @property
    def fingerprint(self) -> str:
        return self.info["fingerprint"]

    @property
    def max_len(self) -> int:
        return int(self.info["config"]["data"]["max_len"])

    @property
    def serving(self) -> dict:
        """The recorded cache form: ``{"cache_codec": str, "rebuild_first_layer": bool}`` (fp32 / False
        for a bundle that records none)."""
        return {**DEFAULT_SERVING, **self.info.get("serving", {})}

    def serving_form(self, cache_codec: str | None = None, rebuild_first_layer: bool | None = None) -> dict:
        """The cache form to serve with: each setting as given, else as recorded (:attr:`serving`), checked
        against the model (:func:`check_serving`)."""
        rec = self.serving
        return check_serving(self.model, rec["cache_codec"] if cache_codec is None else cache_codec,
                             rec["rebuild_first_layer"] if rebuild_first_layer is None else rebuild_first_layer)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _user_table(ds) -> np.ndarray:
    """User features by user key ``k`` at row ``k``: the user vocabulary id when the dataset has a
    ``user_id`` feature, else (LongCTR data whose user columns are other features) the dataset's
    user row + 2. Row 1: an unknown user, out-of-vocabulary in every feature; row 0: padding."""
    F = ds.user_feats.shape[1]
    if ds.meta.user_features[:1] == ["user_id"]:
        ids = np.asarray(ds.user_feats[:, 0])
        table = np.ones((ds.vocab_sizes["user_id"], F), dtype=np.int32)
    else:
        ids = np.arange(len(ds.user_feats)) + 2
        table = np.ones((len(ds.user_feats) + 2, F), dtype=np.int32)
    table[0] = 0
    known = ids >= 2
    table[ids[known]] = ds.user_feats[known]
    return table


def export_bundle(checkpoint: str | Path, out: str | Path, source: str | None = None,
                  cache_codec: str = "fp32", rebuild_first_layer: bool = False) -> Path:
    """Write the bundle of a trained run (its ``best.pt``) into ``out`` (atomically), recording the cache
    form it is served with (:func:`check_serving`; a form the model does not allow is a ``ValueError``)."""
    from ..checkpoint import load_checkpoint
    from ..models import load_trained

    model, cfg, ds, folder = load_trained(checkpoint, source)
    serving = check_serving(model, cache_codec, rebuild_first_layer)
    ck = load_checkpoint(checkpoint)
    return write_bundle(model, cfg, ds, folder, out, ck["meta"], {"checkpoint": str(checkpoint),
                                                                  "epoch": ck.get("epoch"), "serving": serving})


def write_bundle(model, cfg, ds, folder: Path, out: str | Path, meta: dict | None = None,
                 extra: dict | None = None) -> Path:
    """Write the bundle of ``model`` (built by ``cfg`` on the prepared dataset ``ds`` cached in
    ``folder``, which holds its raw vocabularies) into ``out``, atomically."""
    from ..utils.version import __version__
    from .runtime import fingerprint

    out = Path(out)
    with atomic_dir(out) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "weights.pt")
        np.save(tmp / "items.npy", np.asarray(ds.item_feats, np.int32), allow_pickle=False)
        np.save(tmp / "users.npy", _user_table(ds), allow_pickle=False)
        vocab_names = []
        for name in ds.vocab_sizes:
            f = Path(folder) / f"vocab_{name}.npy"
            if f.is_file():
                np.save(tmp / f"vocab_{name}.npy", ds.raw_vocab(folder, name).astype(str), allow_pickle=False)
                vocab_names.append(name)
        _seal(tmp, {"format": FORMAT, "version": f"{MAJOR}.0", "seqctr": __version__, "torch": torch.__version__,
                    "fingerprint": fingerprint(model), "config": cfg.to_dict(), "meta": meta or ds.meta.to_dict(),
                    "vocabularies": vocab_names, **(extra or {})})
    return out


def _seal(folder: Path, info: dict) -> None:
    """Write ``bundle.json`` = ``info`` with the SHA-256 of every other file in ``folder``."""
    info = {**info, "files": {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.name != "bundle.json"}}
    (folder / "bundle.json").write_text(json.dumps(info, indent=1, default=str))


def add_files(path: str | Path, files: dict[str, Path], serving: dict) -> None:
    """Replace the bundle at ``path``, atomically, by a copy with ``files`` (name -> source file) added or
    replaced and ``serving`` merged into its ``serving`` record; the checksums are recomputed."""
    path = Path(path)
    info = json.loads((path / "bundle.json").read_text())
    with atomic_dir(path) as tmp:
        for f in path.iterdir():
            if f.is_file() and f.name != "bundle.json" and f.name not in files:
                shutil.copy2(f, tmp / f.name)
        for name, src in files.items():
            shutil.copy2(src, tmp / name)
        info["serving"] = {**info.get("serving", {}), **serving}
        _seal(tmp, info)


def load_bundle(path: str | Path, device: str = "cpu") -> Bundle:
    """Load a bundle; another major format version, a missing or damaged file is a clear error."""
    from ..config import config_from_dict
    from ..models import build_model
    from .runtime import fingerprint

    path = Path(path)
    meta_file = path / "bundle.json"
    if not meta_file.is_file():
        raise SeqctrError(f"{path} is not a seqctr bundle (no bundle.json); make one with `seqctr export`")
    try:
        info = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise SeqctrError(f"{meta_file} is damaged ({e})") from None
    if info.get("format") != FORMAT:
        raise SeqctrError(f"{meta_file}: not a seqctr bundle (format {info.get('format')!r})")
    major = int(str(info.get("version", "0")).split(".")[0])
    if major != MAJOR:
        raise SeqctrError(f"{path}: bundle format {info.get('version')} (written by seqctr {info.get('seqctr')}) "
                          f"cannot be read by this seqctr, which reads format {MAJOR}.x; export it again")
    for name, digest in info["files"].items():
        f = path / name
        if not f.is_file():
            raise SeqctrError(f"{path}: bundle file {name} is missing")
        if _sha256(f) != digest:
            raise SeqctrError(f"{path}: bundle file {name} is damaged (checksum differs from bundle.json)")
    cfg = config_from_dict(info["config"])
    model = build_model(cfg.model, info["meta"])
    try:
        state = torch.load(path / "weights.pt", map_location=device, weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # wrong shapes, not a state dict
        raise SeqctrError(f"{path}: weights do not fit the model in bundle.json ({e})") from None
    model.to(device).eval()
    if fingerprint(model) != info["fingerprint"]:
        raise SeqctrError(f"{path}: the weights' fingerprint differs from bundle.json; the bundle is damaged")
    vocabs = {n: np.load(path / f"vocab_{n}.npy", allow_pickle=False) for n in info["vocabularies"]}
    return Bundle(model, info, vocabs, np.load(path / "items.npy", allow_pickle=False),
                  np.load(path / "users.npy", allow_pickle=False), path)
