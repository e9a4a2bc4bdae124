"""Per-user caches outside the process: :class:`RedisCacheStore` keeps each user's
:meth:`KVCache.to_bytes` under one Redis key, and :func:`local_redis` runs a private
``redis-server`` (development, tests, benchmarks).

Why a store: a server fleet shares caches, and they outlive a process. What crosses the network
per request is the cache's byte form, so its size (full K/V vs CollectiveKV codes) is latency.
Needs the ``store`` extra (redis-py); the rest of seqctr imports without it.
"""
from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from .cache import KVCache


class RedisCacheStore:
    """``put``/``get`` of :class:`KVCache` per user id. Keys are ``{namespace}:{user}``: use a
    namespace per model (e.g. ``f"seqctr:{fingerprint(model)}"``) so that caches of other
    weights are never read — they simply miss, and expire with ``ttl_s``.

    ``get_many`` is one ``MGET`` round trip for a batch of users; a missing user gives None."""

    def __init__(self, client=None, url: str = "redis://localhost:6379/0", namespace: str = "seqctr"):
        if client is None:
            import redis

            client = redis.Redis.from_url(url)
        self.client, self.namespace = client, namespace

    def key(self, user) -> str:
        return f"{self.namespace}:{user}"

    def put(self, user, cache: KVCache, ttl_s: float | None = None) -> None:
        self.put_many({user: cache}, ttl_s)

    def put_many(self, caches: dict, ttl_s: float | None = None) -> None:
        """Write many users' caches in one pipelined round trip (each key is replaced whole)."""
        pipe = self.client.pipeline(transaction=False)
        for user, cache in caches.items():
            pipe.set(self.key(user), cache.to_bytes(), px=None if ttl_s is None else int(ttl_s * 1000))
        pipe.execute()

    def get(self, user) -> KVCache | None:
        return self.get_many([user])[0]

    def get_many(self, users: Iterable, damaged: str = "raise") -> list[KVCache | None]:
        """Caches of ``users`` in order (None where missing). A value that is not a readable cache
        raises ``ValueError`` naming its key, or with ``damaged="miss"`` reads as missing (a server
        then prefills that user again instead of failing the whole batch)."""
        if damaged not in ("raise", "miss"):
            raise ValueError(f"damaged must be 'raise' or 'miss', got {damaged!r}")
        keys, raws = self._mget(users)
        out = []
        for k, raw in zip(keys, raws):
            try:
                out.append(None if raw is None else KVCache.from_bytes(raw, source=f"redis key {k!r}"))
            except ValueError:
                if damaged == "raise":
                    raise
                out.append(None)
        return out

    def get_bytes(self, users: Iterable) -> list[bytes | None]:
        """The stored byte forms, undecoded (what crosses the network)."""
        return self._mget(users)[1]

    def _mget(self, users: Iterable) -> tuple[list[str], list[bytes | None]]:
        """The users' keys and one ``MGET`` of them (none for no users: Redis refuses an empty MGET)."""
        keys = [self.key(u) for u in users]
        return keys, (list(self.client.mget(keys)) if keys else [])

    def delete(self, *users) -> int:
        return int(self.client.delete(*[self.key(u) for u in users])) if users else 0


def stop_process(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Terminate ``proc`` and wait for it; kill it if it does not stop within ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def group_rss_bytes(pgid: int) -> int:
    """Resident bytes of every process in process group ``pgid`` (a server and its workers; Linux
    ``/proc``; 0 elsewhere)."""
    import os

    total = 0
    for p in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not p.name.isdigit():
            continue
        try:
            if os.getpgid(int(p.name)) == pgid:
                total += int((p / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ProcessLookupError, IndexError, ValueError):
            continue
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_redis(cpu: int | None = None, timeout_s: float = 10.0) -> Iterator[str]:
    """Start a throwaway ``redis-server`` on a free loopback port (no persistence, its own temp
    folder) and yield its URL; stopped on exit. ``cpu`` pins it (``taskset``) for benchmarks.
    Raises FileNotFoundError when ``redis-server`` is not installed (Debian: ``redis-server``)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="seqctr-redis-") as tmp:
        cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", tmp, "--protected-mode", "yes", "--loglevel", "warning"]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu)] + cmd
        log = Path(tmp) / "redis.log"                # a file, not a pipe: a chatty server never blocks
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {log.read_text(errors='replace')[-2000:]}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server did not listen on port {port} within {timeout_s} s")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_process(proc, timeout_s=5)
