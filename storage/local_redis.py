"""``LocalRedisServer``: a throwaway ``redis-server`` on a free localhost port (tests and benchmarks).

    with LocalRedisServer() as server:      # raises FileNotFoundError without the redis-server binary
        store = RedisStore(server.url, max_bytes)

No persistence (``--save ''``, no AOF), its own temporary folder, stopped on exit. ``stop()`` and
``start()`` again reuse the same port, to test a store riding out a restart.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

START_TIMEOUT_S = 20.0


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` (PATH, then Debian's /usr/bin), or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    debian = Path("/usr/bin/redis-server")
    return str(debian) if debian.exists() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedisServer:
    """One redis-server process; ``url`` is ``redis://127.0.0.1:<port>/0``."""

    def __init__(self, binary: str | None = None, port: int | None = None):
        self.binary = binary or redis_server_binary()
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="editx_redis_"))
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self._proc is not None and self._proc.poll() is None:
            return
        log_file = self._dir / "redis.log"
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._dir),
                "--daemonize",
                "no",
                "--logfile",
                str(log_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = log_file.read_text(errors="replace")[-500:] if log_file.exists() else ""
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}: {tail}")
            if self._answers():
                log.debug("redis-server on port %d (pid %d)", self.port, self._proc.pid)
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """Stop the server (the port is free again afterwards)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> LocalRedisServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
