"""What a whole response says about its output in headers: ids, timings, scores, warnings, provenance.

Every output's provenance record (``provenance.py``) travels with it: whole responses carry it in
``X-Render-Manifest`` (base64url of the compact JSON, without padding) when it fits in
``MAX_MANIFEST_HEADER_BYTES``, and always name ``X-Render-Manifest-Url``
(``GET /v1/outputs/{id}/manifest``); a whole WAV embeds it in a LIST/INFO ICMT chunk (``api/streaming.py``);
the SSE ``speech.audio.done`` event carries it as ``manifest``, with the same ``timings`` and ``scores``.
"""

from __future__ import annotations

import base64

from provenance import manifest_json
from synthesis import SynthesisResult

MAX_MANIFEST_HEADER_BYTES = 8 << 10  # larger records are only served at X-Render-Manifest-Url


def result_headers(result: SynthesisResult, output_id: str) -> dict[str, str]:
    report = result.report
    headers = {f"X-Timing-{k.title()}": f"{v:.3f}" for k, v in timings(result).items()}
    headers.update(
        {
            "X-Output-Id": output_id,
            "X-Seed": str(report.seed),
            "X-Cache": {"cache hit": "hit", "kept": "kept", "voice": "voice"}.get(report.tokens_from, "miss"),
            "X-Audio-Seconds": f"{report.audio_s:.3f}",
            "X-Chunks": str(len(report.chunks)),
            "X-Variant": result.variant,
            "X-Backend": result.backend,
            "X-Mode": result.mode,
            "X-Render-Manifest-Url": f"/v1/outputs/{output_id}/manifest",
        }
    )
    headers.update(
        {f"X-Score-{k.replace('_', '-').title()}": str(v) for k, v in scores(result).items() if v is not None}
    )
    encoded = base64.urlsafe_b64encode(manifest_json(result.manifest).encode()).rstrip(b"=").decode()
    if len(encoded) <= MAX_MANIFEST_HEADER_BYTES:
        headers["X-Render-Manifest"] = encoded
    if result.warnings:
        headers["X-Warnings"] = _ascii("; ".join(result.warnings))[:1000]
    return headers


def timings(result: SynthesisResult) -> dict[str, float]:
    r = result.report
    return {
        "total": r.total_s,
        "prep": r.prep_s,
        "tokenizer": r.tokenizer_s,
        "llm": r.llm_s,
        "vocoder": r.vocoder_s,
        "scores": r.score_s,
        "ttfa": r.ttfa_s,
    }


def scores(result: SynthesisResult) -> dict:
    """The output's scores as the manifest states them (None: not scored)."""
    scores = result.manifest.get("scores") or {}
    return {name: scores.get(name) for name in ("similarity", "error_rate", "metric")}


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")
