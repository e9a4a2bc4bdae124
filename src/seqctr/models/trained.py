"""A trained run's model with its config and dataset: what evaluation and bundle export start from."""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import load_checkpoint
from ..config import config_from_dict
from ..data import prepare_config
from ..data.dataset import DatasetMeta
from ..data.remap import IdSpace, remap
from ..errors import SeqctrError
from .base import build_model


def load_trained(checkpoint: str | Path, source: str | None = None, device="cpu"):
    """A trained run's model, config and prepared dataset: ``(model in eval mode, RunConfig, dataset,
    folder of the model's vocabularies)``. ``source`` (other data, e.g. a newer time slice) is read in
    the model's id space: ids it never saw become out-of-vocabulary, as when served
    (:func:`seqctr.data.remap.remap`)."""
    ck = load_checkpoint(checkpoint)
    if "meta" not in ck:
        raise SeqctrError(f"{checkpoint}: not a best checkpoint (use a run's best.pt)")
    cfg = config_from_dict(ck["config"])
    base, folder, _ = prepare_config(cfg.data)
    trained_on = DatasetMeta.from_dict(ck["meta"])
    if base.meta.vocab_sizes != trained_on.vocab_sizes:
        raise SeqctrError(f"checkpoint {checkpoint} was trained on a dataset with other vocabularies "
                          f"({trained_on.name}, sha {trained_on.source_sha256[:12]}) than {folder}")
    ds = base
    if source is not None:
        other, other_folder, _ = prepare_config(cfg.data, source)
        if Path(other_folder).resolve() != Path(folder).resolve():
            ds, _ = remap(other, other_folder, IdSpace.of_dataset(base, folder), grow=False)
    model = build_model(cfg.model, ck["meta"])
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), cfg, ds, folder
