"""Render many lines in one library voice: one audio file per line, plus one joined file.

    python scripts/batch.py --voice calm-narrator --input lines.txt --out clips/
    python scripts/batch.py --voice calm-narrator --input episode.srt --out clips/ --format flac
    python scripts/batch.py --voice calm-narrator --input script.csv --out clips/   # a "text" column

Input: a text file (one clip per non-empty line), an .srt subtitle file (one clip per cue) or a
.csv file (the ``text`` column, else the first; an ``id`` column names the files). The same
engine as the app renders each line (the voice comes from the voice library under --cache-dir or
--cache-url, as the app sees it). Resumable: each finished line is recorded in ``batch.json`` in
the output folder and its file written atomically, so a second run skips what is done and an
interrupted run loses at most the line it was on. Line i is spoken with seed --seed + i, so a
rerun gives the same audio. At the end: the joined file and a summary of timings and cache hits.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

log = logging.getLogger("batch")

MANIFEST = "batch.json"
JOINED_STEM = "joined"
PAUSE_S = 0.4  # silence between lines in the joined file
SRT_TIME = re.compile(r"^\d\d:\d\d:\d\d[,.]\d{3}\s*-->\s*\d\d:\d\d:\d\d[,.]\d{3}")


def read_lines(path: Path) -> list[tuple[str, str]]:
    """(name, text) of every clip in a .txt, .srt or .csv file, in order (empty lines skipped)."""
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix == ".srt":
        items, current = [], []
        for line in text.splitlines() + [""]:
            line = line.strip()
            if not line:
                if current:
                    items.append(" ".join(current))
                current = []
            elif not (line.isdigit() and not current) and not SRT_TIME.match(line):
                current.append(line)
        texts = items
        names = [f"{i + 1:04d}" for i in range(len(texts))]
    elif suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows:
            return []
        column = "text" if "text" in rows[0] else next(iter(rows[0]))
        texts = [(row.get(column) or "").strip() for row in rows]
        names = [_safe_name(row.get("id") or "") or f"{i + 1:04d}" for i, row in enumerate(rows)]
    else:
        texts = [line.strip() for line in text.splitlines()]
        names = [f"{i + 1:04d}" for i in range(len(texts))]
    return [(n, t) for n, t in zip(names, texts, strict=True) if t]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip())[:80].strip("._")


def _digest(text: str, voice: str, seed: int) -> str:
    return hashlib.sha256(f"{voice}\0{seed}\0{text}".encode()).hexdigest()[:16]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--voice", required=True, help="a voice id of the library (GET /v1/voices lists them)"
    )
    parser.add_argument("--input", required=True, type=Path, help=".txt, .srt or .csv")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--format", default="wav", help="wav, flac, mp3, opus, aac or pcm")
    parser.add_argument("--seed", type=int, default=0, help="line i uses seed + i")
    parser.add_argument(
        "--model-dir", type=Path, default=Path(os.environ.get("EDITX_MODEL_DIR", "checkpoints"))
    )
    parser.add_argument(
        "--demo-dir", type=Path, default=Path(os.environ.get("EDITX_DEMO_DIR", "demo_models"))
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(os.environ.get("EDITX_CACHE_DIR", "cache/funasr"))
    )
    parser.add_argument("--cache-url", default=os.environ.get("EDITX_CACHE_URL") or None)
    parser.add_argument("--device", default=os.environ.get("EDITX_DEVICE", "auto"))
    parser.add_argument("--variant", default=os.environ.get("EDITX_VARIANT", "base"))
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap per text chunk (tests)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    from audio_formats import FORMATS, encode_audio
    from errors import EditXError

    if args.format not in FORMATS:
        print(f"--format must be one of {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    try:
        lines = read_lines(args.input)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        print(f"cannot read {args.input.name}: {exc}", file=sys.stderr)
        return 2
    if not lines:
        print(f"{args.input.name} holds no text to speak", file=sys.stderr)
        return 2
    try:
        engine = _load_engine(args)
        engine.voices.voice_info(args.voice)  # a clear message now, not at the first line
    except EditXError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / MANIFEST
    done = _read_manifest(manifest_path)
    summary = {
        "lines": len(lines),
        "skipped": 0,
        "rendered": 0,
        "failed": 0,
        "seconds": 0.0,
        "audio_s": 0.0,
        "llm_s": 0.0,
        "vocoder_s": 0.0,
    }
    started = time.perf_counter()
    progress = _progress(len(lines), args.no_progress)
    for index, (name, text) in enumerate(lines):
        seed = args.seed + index
        digest = _digest(text, args.voice, seed)
        path = args.out / f"{name}.{args.format}"
        entry = done.get(name)
        if entry and entry.get("digest") == digest and path.is_file():
            summary["skipped"] += 1
            progress.update(1)
            continue
        try:
            result = _render(engine, args, text, seed)
        except EditXError as exc:
            log.warning("line %d (%s) failed: %s", index + 1, name, exc)
            summary["failed"] += 1
            progress.update(1)
            continue
        _write_atomic(path, encode_audio(result.audio, result.sample_rate, args.format))
        report = result.report
        done[name] = {
            "digest": digest,
            "file": path.name,
            "text": text,
            "seed": seed,
            "audio_s": round(report.audio_s, 3),
            "total_s": round(report.total_s, 3),
            "warnings": result.warnings,
        }
        _write_atomic(manifest_path, (json.dumps(done, indent=1, ensure_ascii=False) + "\n").encode())
        for key, value in (
            ("audio_s", report.audio_s),
            ("llm_s", report.llm_s),
            ("vocoder_s", report.vocoder_s),
        ):
            summary[key] += value
        summary["rendered"] += 1
        progress.update(1)
    progress.close()
    joined = _join(args, lines, done, engine.vocoder.sample_rate)
    summary["seconds"] = time.perf_counter() - started
    stats = engine.cache_stats()
    print(
        f"{summary['rendered']} rendered, {summary['skipped']} already done, {summary['failed']} failed, "
        f"of {summary['lines']} lines in {summary['seconds']:.1f} s; {summary['audio_s']:.1f} s of audio "
        f"(LLM {summary['llm_s']:.1f} s, vocoder {summary['vocoder_s']:.1f} s); prompt cache "
        f"{stats.get('hits', 0)} hits / {stats.get('misses', 0)} misses; joined file: {joined.name}"
    )
    return 1 if summary["failed"] else 0


def _load_engine(args: argparse.Namespace):
    from demo import write_demo_models
    from engine import CloneEngine
    from model_layout import locate_models
    from synthesis import EngineConfig

    root = locate_models(args.model_dir, args.demo_dir, write_demo_models)
    if root.demo:
        log.warning("using the DEMO models (untrained: the output is noise)")
    return CloneEngine.load(
        root.path,
        EngineConfig(variant=args.variant, device=args.device),
        cache_dir=args.cache_dir,
        cache_url=args.cache_url,
        demo=root.demo,
    )


def _render(engine, args: argparse.Namespace, text: str, seed: int):
    from synthesis import CloneRequest, SynthesisOptions

    options = SynthesisOptions(seed=seed, max_new_tokens=args.max_new_tokens)
    return engine.clone(CloneRequest.from_voice(args.voice, text, options))


def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _join(args: argparse.Namespace, lines: list[tuple[str, str]], done: dict, sample_rate: int) -> Path:
    """One file of every finished line in input order, with a short pause between them."""
    import numpy as np

    from audio_formats import encode_audio
    from audio_read import load_audio
    from audio_resample import resample

    pause = np.zeros(int(PAUSE_S * sample_rate), np.float32)
    parts: list[np.ndarray] = []
    for name, _ in lines:
        entry = done.get(name)
        path = args.out / entry["file"] if entry else None
        if path is None or not path.is_file():
            continue
        audio, sr = load_audio(path, max_seconds=None, max_channels=None)
        mono = audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]
        parts += [resample(mono, sr, sample_rate) if sr != sample_rate else mono, pause]
    joined = args.out / f"{JOINED_STEM}.{args.format}"
    audio = np.concatenate(parts[:-1]) if parts else np.zeros(0, np.float32)
    _write_atomic(joined, encode_audio(audio, sample_rate, args.format))
    return joined


def _progress(total: int, disabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="line", disable=disabled, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
