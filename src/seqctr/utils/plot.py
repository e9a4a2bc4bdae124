"""Plots are optional (the ``report`` extra): one place that imports matplotlib headless and
writes a figure atomically."""
from __future__ import annotations

from pathlib import Path

from .io import atomic_path


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: str | Path, dpi: int = 110, rect=None) -> None:
    """Write ``fig`` as PNG at ``path`` (whole or not at all) and close it (``rect``: the area
    ``tight_layout`` may use, leaving room for a figure legend or title)."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=rect)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
