"""Test helper: run ``python app.py`` in a subprocess on a free port (used by the served-app tests)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300  # model loading + warm-up on a busy 2-core CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


class AppServer:
    """``python app.py`` on 127.0.0.1 and a free port, logging to ``work/server.log``; ``stop()`` ends it."""

    def __init__(self, model_dir: Path, work: Path, extra: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "server.log"
        self.examples = work / "examples"
        cmd = [
            sys.executable,
            str(ROOT / "app.py"),
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--cache-dir",
            str(work / "cache"),
            "--examples-dir",
            str(self.examples),
            *(extra or []),
        ]
        # this checkout's modules first, even where another checkout is installed in editable mode
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": path}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=work, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.health_at_start: dict = {}

    def wait_ready(self) -> dict:
        """Poll GET /health until it answers; fail with the server log if the process dies or hangs."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"app.py exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.health_at_start = get_json(self.url + "/health")
                return self.health_at_start
            except OSError:
                time.sleep(1.0)
        raise AssertionError(f"app.py did not answer within {START_TIMEOUT_S} s:\n{self.log()[-4000:]}")

    def health(self) -> dict:
        return get_json(self.url + "/health")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@contextmanager
def running_app(model_dir: Path, work: Path, extra: list[str] | None = None) -> Iterator[AppServer]:
    """An ``AppServer`` that is ready on entry and stopped on exit, whatever happens in between."""
    server = AppServer(model_dir, work, extra)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


BUSY_ARGS = ["--concurrency", "1", "--queue-size", "1"]  # one run at a time, one waiting


def fill_the_queue(client, inputs: dict, sentences: int = 6) -> list:
    """Through ``client`` (a gradio_client Client of an app started with ``BUSY_ARGS``): a long
    ``/clone`` that takes the only slot, then a short one that takes the only waiting place; returns
    both jobs once they are running and waiting."""
    long_text = " ".join(["A sentence that keeps the only slot busy for a while."] * sentences)
    runs = [client.submit(text=long_text, seed=0, max_new_tokens=60, api_name="/clone", **inputs)]
    while runs[0].status().code.name not in ("PROCESSING", "ITERATING"):
        time.sleep(0.05)
    runs.append(client.submit(text="Hello.", seed=0, max_new_tokens=60, api_name="/clone", **inputs))
    while runs[1].status().code.name != "IN_QUEUE":
        time.sleep(0.05)
    return runs
