"""seqctr: length-aware CTR prediction from user behaviour sequences."""
__version__ = "0.2.0"


def load(path, store=None, device: str = "cpu"):
    """Load an exported model bundle (``seqctr export``) as a raw-id :class:`~seqctr.serving.scorer.Scorer`."""
    from .serving.scorer import load as _load

    return _load(path, store=store, device=device)
