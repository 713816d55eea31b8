"""The "Time per stage" table of the page: one row per stage that ran, seconds always a number.

    html = timing_html(result.report, upload=UploadEncode(...))     # an HTML <table> for gr.HTML

A plain HTML table rather than a data grid: it wraps only the detail column, keeps numbers on one
line, and carries no sort icons, so it stays readable at phone widths (390 px). The encode a clip
got when it was uploaded is shown as its own row, so a first clone does not read as a cache hit
out of nowhere. Report fields this module does not know yet (the output scores another module
adds, say) still appear: scores through ``score_row``, any other ``*_s`` field as a row of its own.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, fields

from reports import StageReport

# StageReport fields shown by the explicit rows below; any other "<name>_s" field gets a row of its own
KNOWN_FIELDS = frozenset(
    {
        "prep_s",
        "tokenizer_s",
        "tokens_from",
        "cache_hit",
        "encode_s_saved",
        "transcribed",
        "vocoder_prompt_s",
        "vocoder_prompt_cached",
        "llm_s",
        "prompt_tokens",
        "new_tokens",
        "tokens_per_s",
        "dropped_tokens",
        "seed",
        "vocoder_s",
        "total_s",
        "audio_s",
        "ttfa_s",
        "stream",
        "stopped",
        "chunks",
        "score_s",
        "scored",
    }
)
SCORE_FIELDS = ("similarity", "error_rate")  # output checks, shown when the report has them
MIN_SHOWN_S = 0.0005  # a lookup under half a millisecond did not really run (reused features)


@dataclass(frozen=True)
class UploadEncode:
    """The encode a reference clip got when it was uploaded (before Clone was pressed)."""

    tokenizer_s: float
    vocoder_prompt_s: float
    tokens_from: str  # "encoded" or "cache hit" (the clip was used before)
    transcribed: bool

    @property
    def seconds(self) -> float:
        return self.tokenizer_s + self.vocoder_prompt_s


def timing_rows(report: StageReport, upload: UploadEncode | None = None) -> list[tuple[str, float, str]]:
    """(stage, seconds, detail) for every stage that ran, in pipeline order."""
    rows: list[tuple[str, float, str]] = []
    prep_detail = "checks, mono, peak"
    if report.tokens_from == "kept":
        prep_detail += "; tokens kept from the version being edited (no encode)"
    rows.append(("prep", report.prep_s, prep_detail))
    rows += _token_rows(report, upload)
    if report.vocoder_prompt_s >= MIN_SHOWN_S and report.tokens_from != "voice":
        rows.append(
            (
                "vocoder prompt",
                report.vocoder_prompt_s,
                "mel + speaker embedding" + (" (cache hit)" if report.vocoder_prompt_cached else ""),
            )
        )
    chunks = f", {len(report.chunks)} text chunks" if len(report.chunks) > 1 else ""
    rows.append(
        (
            "LLM",
            report.llm_s,
            f"{report.new_tokens} tokens at {report.tokens_per_s:.1f} tok/s, "
            f"prompt {report.prompt_tokens} tokens{chunks}",
        )
    )
    rows.append(
        (
            "vocoder",
            report.vocoder_s,
            f"{report.audio_s:.2f} s of 24 kHz audio" + (", streamed" if report.stream else ""),
        )
    )
    score = score_row(report)
    if score is not None:
        rows.append(score)
    for f in fields(report):  # stages added to the report after this module was written
        value = getattr(report, f.name)
        if f.name.endswith("_s") and f.name not in KNOWN_FIELDS and isinstance(value, int | float):
            rows.append((f.name[:-2].replace("_", " "), float(value), ""))
    rtf = f"real-time factor {report.rtf:.2f}" if report.audio_s > 0 else "no audio"
    rows.append(
        (
            "total",
            report.total_s,
            f"{rtf}, first audio after {report.ttfa_s:.2f} s" + (" (stopped)" if report.stopped else ""),
        )
    )
    return rows


def score_row(report: StageReport) -> tuple[str, float, str] | None:
    """The output-checks row when the report carries scores: speaker similarity, the error rate with
    its metric (CER/WER) or "not scored" with the reason, and which take was kept under best-of-N."""
    values = {name: getattr(report, name, None) for name in SCORE_FIELDS}
    if all(v is None for v in values.values()) and not getattr(report, "scored", False):
        return None
    parts = []
    if values["similarity"] is not None:
        parts.append(f"speaker similarity {float(values['similarity']):.3f}")
    if values["error_rate"] is not None:
        metric = (getattr(report, "metric", None) or "error rate").upper()
        parts.append(f"{metric} {float(values['error_rate']):.1%}")
    else:
        reason = next((c.score_note for c in report.chunks if getattr(c, "score_note", "")), "")
        parts.append(
            reason if "not scored" in reason else f"not scored ({reason})" if reason else "not scored"
        )
    parts += take_notes(report)
    return "scores", float(getattr(report, "score_s", 0.0) or 0.0), ", ".join(parts)


def take_notes(report: StageReport) -> list[str]:
    """ "take 2 of 3 kept" for each text chunk that had more than one take (best-of-N)."""
    notes = []
    for number, chunk in enumerate(report.chunks, 1):
        takes = list(getattr(chunk, "takes", None) or [])
        if len(takes) < 2:
            continue
        kept = next((i for i, t in enumerate(takes, 1) if t.seed == chunk.seed), len(takes))
        where = f"chunk {number}: " if len(report.chunks) > 1 else ""
        notes.append(f"{where}take {kept} of {len(takes)} kept")
    return notes


def timing_html(report: StageReport | None, upload: UploadEncode | None = None) -> str:
    """The table as HTML (empty string when there is no report yet)."""
    if report is None:
        return ""
    body = "".join(
        f'<tr><td class="stage">{html.escape(stage)}</td><td class="seconds">{seconds:.3f}</td>'
        f'<td class="detail">{html.escape(detail)}</td></tr>'
        for stage, seconds, detail in timing_rows(report, upload)
    )
    return (
        '<table class="timing-table"><caption>Time per stage</caption><thead><tr><th>stage</th>'
        f'<th class="seconds">seconds</th><th>detail</th></tr></thead><tbody>{body}</tbody></table>'
    )


def _token_rows(report: StageReport, upload: UploadEncode | None) -> list[tuple[str, float, str]]:
    """Where the reference's tokens came from: encoded now, at upload, the cache, or the library."""
    if report.tokens_from == "kept":
        return []
    if report.tokens_from == "voice":
        return [("voice library", report.tokenizer_s, "stored tokens and vocoder features of the voice")]
    with_text = " + transcription (the reference text was empty)"
    if report.tokens_from != "cache hit":
        label = "tokenizer + transcription" if report.transcribed else "tokenizer"
        detail = "dual-codebook encode" + (with_text if report.transcribed else "")
        return [(label, report.tokenizer_s, detail)]
    rows = []
    if upload is not None and upload.tokens_from == "encoded":
        rows.append(
            (
                "reference encode (at upload)",
                upload.seconds,
                "tokens + vocoder prompt, made when the clip was uploaded"
                + (with_text if upload.transcribed else ""),
            )
        )
        detail = "tokens encoded at upload"
    else:
        detail = f"used before: saved {report.encode_s_saved:.2f} s of encoding"
    rows.append(("tokenizer (cache hit)", report.tokenizer_s, detail))
    return rows
