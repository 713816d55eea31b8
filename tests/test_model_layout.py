"""model_layout: the real checkpoint layout as data, and the checks that name missing or broken files."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import model_layout
from model_layout import (
    DEMO_MARKER,
    PARTS,
    expected_files,
    find_model_root,
    has_real_models,
    is_demo_models,
    verify_layout,
)


def _tiny_onnx(path: Path) -> None:
    """A valid one-node ONNX model (Identity), standing in where the fixtures ship no ONNX file."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))


@pytest.fixture(scope="module")
def fixture_layout(reference_dir, tmp_path_factory) -> Path:
    """A complete model root assembled from the conformance fixtures' tiny model files."""
    root = tmp_path_factory.mktemp("fixture_layout")
    tokenizer = reference_dir / "tokenizer" / "tiny" / "Step-Audio-Tokenizer"
    shutil.copytree(tokenizer, root / "Step-Audio-Tokenizer")
    shutil.copytree(reference_dir / "llm" / "tiny", root / "Step-Audio-EditX")
    cosy = root / "Step-Audio-EditX" / "CosyVoice-300M-25Hz"
    shutil.copytree(next((reference_dir / "vocoder").glob("*/CosyVoice-300M-25Hz")), cosy)
    if not (cosy / "campplus.onnx").exists():
        _tiny_onnx(cosy / "campplus.onnx")
    (root / DEMO_MARKER).write_text("tiny\n")
    return root


@pytest.fixture
def layout_copy(fixture_layout, tmp_path) -> Path:
    """A private copy of the fixture layout that a test may break."""
    return Path(shutil.copytree(fixture_layout, tmp_path / "models"))


def _problem_for(problems: list[str], relative: str) -> str:
    hits = [p for p in problems if p.startswith(relative)]
    assert hits, f"no problem reported for {relative}: {problems}"
    return hits[0]


def test_fixture_layout_is_complete(fixture_layout):
    assert verify_layout(fixture_layout) == []
    assert is_demo_models(fixture_layout)


def test_demo_models_pass_verification(demo_models_root):
    assert verify_layout(demo_models_root) == []
    assert is_demo_models(demo_models_root)
    assert not has_real_models(demo_models_root)


def test_every_expected_file_is_checked(layout_copy):
    # Removing any one required file is reported, by its path, and nothing else is.
    for relative in expected_files():
        path = layout_copy / relative
        data = path.read_bytes()
        path.unlink()
        problems = verify_layout(layout_copy)
        assert len(problems) == 1, problems
        assert "missing" in _problem_for(problems, relative)
        path.write_bytes(data)
    assert verify_layout(layout_copy) == []


def test_empty_file_is_named(layout_copy):
    target = "Step-Audio-EditX/CosyVoice-300M-25Hz/hift.pt"
    (layout_copy / target).write_bytes(b"")
    assert "empty (0 bytes)" in _problem_for(verify_layout(layout_copy), target)


@pytest.mark.parametrize(
    "relative",
    [
        "Step-Audio-EditX/model-00001.safetensors",
        "Step-Audio-Tokenizer/linguistic_tokenizer.npy",
        "Step-Audio-Tokenizer/speech_tokenizer_v1.onnx",
        "Step-Audio-EditX/CosyVoice-300M-25Hz/flow.pt",
        "Step-Audio-Tokenizer/dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/model.pt",
        "Step-Audio-EditX/tokenizer.model",
    ],
)
def test_truncated_file_is_named(layout_copy, relative):
    path = layout_copy / relative
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size * 2 // 3)
    problem = _problem_for(verify_layout(layout_copy), relative)
    assert "truncated" in problem


def test_trailing_bytes_after_safetensors_data_are_reported(layout_copy):
    path = layout_copy / "Step-Audio-EditX" / "model-00001.safetensors"
    with path.open("ab") as f:
        f.write(b"\0" * 10)
    assert "10 unexpected bytes" in _problem_for(verify_layout(layout_copy), "Step-Audio-EditX/model-00001")


def test_git_lfs_pointer_is_recognised(layout_copy):
    target = "Step-Audio-EditX/CosyVoice-300M-25Hz/flow.pt"
    (layout_copy / target).write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 615274252\n"
    )
    assert "Git LFS pointer" in _problem_for(verify_layout(layout_copy), target)


def test_invalid_json_and_yaml_are_named(layout_copy):
    (layout_copy / "Step-Audio-EditX" / "config.json").write_text('{"model_type": "step1",')
    (layout_copy / "Step-Audio-EditX" / "CosyVoice-300M-25Hz" / "cosyvoice.yaml").write_text("a: [1, 2\n")
    problems = verify_layout(layout_copy)
    assert "not valid JSON" in _problem_for(problems, "Step-Audio-EditX/config.json")
    assert "not valid YAML" in _problem_for(problems, "Step-Audio-EditX/CosyVoice-300M-25Hz/cosyvoice.yaml")


def test_shard_named_by_the_index_must_exist(layout_copy):
    (layout_copy / "Step-Audio-EditX" / "model-00001.safetensors").unlink()
    problems = verify_layout(layout_copy)
    assert "missing" in _problem_for(problems, "Step-Audio-EditX/model-00001.safetensors")


