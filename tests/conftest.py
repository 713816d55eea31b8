"""Shared fixtures: the reference fixture folder and demo models written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from demo import write_demo_models

ROOT = Path(__file__).resolve().parents[1]


FIXTURES = ROOT / "tests" / "fixtures" / "reference"  # the repository's own copy of the reference set


def reference_root() -> Path:
    """Conformance fixture root: $EDITX_REFERENCE_DIR (another set in the same format), default the
    repository's tests/fixtures/reference."""
    return Path(os.environ.get("EDITX_REFERENCE_DIR") or FIXTURES).resolve()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    root = reference_root()
    if not root.is_dir():
        pytest.fail(f"reference fixtures not found at {root}; set EDITX_REFERENCE_DIR")
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """One demo model root per session; each part is written on first use."""
    return tmp_path_factory.mktemp("demo_models")


@pytest.fixture(scope="session")
def demo_tokenizer_root(demo_root) -> Path:
    """Root holding the demo ``Step-Audio-Tokenizer/``."""
    return write_demo_models(demo_root, ("tokenizer",))


@pytest.fixture(scope="session")
def demo_llm_root(demo_root) -> Path:
    """Root holding the demo ``Step-Audio-EditX/`` LLM files."""
    return write_demo_models(demo_root, ("llm",))


@pytest.fixture(scope="session")
def demo_vocoder_root(demo_root) -> Path:
    """Root holding the demo ``Step-Audio-EditX/CosyVoice-300M-25Hz/``."""
    return write_demo_models(demo_root, ("vocoder",))


@pytest.fixture(scope="session")
def demo_models_root(demo_root) -> Path:
    """Root holding every demo part (tokenizer, LLM, vocoder)."""
    return write_demo_models(demo_root)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: one torch thread avoids oversubscription on a shared 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- storage backends (tests/test_storage.py, tests/test_voices.py) -----------------------------


@pytest.fixture(scope="session")
def redis_server():
    """One throwaway redis-server for the session, on a free localhost port, in a temp folder."""
    from storage.local_redis import LocalRedisServer

    try:
        server = LocalRedisServer()
    except FileNotFoundError as exc:
        pytest.fail(f"{exc}; the Redis backend tests need it")
    server.start()
    yield server
    server.close()


@pytest.fixture(params=["disk", "redis"])
def store_factory(request, tmp_path):
    """``make(max_bytes=...)`` -> a new store object on one fresh location of the backend (a folder,
    or a key prefix of the session's Redis), as a new process would open it. ``make.location`` says
    where, for child processes: ("disk", folder) or ("redis", url, prefix)."""
    import uuid

    from storage.disk import DiskStore
    from storage.redis_store import RedisStore

    made = []
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        prefix = f"test-{uuid.uuid4().hex[:12]}:"
        location = ("redis", server.url, prefix)

        def make(max_bytes: int = 1 << 30):
            made.append(RedisStore(server.url, max_bytes, prefix=prefix))
            return made[-1]
    else:
        folder = tmp_path / "store"
        location = ("disk", str(folder))

        def make(max_bytes: int = 1 << 30):
            made.append(DiskStore(folder, max_bytes))
            return made[-1]

    make.backend = request.param
    make.location = location
    yield make
    for store in made:
        store.close()
