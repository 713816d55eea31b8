"""Command-line flags with EDITX_* environment fallbacks (settings.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from settings import Settings, build_parser, env_name, parse_settings


def test_defaults_without_flags_or_environment():
    s = parse_settings([], environ={})
    assert s == Settings()
    assert s.model_dir == Path("checkpoints") and s.cache_dir == Path("cache/funasr")
    assert s.host == "127.0.0.1" and s.port == 7860 and not s.share
    assert s.auto_transcribe and s.warmup and s.allow_demo and s.concurrency == 1
    assert s.cache_max_bytes == 1024 * 1024 * 1024


def test_environment_fills_in_and_flags_win():
    env = {
        "EDITX_MODEL_DIR": "/model",
        "EDITX_HOST": "0.0.0.0",
        "EDITX_PORT": "9000",
        "EDITX_CACHE_MAX_MB": "64",
        "EDITX_ORT_THREADS": "3",
        "EDITX_SHARE": "yes",
        "EDITX_NO_AUTO_TRANSCRIBE": "1",
        "EDITX_MAX_REFERENCE_SECONDS": "12.5",
    }
    s = parse_settings([], environ=env)
    assert s.model_dir == Path("/model") and s.host == "0.0.0.0" and s.port == 9000
    assert s.cache_max_mb == 64 and s.ort_threads == 3 and s.share and not s.auto_transcribe
    assert s.max_reference_seconds == 12.5
    s = parse_settings(["--port", "8000", "--model-dir", "here", "--variant", "bnb-4bit"], environ=env)
    assert s.port == 8000 and s.model_dir == Path("here") and s.variant == "bnb-4bit"


def test_switches():
    s = parse_settings(["--share", "--no-auto-transcribe", "--no-warmup", "--no-demo"], environ={})
    assert s.share and not s.auto_transcribe and not s.warmup and not s.allow_demo
    assert parse_settings([], environ={"EDITX_NO_WARMUP": "false"}).warmup


def test_scores_are_on_unless_switched_off():
    assert parse_settings([], environ={}).scores
    assert not parse_settings(["--no-scores"], environ={}).scores
    assert not parse_settings([], environ={"EDITX_NO_SCORES": "1"}).scores


def test_cache_dir_none_means_memory_only():
    assert parse_settings(["--cache-dir", "none"], environ={}).cache_dir is None
    assert parse_settings([], environ={"EDITX_CACHE_DIR": "none"}).cache_dir is None


@pytest.mark.parametrize(
    "argv, env",
    [
        (["--variant", "fp8"], {}),
        (["--port", "0"], {}),
        (["--port", "seven"], {}),
        (["--dtype", "int3"], {}),
        (["--llm-decode", "fast"], {}),
        (["--max-text-chars", "0"], {}),
        (["--ort-threads", "0"], {}),
        ([], {"EDITX_SHARE": "maybe"}),
        ([], {"EDITX_PORT": "abc"}),
    ],
)
def test_bad_values_stop_with_a_message(argv, env):
    with pytest.raises(SystemExit) as info:
        parse_settings(argv, environ=env)
    # argparse exits with 2 after printing the problem; a bad environment value exits with its message
    assert info.value.code == 2 or "EDITX_" in str(info.value.code)


def test_help_lists_every_flag_with_its_environment_variable():
    text = build_parser({}).format_help()
    for flag in (
        "--model-dir",
        "--variant",
        "--device",
        "--dtype",
        "--llm-decode",
        "--cache-dir",
        "--cache-max-entries",
        "--cache-max-mb",
        "--ort-threads",
        "--host",
        "--port",
        "--share",
        "--no-auto-transcribe",
        "--max-text-chars",
        "--max-reference-seconds",
        "--demo-dir",
    ):
        assert flag in text
        assert env_name(flag) in text
    assert env_name("--cache-max-mb") == "EDITX_CACHE_MAX_MB"


@pytest.mark.parametrize("text, mib", [("0.5", 0.5), ("1.25", 1.25), ("2048", 2048.0)])
def test_cache_max_mb_takes_fractions_from_the_flag_and_the_environment(text, mib):
    for s in (
        parse_settings(["--cache-max-mb", text], environ={}),
        parse_settings([], environ={"EDITX_CACHE_MAX_MB": text}),
    ):
        assert s.cache_max_mb == mib and s.cache_max_bytes == int(mib * 1024 * 1024)


@pytest.mark.parametrize("text", ["0", "-1", "-0.5", "nan"])
def test_cache_max_mb_must_be_positive(text, capsys):
    with pytest.raises(SystemExit) as info:
        parse_settings(["--cache-max-mb", text], environ={})
    assert info.value.code == 2 and "--cache-max-mb must be positive" in capsys.readouterr().err
