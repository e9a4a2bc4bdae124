"""Serving: per-user caches of everything that does not depend on the candidate (``runtime``), model
bundles (``bundle``), raw-id scoring (``scorer``, ``seqctr.load``), history / cache stores
(``stores``; ``store`` for the Redis cache store, needs the ``store`` extra), batch prediction
(``predict``) and the HTTP service (``http``, needs the ``serve`` extra)."""
from .cache import KVCache

__all__ = ["KVCache"]
