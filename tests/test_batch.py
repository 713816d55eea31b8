"""scripts/batch.py: one file per line in a library voice, resumable after an interruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.examples import synthetic_voice
from engine import CloneEngine
from scripts.batch import MANIFEST, read_lines
from synthesis import EngineConfig

ROOT = Path(__file__).resolve().parents[1]
LINES = [
    "The first line of the batch.",
    "A second, shorter line.",
    "Line number three is here.",
    "Four comes after three.",
    "And the fifth line ends it.",
]


def test_reads_txt_srt_and_csv(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("one\n\n  two  \n", encoding="utf-8")
    assert read_lines(txt) == [("0001", "one"), ("0003", "two")]
    srt = tmp_path / "a.srt"
    srt.write_text(
        "1\n00:00:01,000 --> 00:00:02,000\nHello there\nfriend\n\n2\n"
        "00:00:03,000 --> 00:00:04,500\nSecond cue\n",
        encoding="utf-8",
    )
    assert read_lines(srt) == [("0001", "Hello there friend"), ("0002", "Second cue")]
    table = tmp_path / "a.csv"
    table.write_text("id,text\nintro/1,Welcome\nouter,Goodbye\n", encoding="utf-8")
    assert read_lines(table) == [("intro_1", "Welcome"), ("outer", "Goodbye")]


@pytest.fixture(scope="module")
def library_voice(demo_models_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("batch_cache")
    engine = CloneEngine.load(demo_models_root, EngineConfig(), cache_dir=cache, demo=True)
    voice = engine.voices.create_voice("Batch narrator", synthetic_voice(2.0, 16000), 16000, "a test voice")
    return cache, voice.id


def _command(demo_models_root, cache, voice, lines, out, *extra):
    return [
        sys.executable,
        "-m",
        "scripts.batch",
        "--voice",
        voice,
        "--input",
        str(lines),
        "--out",
        str(out),
        "--model-dir",
        str(demo_models_root / "absent"),
        "--demo-dir",
        str(demo_models_root),
        "--cache-dir",
        str(cache),
        "--max-new-tokens",
        "40",
        "--no-progress",
        *extra,
    ]


def _clips(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("0*.wav"))


def test_interrupted_batch_resumes_without_redoing_finished_lines(demo_models_root, library_voice, tmp_path):
    cache, voice = library_voice
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "clips"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = _command(demo_models_root, cache, voice, lines, out)
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while len(_clips(out)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()
    output = first.communicate()[0].decode(errors="replace")
    done = _clips(out)
    assert 2 <= len(done) < len(LINES), output
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in done}

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    clips = _clips(out)
    assert [p.name for p in clips] == [f"{i:04d}.wav" for i in range(1, 6)]
    for name, (data, mtime) in before.items():  # finished lines are not rendered again
        assert (out / name).read_bytes() == data and (out / name).stat().st_mtime_ns == mtime
    assert f"{len(before)} already done" in second.stdout
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert [manifest[p.stem]["text"] for p in clips] == LINES
    assert [manifest[p.stem]["seed"] for p in clips] == [0, 1, 2, 3, 4]
    assert not list(out.glob(".*.part"))
    import soundfile as sf

    joined, sr = sf.read(out / "joined.wav")
    lengths = [sf.info(p).frames for p in clips]
    assert sr == 24000 and len(joined) >= sum(lengths)


def test_unknown_voice_and_empty_input_get_clear_messages(demo_models_root, library_voice, tmp_path):
    cache, _ = library_voice
    lines = tmp_path / "lines.txt"
    lines.write_text("hello\n", encoding="utf-8")
    result = subprocess.run(
        _command(demo_models_root, cache, "no-such-voice", lines, tmp_path / "o"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "no-such-voice" in result.stderr and "Traceback" not in result.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    result = subprocess.run(
        _command(demo_models_root, cache, "x", empty, tmp_path / "o"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "no text to speak" in result.stderr
