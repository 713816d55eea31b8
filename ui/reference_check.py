"""The reference check on the page: the engine's preflight next to the clip, and one-click fixes.

    check = ReferenceCheck(engine, files_dir)
    check.check(path, text, voice)                  # -> (Markdown next to the clip, fix buttons)
    check.fix("denoise", path, text, *options)      # -> the cleaned clip, used as the reference

After an upload, a recording or a one-click fix the clip is measured by
``engine.voices.preflight``: duration, loudness (LUFS), clipped share, SNR and, when a text was
typed, its CER/WER against the transcript (cached by the tokenizer, so a second check is cheap).
Each problem is a plain warning. The denoise and vad edits of the model can clean a noisy clip or
trim its silence: one click runs that edit on the clip and makes the result the reference.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import gradio as gr
import soundfile as sf

from audio_read import read_audio
from engine import CloneEngine
from errors import EmptyGenerationError, InputError
from preflight import Preflight
from synthesis import EditRequest, SynthesisResult
from ui.reference import NEW_VOICE, TYPED_FOR_NEXT_CLIP
from ui.values import public_error, synthesis_options

log = logging.getLogger(__name__)

FIXES = {"denoise": "Denoise the clip", "vad": "Trim the silence (vad)"}  # edit task -> button label
FIX_SEEDS = 3  # seeds a one-click fix tries before saying it made no audio


def check_markdown(check: Preflight) -> str:
    """The measurements on one line, then one line per warning (Markdown)."""
    parts = [f"{check.duration_s:.1f} s"]
    if check.loudness_lufs is not None:
        parts.append(f"{check.loudness_lufs:.0f} LUFS")
    parts.append(f"clipped {check.clipped_share:.1%}")
    if check.snr_db is not None:
        parts.append(f"SNR about {check.snr_db:.0f} dB")
    if check.text_error_rate is not None and check.text_metric:
        parts.append(f"text vs transcript {check.text_metric.upper()} {min(check.text_error_rate, 9.99):.0%}")
    lines = ["**Clip check:** " + " · ".join(parts)]
    lines += [f"⚠️ {w.message}." for w in check.warnings if w.code != "unusable"]
    if not check.warnings:
        lines.append("No problems found.")
    return "  \n".join(lines)


class ReferenceCheck:
    """Handlers of the clip check and its fix buttons (``files``: where cleaned clips are written)."""

    def __init__(self, engine: CloneEngine, files: Path):
        self.engine = engine
        self.files = files / "fixed"
        self.files.mkdir(parents=True, exist_ok=True)

    def check(self, reference_audio, reference_text, voice):
        """A clip (or its text) changed -> (check Markdown, denoise button, vad button). The suggested
        fix is the primary button; a library voice or no clip shows nothing."""
        hidden = gr.update(visible=False)
        if reference_audio is None or (voice and voice != NEW_VOICE):
            return "", hidden, hidden
        try:
            audio, sr = read_audio(reference_audio, max_seconds=self.engine.config.max_reference_seconds)
            check = self.engine.voices.preflight(audio, sr, reference_text or "")
        except InputError:  # the note under the clip already says why it cannot be used
            return "", hidden, hidden
        except Exception as exc:  # noqa: BLE001 - the check is advice: never block the clip over it
            log.error("reference check failed", exc_info=exc)
            return "", hidden, hidden
        suggested = {w.suggestion for w in check.warnings if w.suggestion}
        buttons = [
            gr.update(visible=check.usable, variant="primary" if task in suggested else "secondary")
            for task in FIXES
        ]
        return check_markdown(check), *buttons

    def fix(
        self,
        task,
        reference_audio,
        reference_text,
        variant=None,
        seed=None,
        temperature=0.7,
        top_p=1.0,
        flow_steps=10,
        max_new_tokens=None,
        best_of=1,
    ):
        """Run the ``task`` edit ("denoise" or "vad") on the clip -> (the cleaned clip, which becomes
        the reference, the text owner: the text stays, it was typed for the same words)."""
        try:
            if reference_audio is None:
                raise InputError("upload or record a clip first")
            audio, sr = read_audio(reference_audio, max_seconds=self.engine.config.max_reference_seconds)
            options = synthesis_options(
                variant, seed, temperature, top_p, flow_steps, max_new_tokens, best_of=best_of
            )
            result = self._edit(EditRequest(audio, sr, reference_text or "", task, None, "", options))
        except Exception as exc:
            raise public_error(task, exc) from None
        path = self.files / f"{Path(str(reference_audio)).stem}-{task}.wav"
        sf.write(path, result.audio, result.sample_rate, subtype="PCM_16")
        gr.Info(f"{FIXES[task]}: done; the result ({result.seconds:.1f} s) is now the reference clip.")
        return str(path), TYPED_FOR_NEXT_CLIP

    def _edit(self, request: EditRequest) -> SynthesisResult:
        """The edit, with the next seeds when one makes no audio (one click should give a clip)."""
        seed = request.options.seed
        for attempt in range(FIX_SEEDS):
            options = request.options if seed is None else replace(request.options, seed=seed + attempt)
            try:
                return self.engine.edit(replace(request, options=options))
            except EmptyGenerationError:
                if attempt == FIX_SEEDS - 1:
                    raise
        raise AssertionError("unreachable")
