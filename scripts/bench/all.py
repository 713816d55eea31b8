"""Run every stage benchmark and write one Markdown + JSON report (machine, device, versions, figures).

    python scripts/benchmark.py all --model-dir DIR --out report.md [--quick] [--device cuda]

Each stage (``scripts/bench/<stage>.py``) runs with the defaults of its own ``add_arguments`` plus
``model_dir``; a stage that fails is recorded with its error and the others still run. The report
is ``--out`` (Markdown) and the same path with ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.all")

STAGES = ("tokenizer", "llm", "vocoder", "clone", "scores")
VERSIONED_PACKAGES = (
    "torch",
    "onnxruntime-gpu",
    "onnxruntime",
    "transformers",
    "funasr",
    "bitsandbytes",
    "gradio",
    "numpy",
    "librosa",
    "diskcache",
    "huggingface_hub",
)
# --quick: a stage's own --quick flag if it has one (it knows which of its settings may shrink),
# else these common flags when it has them.
QUICK_OVERRIDES = {"repeats": 1, "skip_real": True}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("report.md"),
        help="Markdown report path (the JSON report goes next to it, .json)",
    )
    parser.add_argument(
        "--stages", default=",".join(STAGES), help="comma-separated subset of: " + ", ".join(STAGES)
    )
    parser.add_argument("--quick", action="store_true", help="ask each stage for its fastest settings")
    parser.add_argument(
        "--device",
        default=None,
        help="pass this --device to every stage that has one (default: each stage's own)",
    )


def stage_namespace(
    module: Any, model_dir: Path | None, device: str | None, quick: bool
) -> argparse.Namespace:
    """The stage's own defaults (from its add_arguments), with model_dir and the shared overrides."""
    from scripts.benchmark import add_common_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_common_arguments(parser)
    module.add_arguments(parser)
    args = parser.parse_args([])
    args.model_dir = model_dir
    args.json = None
    if device is not None and hasattr(args, "device"):
        args.device = device
    if quick and hasattr(args, "quick"):
        args.quick = True
    elif quick:
        for name, value in QUICK_OVERRIDES.items():
            if hasattr(args, name):
                setattr(args, name, value)
    return args


def run_stage(stage: str, model_dir: Path | None, device: str | None, quick: bool) -> dict:
    """Run one stage benchmark; never raises: failures are returned as ``{"ok": False, "error": ...}``."""
    started = time.perf_counter()
    entry: dict[str, Any] = {"stage": stage}
    try:
        module = importlib.import_module(f"scripts.bench.{stage}")
        args = stage_namespace(module, model_dir, device, quick)
        entry["settings"] = {k: v for k, v in vars(args).items() if k != "json"}
        entry["result"] = module.run(args)
        entry["ok"] = True
    except Exception as exc:  # keep going: one broken stage must not hide the others' figures
        entry["ok"] = False
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc(limit=8).strip().splitlines()[-12:]
    entry["seconds"] = round(time.perf_counter() - started, 3)
    level = logging.INFO if entry["ok"] else logging.ERROR
    log.log(level, "stage %s: %s in %.1f s", stage, "ok" if entry["ok"] else entry["error"], entry["seconds"])
    return entry


def machine_info() -> dict:
    """CPU model, cores, memory and OS of this machine."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 1e9, 1)
    except ImportError:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * page_size / 1e9, 1)
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_info() -> dict:
    """The accelerator the stages can use: CUDA device name, memory, capability; else the CPU."""
    info: dict[str, Any] = {"cuda_available": False, "device": "cpu"}
    try:
        import torch
    except ImportError:
        return info
    info["torch_cuda_build"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            cuda_available=True,
            device=torch.cuda.get_device_name(0),
            device_count=torch.cuda.device_count(),
            memory_gb=round(props.total_memory / 1e9, 1),
            capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
        )
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return info


def versions() -> dict:
    """Python and the installed versions of the packages whose speed the figures depend on."""
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested result dicts as ``(dotted.key, value)`` rows; lists of numbers stay one row."""
    if isinstance(value, dict):
        rows: list[tuple[str, Any]] = []
        for key, item in value.items():
            rows.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        rows = []
        for index, item in enumerate(value):
            rows.extend(flatten(item, f"{prefix}[{index}]"))
        return rows
    return [(prefix, value)]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        text = ", ".join(_format(v) for v in value[:8])
        return f"[{text}, ...] ({len(value)} values)" if len(value) > 8 else f"[{text}]"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict) -> str:
    """The report as Markdown: summary, machine, device, versions, then each stage's figures."""
    lines = [
        "# EditX Studio benchmark report",
        "",
        f"Generated {report['generated']} with `{report['command']}`"
        f"{' (quick settings)' if report['quick'] else ''}.",
        "",
        "| stage | status | wall time (s) |",
        "|---|---|---|",
    ]
    for entry in report["stages"]:
        status = "ok" if entry["ok"] else f"FAILED: {_format(entry['error'])}"
        lines.append(f"| {entry['stage']} | {status} | {entry['seconds']:.1f} |")
    for title, key in (("Machine", "machine"), ("Device", "device"), ("Versions", "versions")):
        lines += ["", f"## {title}", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {_format(v)} |" for k, v in report[key].items()]
    for entry in report["stages"]:
        lines += ["", f"## Stage: {entry['stage']}", ""]
        if not entry["ok"]:
            lines += [
                f"**Failed** after {entry['seconds']:.1f} s: `{entry['error']}`",
                "",
                "```",
                *entry.get("traceback", []),
                "```",
            ]
            continue
        ratios = [(k, v) for k, v in flatten(entry["result"]) if _is_ratio(k)]
        if ratios:
            lines += ["Ratios: " + "; ".join(f"{k} = {_format(v)}" for k, v in ratios), ""]
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_format(v)} |" for k, v in flatten(entry["result"])]
        settings = ", ".join(f"{k}={_format(v)}" for k, v in entry.get("settings", {}).items())
        lines += ["", f"Settings: {settings}"]
    return "\n".join(lines) + "\n"


def _is_ratio(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1].lower()
    return any(word in leaf for word in ("ratio", "speedup", "rtf", "real_time", "hit_rate", "per_s"))


def run(args: argparse.Namespace) -> dict:
    stages = [s.strip() for s in str(args.stages).split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    started = time.perf_counter()
    report: dict[str, Any] = {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "scripts/benchmark.py", "all", *sys.argv[2:]])
        if sys.argv and sys.argv[0].endswith("benchmark.py")
        else "scripts/bench/all.run",
        "quick": bool(args.quick),
        "model_dir": str(args.model_dir) if args.model_dir else None,
        "machine": machine_info(),
        "device": device_info(),
        "versions": versions(),
        "stages": [run_stage(stage, args.model_dir, args.device, args.quick) for stage in stages],
    }
    report["seconds"] = round(time.perf_counter() - started, 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(report))
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    failed = [e["stage"] for e in report["stages"] if not e["ok"]]
    log.info(
        "report written to %s and %s in %.1f s (%d stage(s) failed%s)",
        out,
        out.with_suffix(".json"),
        report["seconds"],
        len(failed),
        f": {', '.join(failed)}" if failed else "",
    )
    return report
