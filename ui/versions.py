"""Versions on the page: what the API's "details" JSON says about a result, and the session's history.

    details = result_details(result, "out-3f2a9c1b7d0e", voice="my_voice")    # /clone's second output
    history = add_version(history, details)                                     # gr.State list of dicts
    gr.update(choices=version_choices(history))                                 # [(label, id)], newest first

A version is addressed by its output id (``outputs.OutputStore``), the same id the REST API returns in
``X-Output-Id`` and takes as ``output_id``, so a version made on the page can be edited through
``POST /v1/audio/edits`` and back. The session's history keeps only small records (label parts and
the id); the audio lives in the store. Labels tell versions apart: number, what was done (clone, or
which edit of which version), voice, seed, time of day and length.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields

from audio_join import DEFAULT_CROSSFADE_S
from errors import public_message
from reports import StageReport
from synthesis import SynthesisResult

MAX_HISTORY = 20  # versions listed per browser session (the store keeps the audio, bounded on its own)
TIMING_KEYS = ("prep_s", "tokenizer_s", "vocoder_prompt_s", "llm_s", "vocoder_s", "total_s", "ttfa_s")


def crossfade_samples(sample_rate: int) -> int:
    """Samples of the fade between two chunks (``audio_join.ChunkJoiner``'s own rounding)."""
    return max(1, int(round(DEFAULT_CROSSFADE_S * sample_rate)))


def chunk_details(result: SynthesisResult) -> list[dict]:
    """One entry per text chunk that made audio: its own length and the pause after it, in samples.

    The joined file is the sum of its chunks and pauses minus one crossfade per join, so
    ``sum(samples) + sum(pause_after_samples) - (len - 1) * crossfade_samples == len(audio)``.
    """
    fade = crossfade_samples(result.sample_rate)
    segments = result.segments
    out = []
    for i, segment in enumerate(segments):
        samples = segment.end - segment.start
        pause = segments[i + 1].start - segment.end + fade if i + 1 < len(segments) else 0
        out.append(
            {
                "text": segment.text,
                "samples": samples,
                "seconds": round(samples / result.sample_rate, 4),
                "start_s": round(segment.start / result.sample_rate, 4),
                "pause_after_samples": pause,
            }
        )
    return out


def report_fields(report: StageReport) -> dict:
    """Every scalar field of the report (fields added later appear on their own), plus the scores."""
    out = {
        f.name: getattr(report, f.name)
        for f in fields(report)
        if isinstance(getattr(report, f.name), bool | int | float | str | type(None))
    }
    for name in ("similarity", "error_rate", "metric"):  # properties of reports that carry output scores
        value = getattr(report, name, None)
        if value is not None:
            out[name] = value
    out["chunks"] = [
        {
            f.name: getattr(c, f.name)
            for f in fields(c)
            if isinstance(getattr(c, f.name), bool | int | float | str | type(None))
        }
        | {"takes": [asdict(t) for t in getattr(c, "takes", None) or []]}  # best-of-N takes
        for c in report.chunks
    ]
    return out


def result_details(
    result: SynthesisResult,
    version_id: str,
    voice: str,
    source_id: str | None = None,
    warnings: list[str] | None = None,
) -> dict:
    """The JSON the page and the API return with a finished (or stopped) clone or edit."""
    report = result.report
    return {
        "status": "stopped" if result.stopped else "done",
        "version_id": version_id,
        "mode": result.mode,
        "source_version_id": source_id,
        "voice": voice,
        "text": result.text,
        "reference_text": result.prompt_text,
        "reference_transcribed": result.transcribed,
        "seed": report.seed,
        "variant": result.variant,
        "finished_at": time.strftime("%H:%M:%S"),
        "audio_s": round(result.seconds, 3),
        "sample_rate": result.sample_rate,
        "samples": int(len(result.audio)),
        "crossfade_samples": crossfade_samples(result.sample_rate),
        "chunks": chunk_details(result),
        "timings": {key: round(float(getattr(report, key)), 4) for key in TIMING_KEYS},
        "report": report_fields(report),
        "warnings": [public_message(w) for w in (warnings if warnings is not None else result.warnings)],
    }


def running_details(
    chunk: int, chunks: int, audio_s: float, stage: str, pieces: int, played_s: float
) -> dict:
    """What a clone or edit reports while it runs: text chunk ``chunk`` of ``chunks``, the seconds of
    audio the LLM has made tokens for, the stage ("llm", "vocoder", "retry") and the audio pieces sent
    so far (the page's progress line and live player read it)."""
    return {
        "status": "running",
        "chunk": chunk,
        "chunks": chunks,
        "audio_s": round(audio_s, 2),
        "stage": stage,
        "pieces": pieces,
        "pieces_s": round(played_s, 2),
    }


def edit_name(mode: str) -> str:
    """ "edit emotion/happy" -> "emotion: happy"; "clone" stays."""
    if not mode.startswith("edit "):
        return mode
    task, _, sub = mode[len("edit ") :].partition("/")
    return f"{task}: {sub}" if sub else task


def add_version(history: list[dict] | None, details: dict) -> list[dict]:
    """``history`` with the version of ``details`` appended (numbered per session, oldest dropped)."""
    history = list(history or [])
    number = history[-1]["number"] + 1 if history else 1
    source = next((v for v in history if v["id"] == details.get("source_version_id")), None)
    record = {
        "id": details["version_id"],
        "number": number,
        "mode": details["mode"],
        "voice": details.get("voice") or "",
        "seed": details.get("seed"),
        "time": details.get("finished_at", ""),
        "seconds": details.get("audio_s", 0.0),
        "text": details.get("text", ""),
        "stopped": details.get("status") == "stopped",
        "source": f"v{source['number']}" if source else details.get("source_version_id"),
    }
    return (history + [record])[-MAX_HISTORY:]


def version_label(record: dict) -> str:
    """ "v3 · clone · voice my_voice · seed 0 · 14:02:11 · 3.4 s" (edits say which edit of which version)."""
    what = edit_name(record["mode"])
    if record["mode"] != "clone" and record.get("source"):
        what += f" of {record['source']}"
    parts = [f"v{record['number']}", what]
    if record.get("voice"):
        parts.append(f"voice {record['voice']}")
    if record.get("seed") is not None:
        parts.append(f"seed {record['seed']}")
    parts += [record.get("time", ""), f"{float(record.get('seconds', 0.0)):.1f} s"]
    if record.get("stopped"):
        parts.append("stopped")
    return " · ".join(p for p in parts if p)


def version_choices(history: list[dict] | None) -> list[tuple[str, str]]:
    """(label, output id) pairs for the history dropdown, newest first."""
    return [(version_label(v), v["id"]) for v in reversed(history or [])]


def find_version(history: list[dict] | None, version_id: str | None) -> dict | None:
    return next((v for v in history or [] if v["id"] == version_id), None)


def version_summary(record: dict | None, text: str) -> str:
    """A line of Markdown under the selected version's player."""
    if record is None:
        return text
    quoted = text if len(text) <= 160 else text[:157] + "..."
    return f"**{version_label(record)}**  \n{quoted}"
