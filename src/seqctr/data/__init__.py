"""Data: raw sources -> prepared per-user histories + samples -> length-aware batches."""
from .batching import BatchLoader, SeqBatch, gather_batch, make_batches, padding_fraction
from .dataset import SeqDataset
from .construct import PROTOCOL_VERSION, SplitRule, build_dataset, prepare, prepare_config, resolve_source
from .sources import Interactions, read_table

__all__ = ["BatchLoader", "SeqBatch", "gather_batch", "make_batches", "padding_fraction", "SeqDataset",
           "PROTOCOL_VERSION", "SplitRule", "build_dataset", "prepare", "prepare_config", "Interactions", "read_table",
           "resolve_source"]
