"""seqctr: length-aware CTR prediction from user behaviour sequences."""
from .utils.version import __version__

__all__ = ["__version__", "load"]


def load(path, store=None, device: str = "cpu"):
    """Load an exported model bundle (``seqctr export``) as a raw-id :class:`~seqctr.serving.scorer.Scorer`."""
    from .serving.scorer import load as _load

    return _load(path, store=store, device=device)
