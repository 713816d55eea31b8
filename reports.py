"""What one request cost and how it scored: per-stage seconds, per-chunk seeds, takes and scores.

    result.report.rows()         # [stage, seconds, detail] for the page's timing table
    result.report.summary()      # one log line with the whole breakdown
    result.report.chunks[0]      # ChunkReport: text, seed, tokens, seconds, scores, takes (TakeScore)

``render.Render`` fills them in as it runs the chunks; ``provenance.py`` records them in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TakeScore:
    """One take of a text chunk: its seed and its scores (None: not scored, or no audio)."""

    seed: int
    similarity: float | None = None
    error_rate: float | None = None


@dataclass
class ChunkReport:
    """One text chunk of a request: what was said, with which seed, what it cost and how it scored.

    ``seed`` is the kept take's; ``takes`` lists every take that was generated (best-of-N), in order.
    """

    text: str
    seed: int
    attempts: int = 1  # generations run: 2 when the first seed gave no audio, up to N with best-of-N
    new_tokens: int = 0
    audio_tokens: int = 0
    llm_s: float = 0.0
    vocoder_s: float = 0.0
    audio_s: float = 0.0
    warning: str = ""  # why this chunk has no audio, when it has none
    similarity: float | None = None  # cosine of CAM++ embeddings, output vs reference (or version edited)
    error_rate: float | None = None  # CER or WER of the Paraformer transcript against ``text``
    metric: str | None = None  # "cer", "wer", or None when not scored
    reference_tokens: int = 0  # characters (CER) or words (WER) of ``text`` after normalisation
    transcript: str = ""  # what the Paraformer heard in the kept take
    score_note: str = ""  # why a score is missing (e.g. "not scored" for Japanese)
    scored_s: float = 0.0  # seconds spent scoring this chunk's takes
    takes: list[TakeScore] = field(default_factory=list)


@dataclass
class StageReport:
    """Seconds spent per stage of one request (wall clock), with token and audio counts.

    LLM and vocoder figures add up over the text chunks; ``ttfa_s`` is the time from the request
    to its first audio sample (the whole first chunk when not streaming).
    """

    prep_s: float = 0.0
    tokenizer_s: float = 0.0
    tokens_from: str = "encoded"  # "encoded", "cache hit" or "kept" (a previous version's own tokens)
    cache_hit: bool = False
    encode_s_saved: float = 0.0  # recorded encode time of the cache entry that was hit
    transcribed: bool = False  # the reference text was empty and Paraformer transcribed it (in tokenizer_s)
    vocoder_prompt_s: float = 0.0
    vocoder_prompt_cached: bool = False
    llm_s: float = 0.0
    prompt_tokens: int = 0
    new_tokens: int = 0
    tokens_per_s: float = 0.0
    dropped_tokens: int = 0
    seed: int | None = None  # the request's seed (each chunk's is derived from it)
    vocoder_s: float = 0.0
    total_s: float = 0.0
    audio_s: float = 0.0  # seconds of generated audio
    ttfa_s: float = 0.0  # time to first audio
    stream: bool = False
    stopped: bool = False  # Stop was pressed: the audio made until then is kept
    scored: bool = False  # the outputs were scored (off with --no-scores)
    score_s: float = 0.0  # seconds spent scoring (included in total_s)
    chunks: list[ChunkReport] = field(default_factory=list)

    @property
    def similarity(self) -> float | None:
        """Mean speaker similarity of the chunks that have one, weighted by their audio seconds."""
        scored = [(c.similarity, max(c.audio_s, 1e-9)) for c in self.chunks if c.similarity is not None]
        return sum(s * w for s, w in scored) / sum(w for _, w in scored) if scored else None

    @property
    def error_rate(self) -> float | None:
        """Overall error rate: the chunks' errors over their reference tokens (as one long text)."""
        scored = [
            (c.error_rate, c.reference_tokens)
            for c in self.chunks
            if c.error_rate is not None and c.reference_tokens
        ]
        total = sum(n for _, n in scored)
        return sum(r * n for r, n in scored) / total if total else None

    @property
    def metric(self) -> str | None:
        """ "cer" or "wer" when every scored chunk used it, "mixed" for both, None when none was scored."""
        metrics = {c.metric for c in self.chunks if c.error_rate is not None}
        return (metrics.pop() if len(metrics) == 1 else "mixed") if metrics else None

    def score_detail(self) -> str:
        """The scores in words, for the timing table: "similarity 0.93, CER 4.2%, 3 takes"."""
        if not self.scored:
            return "off (--no-scores)"
        parts = [f"similarity {self.similarity:.3f}" if self.similarity is not None else "similarity -"]
        rate, metric = self.error_rate, self.metric
        parts.append(
            f"{metric.upper()} {rate:.1%}"
            if rate is not None and metric
            else next((c.score_note for c in self.chunks if c.score_note), "error rate -")
        )
        takes = sum(len(c.takes) for c in self.chunks)
        if takes > len(self.chunks):
            parts.append(f"{takes} takes for {len(self.chunks)} chunk(s)")
        return ", ".join(parts)

    @property
    def rtf(self) -> float:
        """Real-time factor: processing seconds per second of generated audio (< 1 is faster)."""
        return self.total_s / self.audio_s if self.audio_s > 0 else float("inf")

    def rows(self) -> list[list[str]]:
        """[stage, seconds, detail] rows for a table, in pipeline order."""
        tok_label = f"tokenizer ({self.tokens_from})"
        tok_detail = {
            "cache hit": f"saved {self.encode_s_saved:.2f} s of encoding",
            "kept": "tokens of the version being edited",
        }.get(self.tokens_from, "dual-codebook encode")
        rows = [
            ["prep", f"{self.prep_s:.3f}", "validate, mono, peak"],
            [tok_label, f"{self.tokenizer_s:.3f}", tok_detail],
        ]
        if self.transcribed:  # not timed apart: the transcript is decoded from the vq02 encoder output
            rows.append(["transcription", "in tokenizer", "Paraformer (the reference text was empty)"])
        rows.append(
            [
                "vocoder prompt" + (" (cached)" if self.vocoder_prompt_cached else ""),
                f"{self.vocoder_prompt_s:.3f}",
                "mel + speaker embedding",
            ]
        )
        chunks = f", {len(self.chunks)} chunks" if len(self.chunks) > 1 else ""
        rows.append(
            [
                "LLM",
                f"{self.llm_s:.3f}",
                f"{self.new_tokens} tokens, {self.tokens_per_s:.1f} tok/s, prompt {self.prompt_tokens}"
                f"{chunks}",
            ]
        )
        rows.append(
            [
                "vocoder",
                f"{self.vocoder_s:.3f}",
                f"{self.audio_s:.2f} s of 24 kHz audio" + (" (streamed)" if self.stream else ""),
            ]
        )
        rows.append(["scores", f"{self.score_s:.3f}" if self.scored else "off", self.score_detail()])
        rows.append(
            [
                "total",
                f"{self.total_s:.3f}",
                f"real-time factor {self.rtf:.2f}, first audio after "
                f"{self.ttfa_s:.2f} s" + (" (stopped)" if self.stopped else ""),
            ]
        )
        return rows

    def summary(self) -> str:
        """One log line with the whole breakdown."""
        transcribe = " + transcription" if self.transcribed else ""
        scores = f"{self.score_s:.3f}s {self.score_detail()}" if self.scored else self.score_detail()
        return (
            f"prep {self.prep_s:.3f}s | tokenizer {self.tokens_from} "
            f"{self.tokenizer_s:.3f}s{transcribe} | vocoder prompt "
            f"{'hit' if self.vocoder_prompt_cached else 'miss'} {self.vocoder_prompt_s:.3f}s | llm "
            f"{self.llm_s:.3f}s ({self.new_tokens} tok, {self.tokens_per_s:.1f} tok/s) | vocoder "
            f"{self.vocoder_s:.3f}s{' streamed' if self.stream else ''} | scores {scores} | "
            f"{len(self.chunks)} chunk(s) | "
            f"first audio {self.ttfa_s:.3f}s | total {self.total_s:.3f}s for {self.audio_s:.2f}s audio, "
            f"RTF {self.rtf:.2f}{' | STOPPED' if self.stopped else ''}"
        )