def test_missing_part_folder_names_its_files(layout_copy):
    shutil.rmtree(layout_copy / "Step-Audio-Tokenizer")
    problems = verify_layout(layout_copy, parts=("tokenizer",))
    assert len(problems) == 1
    assert problems[0].startswith("Step-Audio-Tokenizer/: missing folder")
    assert "speech_tokenizer_v1.onnx" in problems[0] and "stepfun-ai/Step-Audio-Tokenizer" in problems[0]
    assert verify_layout(layout_copy, parts=("llm", "vocoder")) == []


def test_optional_awq_part(layout_copy):
    assert "awq" not in model_layout.DEFAULT_PARTS
    problems = verify_layout(layout_copy, parts=("awq",))
    assert problems and problems[0].startswith("Step-Audio-EditX-AWQ-4bit/: missing folder")
    awq = layout_copy / "Step-Audio-EditX-AWQ-4bit"
    awq.mkdir()
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(layout_copy / "Step-Audio-EditX" / name, awq / name)
    no_weights = ["Step-Audio-EditX-AWQ-4bit/: no *.safetensors weights"]
    assert verify_layout(layout_copy, parts=("awq",)) == no_weights
    shutil.copy(layout_copy / "Step-Audio-EditX" / "model-00001.safetensors", awq / "model.safetensors")
    assert verify_layout(layout_copy, parts=("awq",)) == []


def test_real_checkpoints_must_reach_size_floors(layout_copy):
    # Without the demo marker the tiny files read as an incomplete real download, each one named.
    (layout_copy / DEMO_MARKER).unlink()
    problems = verify_layout(layout_copy)
    assert "at least 100.0 MB" in _problem_for(problems, "Step-Audio-EditX/CosyVoice-300M-25Hz/flow.pt")
    assert "LLM weights total" in _problem_for(problems, "Step-Audio-EditX/:")
    assert not has_real_models(layout_copy)


def test_has_real_models_when_floors_are_met(layout_copy, monkeypatch):
    (layout_copy / DEMO_MARKER).unlink()
    relaxed = {
        name: dataclasses.replace(
            part,
            files=tuple(dataclasses.replace(f, min_real_bytes=1) for f in part.files),
            weights=part.weights and dataclasses.replace(part.weights, min_real_total_bytes=1),
        )
        for name, part in PARTS.items()
    }
    monkeypatch.setattr(model_layout, "PARTS", relaxed)
    assert has_real_models(layout_copy)
    (layout_copy / "Step-Audio-EditX" / "tokenizer.model").unlink()
    assert not has_real_models(layout_copy)


def test_find_model_root(layout_copy, tmp_path):
    root = layout_copy.resolve()
    assert find_model_root(layout_copy) == root
    assert find_model_root(layout_copy / "Step-Audio-EditX") == root
    assert find_model_root(layout_copy / "Step-Audio-Tokenizer") == root
    assert find_model_root(layout_copy / "Step-Audio-EditX" / "CosyVoice-300M-25Hz") == root
    assert find_model_root(tmp_path) == root  # the root one level down
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_model_root(empty) is None
    assert find_model_root(tmp_path / "does-not-exist") is None
    assert find_model_root(None) is None


def test_missing_root_is_reported(tmp_path):
    problems = verify_layout(tmp_path / "nowhere")
    assert problems == [f"{tmp_path / 'nowhere'}: model folder does not exist"]
    assert not has_real_models(tmp_path / "nowhere")


def test_unknown_part_is_an_error(fixture_layout):
    with pytest.raises(ValueError, match="unknown model part"):
        verify_layout(fixture_layout, parts=("vocoders",))


def test_demo_model_files_are_readable_by_other_users(demo_models_root):
    # The image runs as uid 10001 over host-mounted models: nothing the writer makes may be private.
    private = [p for p in demo_models_root.rglob("*") if p.is_file() and not p.stat().st_mode & 0o004]
    assert private == []


def test_a_model_file_the_app_user_cannot_read_is_named_with_the_fix(demo_models_root):
    import os
    import tempfile

    # A folder other users may enter (pytest's own tmp folders are private to their owner).
    root = Path(tempfile.mkdtemp(prefix="editx-unreadable-"))
    try:
        root.chmod(0o755)
        copy = root / "models"
        shutil.copytree(demo_models_root, copy)
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shard = copy / "Step-Audio-EditX" / "model-00001.safetensors"
        shard.chmod(0o600)
        if os.geteuid() != 0:
            shard.chmod(0o000)
            problems = verify_layout(copy)
        else:  # root reads every file: check from a forked child running as "nobody", like uid 10001
            problems = _verify_as_user(copy, 65534)
        line = _problem_for(problems, "Step-Audio-EditX/model-00001.safetensors")
        assert "not readable by this user" in line and "chmod" in line
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _verify_as_user(root: Path, uid: int) -> list[str]:
    """verify_layout(root) in a forked child whose real and effective uid are ``uid``."""
    import json
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to the uid, verify, report through the pipe, exit without cleanup
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.write(write, json.dumps(verify_layout(root)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)
