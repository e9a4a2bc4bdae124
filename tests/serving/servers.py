"""Real servers for the service tests: `seqctr serve` as its own process group on loopback, and
redis-server on a chosen port (so a test can stop it and start it again). Each waits for its port
with a deadline and is always stopped."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from seqctr.serving.store import free_port, group_rss_bytes


class Serve:
    """``seqctr serve --model BUNDLE ...`` in its own process group, output in a log file."""

    def __init__(self, bundle, *args, port: int | None = None, env: dict | None = None, log: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log or tempfile.mkstemp(prefix="seqctr-serve-", suffix=".log")[1])
        self.cmd = [sys.executable, "-m", "seqctr", "serve", "--model", str(bundle), "--port", str(self.port),
                    "--threads", "1", *map(str, args)]
        self.env = {**os.environ, **(env or {})}
        self.proc = None

    def start(self, timeout_s: float = 90) -> "Serve":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        deadline = time.time() + timeout_s
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError(f"seqctr serve did not come up: {self.output()[-3000:]}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self) -> list[int]:
        """The server's processes (the supervisor and its workers)."""
        out = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                with contextlib.suppress(OSError, ProcessLookupError):
                    if os.getpgid(int(p.name)) == self.proc.pid:
                        out.append(int(p.name))
        return sorted(out)

    def rss_mb(self) -> float:
        """Resident memory of all its processes, MB."""
        return group_rss_bytes(self.proc.pid) / 1e6

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None and not self.pids():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def __enter__(self) -> "Serve":
        if self.proc is not None and self.proc.poll() is None:   # started already (Serve(...).start() in a with):
            return self                                           # a second server would leak
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Redis:
    """redis-server on a fixed loopback port (no persistence): ``start`` / ``stop`` any number of times."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="seqctr-redis-")
        self.proc = None

    def start(self, timeout_s: float = 10) -> "Redis":
        self.proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            assert self.proc.poll() is None and time.time() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Redis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def store_args(kind: str, tmp: Path, redis_url: str | None = None) -> list[str]:
    """``seqctr serve`` options of a store kind: memory, sqlite (a history file), redis."""
    if kind == "memory":
        return []
    if kind == "sqlite":
        return ["--history-file", str(tmp / "histories.sqlite")]
    return ["--store", redis_url]
