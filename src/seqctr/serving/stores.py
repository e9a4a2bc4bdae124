"""Where a scoring service keeps users' histories and their caches, behind one interface.

:class:`MemoryStore` (default): caches in an in-process LRU bounded by the bytes they really hold;
histories in memory (one process), or in a SQLite file (``history_file``) that is the one truth
for every worker process sharing it. :class:`RedisStore`: histories as Redis lists and caches as
keys, for many replicas.

Every store answers ``state(user) -> (length, generation)`` from its authoritative copy on each
call: the length grows with each append, the generation with each ``replace``. A cache is only
used when it belongs to the current weights (its ``model_version`` is the model's fingerprint) and
was made from exactly that state (``history_len`` and ``meta["history_gen"]``); otherwise the
caller rebuilds it. So a stale cache is never served, whichever process wrote it and whenever.

An append is one transaction (SQLite ``BEGIN IMMEDIATE``, Redis ``MULTI``): whole or absent, also
when the process is killed in the middle. A store that cannot be reached raises
:class:`StoreUnavailable` (the service answers 503 with ``Retry-After``).
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path

from ..errors import SeqctrError
from .cache import KVCache

# Resident bytes an in-process cache entry costs beyond its byte form: the bytes object's header, the
# user key, the LRU slot. Held to a server's resident memory by
# tests/serving/test_service_ops.py::test_resident_memory_stays_within_the_cache_budget.
ENTRY_OVERHEAD = 512


class StoreUnavailable(SeqctrError):
    """The store cannot be reached now (e.g. Redis is down); the request may be retried."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class HistoryFileError(SeqctrError):
    """A history file that cannot be used (not a SQLite database, unreadable, locked)."""


def cache_gen(cache: KVCache | None) -> int | None:
    return None if cache is None else cache.meta.get("history_gen", 0)


class _CacheLRU:
    """Caches in process as their byte form (:meth:`KVCache.to_bytes`: one buffer per user, charged its
    length plus :data:`ENTRY_OVERHEAD` — a small cache, e.g. CollectiveKV's, is not dominated by the
    fixed cost of a dozen tensor objects), least recently used evicted first; a read makes the tensors
    again (views of one copy of the buffer)."""

    def __init__(self, cache_bytes: int):
        self.cache_bytes = int(cache_bytes)
        self._caches: OrderedDict = OrderedDict()      # user -> (KVCache, charged bytes)
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, user: str) -> KVCache | None:
        with self._lock:
            hit = self._caches.get(user)
            if hit is None:
                return None
            self._caches.move_to_end(user)
        return KVCache.from_bytes(hit[0], source=f"in-process cache of user {user!r}")

    def put(self, user: str, cache: KVCache) -> None:
        if self.cache_bytes <= 0:
            return
        data = cache.to_bytes()
        n = len(data) + ENTRY_OVERHEAD
        with self._lock:
            self._drop(user)
            if n > self.cache_bytes:
                return
            self._caches[user] = (data, n)
            self._bytes += n
            while self._bytes > self.cache_bytes:
                _, (_, m) = self._caches.popitem(last=False)
                self._bytes -= m

    def drop(self, user: str) -> None:
        with self._lock:
            self._drop(user)

    def _drop(self, user: str) -> None:
        old = self._caches.pop(user, None)
        if old is not None:
            self._bytes -= old[1]

    def stats(self) -> dict:
        with self._lock:
            return {"cache_bytes": self._bytes, "cached_users": len(self._caches)}

    def clear(self) -> None:
        with self._lock:
            self._caches.clear()
            self._bytes = 0


def _times_of(items: list, timestamps: list | None) -> list:
    return list(timestamps) if timestamps is not None else [None] * len(items)


