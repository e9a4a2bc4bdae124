"""Data: raw sources -> prepared per-user histories + samples -> length-aware batches.

Preparation (``prepare``, readers, the dataset layout) needs NumPy and PyArrow only; the batching
names (``BatchLoader``, ``SeqBatch``...) load PyTorch on first use, so ``seqctr prepare`` neither
waits for nor holds the ~200 MB of an imported torch.
"""
from .dataset import DatasetMeta, SeqDataset
from .construct import PROTOCOL_VERSION, SplitRule, build_dataset, prepare, prepare_config, resolve_source
from .sources import Interactions, read_table

_BATCHING = ("BatchLoader", "SeqBatch", "gather_batch", "make_batches", "padding_fraction")

__all__ = [*_BATCHING, "DatasetMeta", "SeqDataset", "PROTOCOL_VERSION", "SplitRule", "build_dataset", "prepare", "prepare_config",
           "Interactions", "read_table", "resolve_source"]


def __getattr__(name: str):
    if name in _BATCHING:
        from . import batching

        return getattr(batching, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
