"""The layer rule, checked on the source: entry/UI/API -> engine -> stages -> shared helpers.

A module may import modules of its own layer or of the layers below it, never above. Imports
inside functions count too. Every project module must be placed in a layer here, so a new file
has to be classified (and the rule applies to it) before the suite passes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "tests", "demo_models", "checkpoints", "cache", "artifacts", "examples", ".git"}

# layer -> module-name prefixes ("pkg." covers the package); lower number = lower layer
LAYERS: dict[int, tuple[str, ...]] = {
    0: (
        "errors",
        "lru",
        "audio_prep",
        "audio_read",
        "audio_resample",
        "audio_join",
        "audio_formats",
        "text_split",
        "kaldi_fbank",
        "model_files",
        "model_layout",
        "prompt_cache",
        "patches",
        "storage",
        "voices",
        "models.device",
        "models.audio_tokens",
        "wav_info",
        "prefetch",
    ),
    1: ("tokenizer", "models", "scoring", "preflight"),
    2: (
        "engine",
        "synthesis",
        "reports",
        "render",
        "takes",
        "jobs",
        "llm_registry",
        "voice_prompts",
        "outputs",
        "demo",
        "provenance",
    ),
    3: ("app", "server", "settings", "ui", "api", "scripts"),
}
NAMES = {0: "helpers", 1: "stages", 2: "engine", 3: "entry/UI/API"}


def project_modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP_DIRS or any(part.startswith(".") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = project_modules()
TOP_LEVEL = {name.split(".")[0] for name in MODULES}


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return best


def imports_of(path: Path, module: str) -> set[str]:
    """Project modules imported anywhere in ``path`` (absolute and relative imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in TOP_LEVEL and name != module:
                found.add(name)
    return found


def test_every_module_has_a_layer():
    assert MODULES, "no project modules found"
    for name in MODULES:
        layer_of(name)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = layer_of(module)
    upward = sorted(
        f"{name} ({NAMES[layer_of(name)]})"
        for name in imports_of(MODULES[module], module)
        if layer_of(name) > mine
    )
    assert not upward, f"{module} ({NAMES[mine]}) imports from a higher layer: {upward}"


def test_models_never_import_top_level_modules_that_import_models():
    for module, path in MODULES.items():
        if not module.startswith("models"):
            continue
        for name in imports_of(path, module):
            if name.startswith("models"):
                continue
            back = [m for m in imports_of(MODULES[name], name) if m.startswith("models")]
            assert not back, f"{module} imports {name}, which imports {back}: a cycle through models/"


def test_nothing_inserts_into_sys_path():
    offenders = [name for name, path in MODULES.items() if "sys.path.insert" in path.read_text()]
    assert offenders == []