class MemoryStore:
    """Caches in an LRU bounded by ``cache_bytes`` (their byte form plus a small per-entry overhead).
    Histories in this process, or — with ``history_file`` — in SQLite, read per request, so any
    number of worker processes sharing the file see one history per user."""

    kind = "memory"

    def __init__(self, cache_bytes: int = 256 << 20, history_file: str | Path | None = None,
                 busy_timeout_s: float = 10.0):
        self._lru = _CacheLRU(cache_bytes)
        self.cache_bytes = self._lru.cache_bytes
        self._hist: dict[str, tuple[list, list, int]] = {}     # user -> (items, times, generation)
        self._lock = threading.Lock()
        self._db = None
        if history_file is not None:
            self.history_file = Path(history_file)
            self._db = open_history_file(self.history_file, busy_timeout_s)

    # -- histories ---------------------------------------------------------------------------------
    def state(self, user: str) -> tuple[int, int]:
        """``(history length, generation)`` of the user, from the authoritative copy."""
        with self._lock:
            if self._db is None:
                h = self._hist.get(user)
                return (0, 0) if h is None else (len(h[0]), h[2])
            row = self._db.execute("SELECT n, gen FROM users WHERE user = ?", (user,)).fetchone()
            return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def history(self, user: str) -> list[str]:
        """The user's raw item ids, oldest first (a copy)."""
        return self.timeline(user)[0]

    def timeline(self, user: str) -> tuple[list[str], list]:
        """``(items, times)`` of the user's history, oldest first (copies; a time is None where
        the event came without one)."""
        return self.snapshot(user)[:2]

    def snapshot(self, user: str) -> tuple[list[str], list, int]:
        """``(items, times, generation)`` read at one instant."""
        with self._lock:
            if self._db is None:
                items, ts, gen = self._hist.get(user, ([], [], 0))
                return list(items), list(ts), gen
            db = self._db
            db.execute("BEGIN")                  # one read snapshot of both tables
            try:
                row = db.execute("SELECT gen FROM users WHERE user = ?", (user,)).fetchone()
                rows = db.execute("SELECT item, ts FROM events WHERE user = ? ORDER BY pos", (user,)).fetchall()
            finally:
                db.execute("COMMIT")
            return [r[0] for r in rows], [r[1] for r in rows], 0 if row is None else int(row[0])

    def extend(self, user: str, items: list[str], timestamps: list | None = None) -> int:
        """Append events as one transaction; returns the new history length."""
        ts = _times_of(items, timestamps)
        with self._lock:
            if self._db is None:
                h = self._hist.setdefault(user, ([], [], 0))
                h[0].extend(items)
                h[1].extend(ts)
                return len(h[0])
            return self._write(user, items, ts, replace=False)

    def replace(self, user: str, items: list[str], timestamps: list | None = None) -> None:
        """Set the user's whole history (its generation moves on, so no older cache is served)."""
        self.replace_many([(user, items, timestamps)])

    def replace_many(self, histories) -> int:
        """Set the whole history of each ``(user, items, times)``, in one transaction (loading from
        data); each user's generation moves on and its cache here is dropped."""
        n = 0
        with self._lock:
            if self._db is None:
                for user, items, ts in histories:
                    gen = self._hist.get(user, ([], [], 0))[2] + 1
                    self._hist[user] = (list(items), _times_of(items, ts), gen)
                    self._lru.drop(user)
                    n += 1
                return n
            with immediate(self._db):
                for user, items, ts in histories:
                    self._write_rows(user, items, _times_of(items, ts), replace=True)
                    self._lru.drop(user)
                    n += 1
        return n

    def _write(self, user: str, items: list, ts: list, replace: bool) -> int:
        """One transaction: the user's row read under the write lock, events written, counts moved
        on. All of it or, on any error (or a kill), none. Caller holds ``_lock``."""
        with immediate(self._db):
            return self._write_rows(user, items, ts, replace)

    def _write_rows(self, user: str, items: list, ts: list, replace: bool) -> int:
        db = self._db
        row = db.execute("SELECT n, gen FROM users WHERE user = ?", (user,)).fetchone()
        n, gen = (0, 0) if row is None else (int(row[0]), int(row[1]))
        if replace:
            db.execute("DELETE FROM events WHERE user = ?", (user,))
            n, gen = 0, gen + 1
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)",
                       [(user, n + i, it, t) for i, (it, t) in enumerate(zip(items, ts))])
        n += len(items)
        db.execute("INSERT INTO users VALUES (?, ?, ?) ON CONFLICT(user) DO UPDATE SET n = excluded.n, "
                   "gen = excluded.gen", (user, n, gen))
        return n

    # -- caches --------------------------------------------------------------------------------------
    def get_cache(self, user: str) -> KVCache | None:
        return self._lru.get(user)

    def put_cache(self, user: str, cache: KVCache) -> None:
        self._lru.put(user, cache)

    def for_model(self, fingerprint: str) -> "MemoryStore":
        """The store a newly loaded model uses (a live reload): the same histories; the caches of
        the old weights dropped (they would never be read: a cache is served only to its weights)."""
        self._lru.clear()
        return self

    def stats(self) -> dict:
        out = self._lru.stats()
        if self._db is None:
            with self._lock:
                out["users"] = len(self._hist)
        return out

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


