"""The example voices a first-time user can click (generated at start-up, never committed).

    examples = ensure_examples(Path("examples"))      # or: python scripts/make_examples.py --out examples

Each voice is spoken by espeak-ng when it is installed (Debian: ``apt-get install espeak-ng``),
so the reference text is exactly what the clip says. Without espeak-ng a voice-like synthetic
signal (pulse train through formant filters) stands in, with an empty reference text so the app
transcribes it. The app calls ``ensure_examples`` at start-up; existing files are kept.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

ESPEAK = "espeak-ng"
SYNTHETIC_SAMPLE_RATE = 22050  # Hz, espeak-ng's own output rate, so both paths look alike
INDEX_FILE = "examples.json"


@dataclass(frozen=True)
class ExampleVoice:
    """One example: the clip to write, what it says, and a sentence to clone with it."""

    name: str  # file stem under the examples folder
    espeak_voice: str  # espeak-ng -v value
    words_per_minute: int
    pitch: int  # espeak-ng -p, 0..99
    reference_text: str
    target_text: str
    f0: float  # Hz, pitch of the synthetic stand-in


VOICES: tuple[ExampleVoice, ...] = (
    ExampleVoice(
        "en_us_calm",
        "en-us+m3",
        150,
        40,
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Welcome to EditX Studio. Type any sentence and hear it in this voice.",
        110.0,
    ),
    ExampleVoice(
        "en_gb_bright",
        "en-gb+f3",
        165,
        65,
        "A small cup of tea in the morning makes the whole day brighter.",
        "The weather today is lovely, so let us take a walk in the park.",
        210.0,
    ),
    ExampleVoice(
        "en_scottish_slow",
        "en-gb-scotland+m1",
        130,
        30,
        "Every stone on this old road has a story to tell.",
        "Please remember to bring your umbrella, it might rain later.",
        95.0,
    ),
)


@dataclass(frozen=True)
class Example:
    """A written example: its audio file and texts (reference text empty when synthetic)."""

    path: Path
    reference_text: str
    target_text: str
    source: str  # "espeak-ng" or "synthetic"


def synthetic_voice(seconds: float, sample_rate: int, f0: float = 120.0, seed: int = 0) -> np.ndarray:
    """A voice-like signal: a glottal pulse train with a wandering pitch through three formants,
    shaped into ~3 syllables per second. Returns (samples,) float32 at ``sample_rate`` Hz, peak 0.5."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    pitch = f0 * (1.0 + 0.12 * np.sin(2 * np.pi * 0.7 * t) + 0.05 * np.sin(2 * np.pi * 3.1 * t))
    phase = np.cumsum(pitch) / sample_rate
    pulses = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(np.float64)
    signal = pulses + 0.02 * rng.standard_normal(n)
    for formant, bandwidth in ((700.0, 110.0), (1220.0, 120.0), (2600.0, 160.0)):
        r = np.exp(-np.pi * bandwidth / sample_rate)  # two-pole resonator at the formant
        theta = 2 * np.pi * formant / sample_rate
        signal = lfilter([1.0 - r], [1.0, -2 * r * np.cos(theta), r * r], signal)
    envelope = (0.5 * (1 - np.cos(2 * np.pi * 3.0 * t))) ** 1.5
    out = signal * envelope
    return (out / (np.max(np.abs(out)) + 1e-9) * 0.5).astype(np.float32)


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def _speak(voice: ExampleVoice, path: Path) -> bool:
    """Render ``voice.reference_text`` with espeak-ng into ``path``; False when it fails."""
    with tempfile.NamedTemporaryFile(suffix=".wav", dir=path.parent, delete=False) as tmp:
        tmp_path = Path(tmp.name)
    cmd = [
        ESPEAK,
        "-v",
        voice.espeak_voice,
        "-s",
        str(voice.words_per_minute),
        "-p",
        str(voice.pitch),
        "-w",
        str(tmp_path),
        voice.reference_text,
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        audio, sr = sf.read(tmp_path, dtype="float32")
        if audio.size == 0 or not np.any(audio):
            raise RuntimeError("espeak-ng wrote silence")
        tmp_path.chmod(0o644)  # NamedTemporaryFile is private; the web server serves these clips
        tmp_path.replace(path)
        return True
    except (OSError, subprocess.SubprocessError, RuntimeError, sf.LibsndfileError) as exc:
        log.warning("espeak-ng could not render %s (%s); using a synthetic voice", voice.name, exc)
        tmp_path.unlink(missing_ok=True)
        return False


def ensure_examples(out: Path, force: bool = False) -> list[Example]:
    """Write any missing example clip under ``out`` and return every example (in ``VOICES`` order).

    The index file records how each clip was made, so a synthetic stand-in keeps its empty text.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_FILE
    try:
        index = json.loads(index_path.read_text()) if index_path.exists() and not force else {}
    except (OSError, json.JSONDecodeError):
        index = {}
    use_espeak = espeak_available()
    examples = []
    for number, voice in enumerate(VOICES):
        path = out / f"{voice.name}.wav"
        source = index.get(voice.name, {}).get("source")
        if force or not path.exists() or source is None:
            if use_espeak and _speak(voice, path):
                source = "espeak-ng"
            else:
                audio = synthetic_voice(4.0, SYNTHETIC_SAMPLE_RATE, voice.f0, seed=number)
                sf.write(path, audio, SYNTHETIC_SAMPLE_RATE, subtype="PCM_16")
                source = "synthetic"
            log.info("example voice %s written with %s", path, source)
        text = voice.reference_text if source == "espeak-ng" else ""
        examples.append(Example(path, text, voice.target_text, source))
    written = {e.path.stem: {"source": e.source, "reference_text": e.reference_text} for e in examples}
    if written == index:  # every clip was already there and recorded
        return examples
    try:
        index_path.write_text(json.dumps(written, indent=2) + "\n")
    except OSError as exc:  # a read-only examples folder still serves the clips it has
        log.warning("could not write %s (%s)", index_path, exc)
    return examples
