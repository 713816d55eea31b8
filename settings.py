"""Every command-line flag of EditX Studio, in one place, with ``EDITX_*`` environment fallbacks.

    python app.py --help

A flag given on the command line wins; otherwise the environment variable named in its help
(e.g. ``EDITX_MODEL_DIR``) is used; otherwise the default. The Docker image sets
``EDITX_MODEL_DIR=/model`` and ``EDITX_HOST=0.0.0.0`` this way. The parsed values are passed down
as a frozen ``Settings`` object, never read from globals deep inside.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from model_layout import DECODE_MODES, LLM_BACKENDS, VARIANTS, VLLM_VARIANTS
from models.text_input import DEFAULT_MAX_TEXT_CHARS
from prompt_cache import MIB
from text_split import DEFAULT_CHUNK_CHARS, MAX_CHUNK_CHARS, MIN_CHUNK_CHARS

ENV_PREFIX = "EDITX_"
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Parsed configuration of one server process (paths are resolved, sizes in plain units)."""

    model_dir: Path = Path("checkpoints")
    demo_dir: Path = Path("demo_models")
    allow_demo: bool = True
    variant: str = "base"
    llm_backend: str = "native"
    llm_url: str | None = None
    llm_decode: str = "auto"
    llm_prefix_cache_mb: float = 256.0
    vllm_gpu_memory_utilization: float = 0.9
    vllm_max_model_len: int = 8192
    vllm_max_num_seqs: int = 16
    vllm_quantization: str | None = None
    vllm_tensor_parallel_size: int = 1
    vllm_enforce_eager: bool = False
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: Path | None = Path("cache/funasr")
    cache_url: str | None = None
    cache_max_entries: int = 2000
    cache_max_mb: float = 1024
    ort_threads: int | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    auto_transcribe: bool = True
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_reference_seconds: float = 30.0
    concurrency: int = 1
    queue_size: int = 64
    chunk_chars: int = DEFAULT_CHUNK_CHARS
    api_key: str | None = None
    warmup: bool = True
    scores: bool = True
    examples_dir: Path = Path("examples")
    log_level: str = "INFO"

    @property
    def cache_max_bytes(self) -> int:
        return max(1, int(self.cache_max_mb * MIB))