@contextlib.contextmanager
def immediate(db: sqlite3.Connection):
    """One write transaction (``BEGIN IMMEDIATE``: the write lock taken first, so what it reads stays
    true until it commits): committed when the block ends, rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def open_history_file(path: Path, busy_timeout_s: float = 10.0) -> sqlite3.Connection:
    """Open (creating) a history file: WAL mode, tables made or upgraded (files written before the
    ``users`` table get it filled from their events). Anything that makes the file unusable — not
    a database, a folder, unreadable, locked by another program — is one :class:`HistoryFileError`
    naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=busy_timeout_s)
    except (OSError, sqlite3.Error) as e:
        raise HistoryFileError(f"history file {path}: cannot be opened ({e})") from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")    # WAL: a commit survives a killed process
        with immediate(db):
            db.execute("CREATE TABLE IF NOT EXISTS events (user TEXT, pos INTEGER, item TEXT, ts INTEGER, "
                       "PRIMARY KEY (user, pos))")
            fresh = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users'").fetchone() is None
            if fresh:
                db.execute("CREATE TABLE users (user TEXT PRIMARY KEY, n INTEGER NOT NULL, gen INTEGER NOT NULL)")
                db.execute("INSERT INTO users SELECT user, MAX(pos) + 1, 0 FROM events GROUP BY user")
    except sqlite3.OperationalError as e:
        db.close()
        what = "locked by another process" if "locked" in str(e) else str(e)
        raise HistoryFileError(f"history file {path}: {what}") from None
    except sqlite3.DatabaseError as e:
        db.close()
        raise HistoryFileError(f"history file {path}: not a seqctr history file ({e})") from None
    return db


_REDIS_PUT = """
local old = redis.call('STRLEN', KEYS[1])
if ARGV[2] == '' then redis.call('SET', KEYS[1], ARGV[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('INCRBY', KEYS[2], string.len(ARGV[1]) - old)
if old == 0 then redis.call('INCR', KEYS[3]) end
return old
"""


def _redis_errors():
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)


