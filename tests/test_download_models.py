"""scripts/download_models.py: download placement, resume, verification and --verify, all offline.

huggingface_hub.snapshot_download is replaced by a copy from the demo models, so the real code path
(repos, arguments, folder placement, verification, exit codes) runs without the network.
"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import huggingface_hub
import pytest

from model_layout import DEMO_MARKER, expected_files
from scripts import download_models
from scripts.download_models import download_models as download
from scripts.download_models import main, plan


class FakeHub:
    """Stands in for a hub: serves each repo from a local folder, like snapshot_download into local_dir."""

    def __init__(self, sources: dict[str, Path], fail_once: str | None = None):
        self.sources = sources
        self.calls: list[dict] = []
        self.fail_once = fail_once

    def __call__(self, repo_id, *, local_dir, **kwargs):
        self.calls.append({"repo_id": repo_id, "local_dir": Path(local_dir), **kwargs})
        source = self.sources[repo_id]
        local_dir = Path(local_dir)
        files = sorted(p for p in source.rglob("*") if p.is_file())
        for index, path in enumerate(files):
            target = local_dir / path.relative_to(source)
            if target.exists() and target.stat().st_size == path.stat().st_size:
                continue  # already complete: a resumed download skips it
            if repo_id == self.fail_once and index == len(files) // 2:
                self.fail_once = None
                raise ConnectionError("connection reset by peer")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        return str(local_dir)


@pytest.fixture
def hub_sources(demo_models_root) -> dict[str, Path]:
    return {
        "stepfun-ai/Step-Audio-Tokenizer": demo_models_root / "Step-Audio-Tokenizer",
        "stepfun-ai/Step-Audio-EditX": demo_models_root / "Step-Audio-EditX",
    }


@pytest.fixture
def demo_out(tmp_path) -> Path:
    # The served files are the tiny demo models: the marker says so, so no real-size floors apply.
    out = tmp_path / "checkpoints"
    out.mkdir()
    (out / DEMO_MARKER).write_text("demo\n")
    return out


def test_plan_groups_parts_by_repo():
    repos = {r.repo_id: r for r in plan()}
    assert set(repos) == {"stepfun-ai/Step-Audio-Tokenizer", "stepfun-ai/Step-Audio-EditX"}
    assert repos["stepfun-ai/Step-Audio-EditX"].folder == "Step-Audio-EditX"
    assert set(repos["stepfun-ai/Step-Audio-EditX"].parts) == {"llm", "vocoder"}
    awq = {r.repo_id: r for r in plan(awq=True)}["stepfun-ai/Step-Audio-EditX-AWQ-4bit"]
    assert awq.folder == "Step-Audio-EditX-AWQ-4bit" and awq.parts == ("awq",)


def test_download_places_repos_in_the_layout(monkeypatch, hub_sources, demo_out):
    hub = FakeHub(hub_sources)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert download(demo_out, revision="v1", max_workers=3) == []
    assert {c["repo_id"] for c in hub.calls} == set(hub_sources)
    for call in hub.calls:
        assert call["local_dir"] == demo_out / call["repo_id"].split("/")[1]
        assert call["force_download"] is False  # never throw away what is already there
        assert call["revision"] == "v1" and call["max_workers"] == 3
    for relative in expected_files():
        assert (demo_out / relative).is_file()


def test_interrupted_download_resumes(monkeypatch, hub_sources, demo_out):
    hub = FakeHub(hub_sources, fail_once="stepfun-ai/Step-Audio-EditX")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(RuntimeError, match="Step-Audio-EditX failed .*run the same command again"):
        download(demo_out)
    assert main(["--verify", str(demo_out)]) == 1  # half a repo is named as incomplete
    assert main(["--out", str(demo_out)]) == 0  # the rerun fills in the rest
    assert [c["repo_id"] for c in hub.calls].count("stepfun-ai/Step-Audio-EditX") == 2


def test_download_of_tiny_files_fails_real_verification(monkeypatch, hub_sources, tmp_path):
    # Without the demo marker the result must look like a real download, and tiny files do not.
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(hub_sources))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    problems = download(tmp_path / "real")
    assert any(p.startswith("Step-Audio-EditX/CosyVoice-300M-25Hz/flow.pt") for p in problems)
    assert main(["--out", str(tmp_path / "real")]) == 1


def test_offline_mode_is_explained(monkeypatch, demo_out, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--out", str(demo_out)]) == 2
    assert "HF_HUB_OFFLINE" in caplog.text


def test_modelscope_source_uses_the_same_layout(monkeypatch, hub_sources, demo_out):
    hub = FakeHub(hub_sources)
    fake = types.ModuleType("modelscope")
    fake.snapshot_download = lambda model_id, revision=None, local_dir=None, max_workers=None: hub(
        model_id, local_dir=local_dir, revision=revision, max_workers=max_workers
    )
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    assert download(demo_out, source="modelscope") == []
    assert {c["local_dir"].name for c in hub.calls} == {"Step-Audio-Tokenizer", "Step-Audio-EditX"}


def test_verify_passes_on_demo_models(demo_models_root):
    assert main(["--verify", str(demo_models_root)]) == 0


def test_verify_names_removed_and_truncated_files(demo_models_root, tmp_path, caplog):
    broken = Path(shutil.copytree(demo_models_root, tmp_path / "broken"))
    removed = "Step-Audio-EditX/CosyVoice-300M-25Hz/campplus.onnx"
    emptied = "Step-Audio-Tokenizer/linguistic_tokenizer.npy"
    (broken / removed).unlink()
    (broken / emptied).write_bytes(b"")
    assert main(["--verify", str(broken)]) == 1
    assert f"{removed}: missing" in caplog.text
    assert f"{emptied}: is empty (0 bytes)" in caplog.text


def test_verify_with_awq_requires_the_awq_folder(demo_models_root, caplog):
    assert main(["--verify", str(demo_models_root), "--awq"]) == 1
    assert "Step-Audio-EditX-AWQ-4bit/: missing folder" in caplog.text


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        download_models.download_models(tmp_path, source="ftp")