# (flag, Settings field, type, help); bools are "store_true"-style switches.
_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--model-dir", "model_dir", Path, "root folder holding Step-Audio-Tokenizer/ and Step-Audio-EditX/"),
    ("--demo-dir", "demo_dir", Path, "where tiny demo models are built when --model-dir has no real models"),
    (
        "--variant",
        "variant",
        str,
        "LLM variant: base or bnb-4bit (native; the other loads on first use), base or awq (vllm)",
    ),
    ("--llm-backend", "llm_backend", str, "native (our Step1 model, CPU or GPU) or vllm (batching)"),
    ("--llm-url", "llm_url", str, "vllm: a running `vllm serve` (http://host:8000); empty: in-process"),
    (
        "--llm-decode",
        "llm_decode",
        str,
        "native: auto (CUDA graphs on a GPU, else dynamic), dynamic, static or graphs",
    ),
    (
        "--llm-prefix-cache-mb",
        "llm_prefix_cache_mb",
        float,
        "native: MB of recent voices' prompt keys/values kept, so a repeated voice skips most of the "
        "prefill (0: none)",
    ),
    (
        "--vllm-gpu-memory-utilization",
        "vllm_gpu_memory_utilization",
        float,
        "vllm in-process: share of the GPU's memory vLLM may take",
    ),
    ("--vllm-max-model-len", "vllm_max_model_len", int, "vllm in-process: longest prompt + generation"),
    ("--vllm-max-num-seqs", "vllm_max_num_seqs", int, "vllm in-process: requests decoded together"),
    (
        "--vllm-quantization",
        "vllm_quantization",
        str,
        "vllm in-process: awq, gptq, fp8, ... (empty: from the checkpoint)",
    ),
    ("--vllm-tensor-parallel-size", "vllm_tensor_parallel_size", int, "vllm in-process: GPUs per model"),
    ("--vllm-enforce-eager", "vllm_enforce_eager", bool, "vllm in-process: no CUDA graphs (faster start)"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N"),
    ("--dtype", "dtype", str, "auto (bf16 on CUDA, fp32 on CPU), fp32, fp16 or bf16"),
    ("--cache-dir", "cache_dir", Path, "persistent prompt-cache folder ('none' keeps it in memory only)"),
    (
        "--cache-url",
        "cache_url",
        str,
        "Redis shared by replicas for the prompt cache and voices (redis://host:6379/0); "
        "wins over --cache-dir",
    ),
    ("--cache-max-entries", "cache_max_entries", int, "prompt-cache size bound: number of voices"),
    ("--cache-max-mb", "cache_max_mb", float, "prompt-cache size bound: MiB on disk (fractions allowed)"),
    ("--ort-threads", "ort_threads", int, "ONNX Runtime intra-op threads (none: one per physical core)"),
    ("--host", "host", str, "address to listen on (0.0.0.0 to serve the network)"),
    ("--port", "port", int, "port to listen on"),
    ("--share", "share", bool, "also open a public Gradio share link"),
    (
        "--no-auto-transcribe",
        "auto_transcribe",
        bool,
        "do not transcribe references with an empty text (an empty reference text is then refused)",
    ),
    ("--max-text-chars", "max_text_chars", int, "longest target text accepted, in characters"),
    ("--max-reference-seconds", "max_reference_seconds", float, "longest reference clip, in seconds"),
    ("--concurrency", "concurrency", int, "requests run at once (1 per GPU is right; queue holds the rest)"),
    ("--queue-size", "queue_size", int, "requests that may wait for a slot; more are refused (HTTP 429)"),
    ("--chunk-chars", "chunk_chars", int, "longest text spoken in one LLM pass (longer text is split)"),
    (
        "--api-key",
        "api_key",
        str,
        "require 'Authorization: Bearer <key>' on /v1 (and for destructive actions when serving the network)",
    ),
    ("--no-warmup", "warmup", bool, "skip the warm-up clone at start-up"),
    (
        "--no-scores",
        "scores",
        bool,
        "do not score outputs (speaker similarity, transcript error rate); best-of-N takes need the scores",
    ),
    ("--no-demo", "allow_demo", bool, "fail instead of building demo models when real ones are missing"),
    ("--examples-dir", "examples_dir", Path, "folder of the example voices (generated when missing)"),
    ("--log-level", "log_level", str, "DEBUG, INFO, WARNING or ERROR"),
)
# flags that switch a default-on feature off
_NEGATED = {"auto_transcribe", "warmup", "allow_demo", "scores"}


def env_name(flag: str) -> str:
    """``--cache-max-mb`` -> ``EDITX_CACHE_MAX_MB``; ``--no-warmup`` -> ``EDITX_NO_WARMUP``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _parse_bool(name: str, text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SystemExit(f"environment variable {name}={text!r} is not a boolean; use 1/0, true/false, yes/no")


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argparse parser; defaults already reflect ``environ`` (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="EditX Studio: zero-shot voice cloning and editing with Step-Audio-EditX.",
        epilog="Every flag falls back to the environment variable shown in its help.",
    )
    for flag, field, kind, text in _FLAGS:
        env = env_name(flag)
        default = getattr(defaults, field)
        if kind is bool:
            env_value = environ.get(env)
            given = _parse_bool(env, env_value) if env_value is not None else False
            negated = field in _NEGATED  # "--no-X" switches a default-on feature off
            parser.add_argument(
                flag,
                dest=field,
                action="store_false" if negated else "store_true",
                default=(not given) if negated else given,
                help=f"{text} [env {env}]",
            )
            continue
        raw = environ.get(env)
        if raw is not None:
            try:
                default = _convert(kind, raw, env)
            except argparse.ArgumentTypeError as exc:
                raise SystemExit(f"environment variable {exc}") from None
        shown = "none" if default is None else default
        parser.add_argument(
            flag,
            dest=field,
            type=lambda s, k=kind, f=flag: _convert(k, s, f),
            default=default,
            help=f"{text} (default: {shown}) [env {env}]",
        )
    return parser


def _convert(kind: type, raw: str, where: str):
    if kind is Path:
        return None if raw.strip().lower() in {"none", ""} else Path(raw).expanduser()
    try:
        return kind(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{where}: {raw!r} is not a valid {kind.__name__}") from None


def parse_settings(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse ``argv`` (default ``sys.argv[1:]``) with ``environ`` fallbacks and validate the values."""
    parser = build_parser(environ)
    ns = parser.parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in fields(Settings)}
    for name in ("api_key", "llm_url", "cache_url", "vllm_quantization"):  # empty means not set
        values[name] = values[name] or None
    problems = validate(values)
    if problems:
        parser.error("; ".join(problems))
    return Settings(**values)