class RedisStore:
    """Histories as Redis lists (``{ns}:hist:{user}``, the events' times beside them in
    ``{ns}:ts:{user}``, ``""`` where none was given; the generation in ``{ns}:gen:{user}``), caches
    as ``{ns}:{fingerprint}:cache:{user}`` (the byte form of :class:`KVCache`), with their count and
    bytes kept beside them (``{ns}:{fingerprint}:cache-bytes`` / ``cache-users``) for the gauges.
    An append is one transaction (``MULTI`` of both ``RPUSH``es). Redis unreachable ->
    :class:`StoreUnavailable`."""

    kind = "redis"

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", namespace: str = "seqctr", fingerprint: str = "",
                 client=None, ttl_s: float | None = None, timeout_s: float = 2.0):
        if client is None:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.client, self.ns, self.fp, self.ttl_s = client, namespace, fingerprint, ttl_s
        self._errors = _redis_errors()
        self._put = client.register_script(_REDIS_PUT)

    def _run(self, fn):
        try:
            return fn()
        except self._errors as e:
            raise StoreUnavailable(f"redis store unavailable ({type(e).__name__}: {e})") from e

    def _h(self, user: str) -> str:
        return f"{self.ns}:hist:{user}"

    def _c(self, user: str) -> str:
        return f"{self.ns}:{self.fp}:cache:{user}"

    def _t(self, user: str) -> str:
        return f"{self.ns}:ts:{user}"

    def _g(self, user: str) -> str:
        return f"{self.ns}:gen:{user}"

    @staticmethod
    def _ts_values(items: list, timestamps: list | None) -> list[str]:
        return ["" if t is None else str(int(t)) for t in _times_of(items, timestamps)]

    def state(self, user: str) -> tuple[int, int]:
        def go():
            pipe = self.client.pipeline(transaction=True)
            pipe.llen(self._h(user))
            pipe.get(self._g(user))
            n, gen = pipe.execute()
            return int(n), int(gen or 0)

        return self._run(go)

    def history(self, user: str) -> list[str]:
        return self.timeline(user)[0]

    def timeline(self, user: str) -> tuple[list[str], list]:
        """``(items, times)`` read in one transaction (a time is None where none was given)."""
        return self.snapshot(user)[:2]

    def snapshot(self, user: str) -> tuple[list[str], list, int]:
        def go():
            pipe = self.client.pipeline(transaction=True)
            pipe.lrange(self._h(user), 0, -1)
            pipe.lrange(self._t(user), 0, -1)
            pipe.get(self._g(user))
            return pipe.execute()

        items, ts, gen = self._run(go)
        times = [int(t) if t else None for t in ts]
        if len(times) != len(items):     # a history written without times (older seqctr)
            times = (times + [None] * len(items))[:len(items)]
        return [x.decode() for x in items], times, int(gen or 0)

    def extend(self, user: str, items: list[str], timestamps: list | None = None) -> int:
        if not items:
            return self.state(user)[0]

        def go():
            pipe = self.client.pipeline(transaction=True)
            pipe.rpush(self._h(user), *items)
            pipe.rpush(self._t(user), *self._ts_values(items, timestamps))
            return int(pipe.execute()[0])

        return self._run(go)

    def replace(self, user: str, items: list[str], timestamps: list | None = None) -> None:
        self.replace_many([(user, items, timestamps)])

    def replace_many(self, histories) -> int:
        """``replace`` of many ``(user, items, times)`` in one round trip (each user's own part is
        one ``MULTI``)."""
        def go():
            pipe = self.client.pipeline(transaction=True)
            n = 0
            for user, items, ts in histories:
                pipe.delete(self._h(user), self._t(user))
                if items:
                    pipe.rpush(self._h(user), *items)
                    pipe.rpush(self._t(user), *self._ts_values(items, ts))
                pipe.incr(self._g(user))
                n += 1
            pipe.execute()
            return n

        return self._run(go)

    def get_cache(self, user: str) -> KVCache | None:
        raw = self._run(lambda: self.client.get(self._c(user)))
        if raw is None:
            return None
        try:
            return KVCache.from_bytes(raw, source=f"redis key {self._c(user)!r}")
        except ValueError:
            return None          # damaged: rebuilt by the caller

    def for_model(self, fingerprint: str) -> "RedisStore":
        """The store a newly loaded model uses (a live reload): the same histories and connection,
        caches under the new fingerprint's keys (the old ones expire by their TTL, if any)."""
        return RedisStore(namespace=self.ns, fingerprint=fingerprint, client=self.client, ttl_s=self.ttl_s)

    def put_cache(self, user: str, cache: KVCache) -> None:
        px = "" if self.ttl_s is None else str(int(self.ttl_s * 1000))
        keys = [self._c(user), f"{self.ns}:{self.fp}:cache-bytes", f"{self.ns}:{self.fp}:cache-users"]
        self._run(lambda: self._put(keys=keys, args=[cache.to_bytes(), px]))

    def stats(self) -> dict:
        """Bytes and count of this model's caches in Redis (every replica's together)."""
        b, u = self._run(lambda: self.client.mget([f"{self.ns}:{self.fp}:cache-bytes",
                                                   f"{self.ns}:{self.fp}:cache-users"]))
        return {"cache_bytes": int(b or 0), "cached_users": int(u or 0)}

    def close(self) -> None:
        self.client.close()


def open_store(spec: str, fingerprint: str, cache_bytes: int = 256 << 20, history_file: str | None = None):
    """``memory`` or ``redis://host:port/db`` -> a store (caches of this model's fingerprint)."""
    if spec == "memory":
        return MemoryStore(cache_bytes, history_file)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec, fingerprint=fingerprint)
    raise SeqctrError(f"--store: expected memory or redis://host:port/db, got {spec!r}")
