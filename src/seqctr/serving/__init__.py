"""Serving: per-user caches of everything that does not depend on the candidate, and a store
for them outside the process (``seqctr.serving.store``, needs the ``store`` extra)."""
from .cache import KVCache

__all__ = ["KVCache"]
