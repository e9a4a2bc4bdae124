"""Where a scoring service keeps users' histories and their caches, behind one interface.

:class:`MemoryStore` (default): in-process; caches in an LRU bounded by bytes; histories in memory,
optionally persisted to a SQLite file so a restart loses nothing (and several worker processes
share them). :class:`RedisStore`: histories as Redis lists and caches as keys, for many replicas.

A cache is only used when it belongs to the current weights (its ``model_version`` is the
model's fingerprint) and covers the whole stored history (``history_len`` equals the history's
length); otherwise the caller rebuilds it. So a stale cache is never served, whichever process
wrote it and whenever.
"""
from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

from .cache import KVCache


class MemoryStore:
    """Histories + an LRU of caches bounded by ``cache_bytes`` (the caches' byte form)."""

    def __init__(self, cache_bytes: int = 256 << 20, history_file: str | Path | None = None):
        self.cache_bytes = int(cache_bytes)
        self._caches: OrderedDict = OrderedDict()      # user -> (KVCache, nbytes)
        self._bytes = 0
        self._hist: dict[str, list] = {}
        self._ts: dict[str, list] = {}                  # user -> event times (None where not given)
        self._lock = threading.Lock()
        self._db = None
        if history_file is not None:
            Path(history_file).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(history_file), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS events (user TEXT, pos INTEGER, item TEXT, ts INTEGER, "
                             "PRIMARY KEY (user, pos))")

    kind = "memory"

    def history(self, user: str) -> list[str]:
        """The user's raw item ids, oldest first (a copy)."""
        with self._lock:
            return list(self._load(user))

    def timeline(self, user: str) -> tuple[list[str], list]:
        """``(items, times)`` of the user's history, oldest first (copies; a time is None where
        the event came without one)."""
        with self._lock:
            h = self._load(user)
            return list(h), list(self._ts[user])

    def _load(self, user: str) -> list:
        h = self._hist.get(user)
        if h is None:
            h, ts = [], []
            if self._db is not None:
                rows = self._db.execute("SELECT item, ts FROM events WHERE user = ? ORDER BY pos", (user,)).fetchall()
                h, ts = [r[0] for r in rows], [r[1] for r in rows]
            self._hist[user], self._ts[user] = h, ts
        return h

    def extend(self, user: str, items: list[str], timestamps: list | None = None) -> int:
        """Append events; returns the new history length. Persisted before it returns."""
        with self._lock:
            h = self._load(user)
            if self._db is not None and items:
                self._persist(user, items, timestamps, start=len(h), replace=False)
            h.extend(items)
            self._ts[user].extend(timestamps or [None] * len(items))
            return len(h)

    def replace(self, user: str, items: list[str], timestamps: list | None = None) -> None:
        """Set the user's whole history."""
        with self._lock:
            if self._db is not None:
                self._persist(user, items, timestamps, start=0, replace=True)
            self._hist[user] = list(items)
            self._ts[user] = list(timestamps or [None] * len(items))
            self._drop(user)

    def _persist(self, user: str, items: list[str], timestamps: list | None, start: int, replace: bool) -> None:
        """Write events ``start..`` of ``user`` (after deleting the old ones when ``replace``) in one
        transaction: all of them or, on any error, none. Caller holds the lock."""
        ts = timestamps or [None] * len(items)
        self._db.execute("BEGIN")
        try:
            if replace:
                self._db.execute("DELETE FROM events WHERE user = ?", (user,))
            self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)",
                                 [(user, start + i, it, t) for i, (it, t) in enumerate(zip(items, ts))])
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get_cache(self, user: str) -> KVCache | None:
        with self._lock:
            hit = self._caches.get(user)
            if hit is None:
                return None
            self._caches.move_to_end(user)
            return hit[0]

    def put_cache(self, user: str, cache: KVCache) -> None:
        n = cache.nbytes()
        with self._lock:
            self._drop(user)
            if n > self.cache_bytes:
                return
            self._caches[user] = (cache, n)
            self._bytes += n
            while self._bytes > self.cache_bytes:
                _, (_, m) = self._caches.popitem(last=False)
                self._bytes -= m

    def _drop(self, user: str) -> None:
        old = self._caches.pop(user, None)
        if old is not None:
            self._bytes -= old[1]

    def stats(self) -> dict:
        with self._lock:
            return {"cache_bytes": self._bytes, "cached_users": len(self._caches), "users": len(self._hist)}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class RedisStore:
    """Histories as Redis lists (``{ns}:hist:{user}``, the events' times beside them in
    ``{ns}:ts:{user}``, ``""`` where none was given), caches as ``{ns}:{fingerprint}:cache:{user}``
    (the byte form of :class:`KVCache`). An append is one transaction (``MULTI`` of both
    ``RPUSH``es); a cache written by a process that saw an older history fails the length check and
    is rebuilt, never served."""

    kind = "redis"

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", namespace: str = "seqctr", fingerprint: str = "",
                 client=None, ttl_s: float | None = None):
        if client is None:
            import redis

            client = redis.Redis.from_url(url)
        self.client, self.ns, self.fp, self.ttl_s = client, namespace, fingerprint, ttl_s

    def _h(self, user: str) -> str:
        return f"{self.ns}:hist:{user}"

    def _c(self, user: str) -> str:
        return f"{self.ns}:{self.fp}:cache:{user}"

    def _t(self, user: str) -> str:
        return f"{self.ns}:ts:{user}"

    @staticmethod
    def _ts_values(items: list, timestamps: list | None) -> list[str]:
        return ["" if t is None else str(int(t)) for t in (timestamps or [None] * len(items))]

    def history(self, user: str) -> list[str]:
        return [x.decode() for x in self.client.lrange(self._h(user), 0, -1)]

    def timeline(self, user: str) -> tuple[list[str], list]:
        """``(items, times)`` read in one transaction (a time is None where none was given)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(self._h(user), 0, -1)
        pipe.lrange(self._t(user), 0, -1)
        items, ts = pipe.execute()
        times = [int(t) if t else None for t in ts]
        if len(times) != len(items):     # a history written without times (older seqctr)
            times = (times + [None] * len(items))[:len(items)]
        return [x.decode() for x in items], times

    def extend(self, user: str, items: list[str], timestamps: list | None = None) -> int:
        if not items:
            return int(self.client.llen(self._h(user)))
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(self._h(user), *items)
        pipe.rpush(self._t(user), *self._ts_values(items, timestamps))
        return int(pipe.execute()[0])

    def replace(self, user: str, items: list[str], timestamps: list | None = None) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._h(user), self._t(user), self._c(user))
        if items:
            pipe.rpush(self._h(user), *items)
            pipe.rpush(self._t(user), *self._ts_values(items, timestamps))
        pipe.execute()

    def get_cache(self, user: str) -> KVCache | None:
        raw = self.client.get(self._c(user))
        if raw is None:
            return None
        try:
            return KVCache.from_bytes(raw, source=f"redis key {self._c(user)!r}")
        except ValueError:
            return None          # damaged: rebuilt by the caller

    def put_cache(self, user: str, cache: KVCache) -> None:
        self.client.set(self._c(user), cache.to_bytes(), px=None if self.ttl_s is None else int(self.ttl_s * 1000))

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def open_store(spec: str, fingerprint: str, cache_bytes: int = 256 << 20, history_file: str | None = None):
    """``memory`` or ``redis://host:port/db`` -> a store (caches of this model's fingerprint)."""
    if spec == "memory":
        return MemoryStore(cache_bytes, history_file)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec, fingerprint=fingerprint)
    from ..errors import SeqctrError

    raise SeqctrError(f"--store: expected memory or redis://host:port/db, got {spec!r}")
