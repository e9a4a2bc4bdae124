"""Serving: per-user caches of everything that does not depend on the candidate."""
from .cache import KVCache

__all__ = ["KVCache"]
