"""seqctr: length-aware CTR prediction from user behaviour sequences."""
from .utils.version import __version__

__all__ = ["__version__", "load"]


def load(path, store=None, device: str = "cpu", **options):
    """Load an exported model bundle (``seqctr export``) as a raw-id :class:`~seqctr.serving.scorer.Scorer`;
    ``options``: ``codec``, ``rebuild_first_layer``, ``compiled`` (:func:`seqctr.serving.scorer.load`)."""
    from .serving.scorer import load as _load

    return _load(path, store=store, device=device, **options)