def validate(values: dict) -> list[str]:
    """Human-readable problems with the values (empty when they are usable)."""
    problems = []
    if values["llm_backend"] not in LLM_BACKENDS:
        problems.append(
            f"--llm-backend must be one of {', '.join(LLM_BACKENDS)}, got {values['llm_backend']!r}"
        )
    variants = VLLM_VARIANTS if values["llm_backend"] == "vllm" else VARIANTS
    if values["variant"] not in variants:
        problems.append(
            f"--variant must be one of {', '.join(variants)} with the {values['llm_backend']} "
            f"backend, got {values['variant']!r}"
        )
    if values["llm_decode"] not in DECODE_MODES:
        problems.append(
            f"--llm-decode must be one of {', '.join(DECODE_MODES)}, got {values['llm_decode']!r}"
        )
    if values["llm_url"] and values["llm_backend"] != "vllm":
        problems.append("--llm-url needs --llm-backend vllm")
    if not (0.05 <= values["vllm_gpu_memory_utilization"] <= 1.0):
        problems.append("--vllm-gpu-memory-utilization must be in 0.05..1")
    for name in ("vllm_max_model_len", "vllm_max_num_seqs", "vllm_tensor_parallel_size"):
        if values[name] < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1, got {values[name]}")
    if values["dtype"] not in {"auto", "fp32", "fp16", "bf16"}:
        problems.append(f"--dtype must be auto, fp32, fp16 or bf16, got {values['dtype']!r}")
    if not (0 < values["port"] < 65536):
        problems.append(f"--port must be in 1..65535, got {values['port']}")
    for name in ("cache_max_entries", "max_text_chars", "concurrency", "queue_size"):
        if values[name] < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1, got {values[name]}")
    if not values["llm_prefix_cache_mb"] >= 0:
        problems.append(f"--llm-prefix-cache-mb must be 0 or more, got {values['llm_prefix_cache_mb']}")
    if not values["cache_max_mb"] > 0:
        problems.append(f"--cache-max-mb must be positive, got {values['cache_max_mb']}")
    if not (MIN_CHUNK_CHARS <= values["chunk_chars"] <= MAX_CHUNK_CHARS):
        problems.append(
            f"--chunk-chars must be in {MIN_CHUNK_CHARS}..{MAX_CHUNK_CHARS}, got {values['chunk_chars']}"
        )
    if values["api_key"] is not None and len(values["api_key"]) < 8:
        problems.append("--api-key must be at least 8 characters")
    if values["max_reference_seconds"] <= 0:
        problems.append(f"--max-reference-seconds must be positive, got {values['max_reference_seconds']}")
    if values["ort_threads"] is not None and values["ort_threads"] < 1:
        problems.append(f"--ort-threads must be at least 1, got {values['ort_threads']}")
    if values["log_level"].upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        problems.append(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {values['log_level']!r}")
    return problems
