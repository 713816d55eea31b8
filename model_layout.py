"""The on-disk layout of the real checkpoints (DESIGN.md, "Real checkpoints") as data, and its checks.

One model root holds one folder per Hugging Face repo::

    <root>/Step-Audio-Tokenizer/        tokenizer part  (stepfun-ai/Step-Audio-Tokenizer)
    <root>/Step-Audio-EditX/            llm part        (stepfun-ai/Step-Audio-EditX)
    <root>/Step-Audio-EditX/CosyVoice-300M-25Hz/   vocoder part (same repo)
    <root>/Step-Audio-EditX-AWQ-4bit/   optional awq part (stepfun-ai/Step-Audio-EditX-AWQ-4bit)
    <root>/Step-Audio-EditX-bnb-4bit/   optional bnb part (a pre-quantized BnB NF4 save, made locally)

``verify_layout`` names every missing, empty, truncated or placeholder file (a Git LFS pointer
left by a clone without git-lfs is the common case). Each weight file's own header says how long
the file must be (safetensors, .npy, the zip directory of a torch checkpoint, the protobuf fields
of ONNX and SentencePiece models), so truncation is found without reading the weights. For real
checkpoints (no demo marker) each large file must also reach a conservative size floor derived
from the parameter counts in tests/fixtures/reference; demo models are tiny and skip those floors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from errors import ModelFilesError
from model_files import MB, file_problem, human_size

log = logging.getLogger(__name__)

# Written by scripts/make_demo_models.py at the root of the tiny random-weight models.
DEMO_MARKER = "EDITX_DEMO_MODELS"

TOKENIZER_FOLDER = "Step-Audio-Tokenizer"
LLM_FOLDER = "Step-Audio-EditX"
VOCODER_FOLDER = f"{LLM_FOLDER}/CosyVoice-300M-25Hz"
AWQ_FOLDER = "Step-Audio-EditX-AWQ-4bit"
BNB_FOLDER = "Step-Audio-EditX-bnb-4bit"
PARAFORMER_SUBDIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
PARAFORMER_FOLDER = f"{TOKENIZER_FOLDER}/{PARAFORMER_SUBDIR}"
# Files of the tokenizer part (paths relative to TOKENIZER_FOLDER / PARAFORMER_SUBDIR).
CENTROIDS_FILE = "linguistic_tokenizer.npy"
VQ06_ONNX_FILE = "speech_tokenizer_v1.onnx"
PARAFORMER_FILES = ("config.yaml", "model.pt", "am.mvn", "tokens.json", "configuration.json")
PARAFORMER_SEG_DICT = "seg_dict"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Vocoder part files (under VOCODER_FOLDER).
COSYVOICE_CONFIG_FILE = "cosyvoice.yaml"
FLOW_FILE = "flow.pt"
HIFT_FILE = "hift.pt"
SPEAKER_FILE = "campplus.onnx"

# LLM variants the native backend loads: "base" (the checkpoint's bf16 weights) and "bnb-4bit"
# (NF4 + double quantization, quantized while loading, or a pre-quantized save in BNB_FOLDER).
VARIANTS = ("base", "bnb-4bit")
# The vLLM backend serves "base" or "awq" (the published AWQ 4-bit checkpoint in AWQ_FOLDER).
VLLM_VARIANTS = ("base", "awq")
ALL_VARIANTS = ("base", "bnb-4bit", "awq")
LLM_BACKENDS = ("native", "vllm")
# how the native backend decodes (models/decode.py): auto is graphs on CUDA, else dynamic
DECODE_MODES = ("auto", "dynamic", "static", "graphs")
DOWNLOAD_HINT = "python scripts/download_models.py --out {root}"


@dataclass(frozen=True)
class FileSpec:
    """One required file: its path under the root, what it is, and how to sanity-check it.

    ``kind`` picks the format check (see ``_FORMAT_CHECKS``); ``min_real_bytes`` is a floor that
    only real checkpoints must reach (a conservative fraction of the size the parameter count
    implies, so a different dtype or re-save still passes but a stub or partial file does not).
    """

    path: str
    what: str
    kind: str = "bytes"
    min_real_bytes: int = 1


@dataclass(frozen=True)
class WeightsSpec:
    """Safetensors weights of an LLM folder: the shards named by the index, else every *.safetensors."""

    folder: str
    index_required: bool
    min_real_total_bytes: int


@dataclass(frozen=True)
class Part:
    """One model part: the folder it lives in, the repo it comes from, and the files the app reads."""

    name: str
    folder: str
    repo_id: str | None
    description: str
    files: tuple[FileSpec, ...]
    weights: WeightsSpec | None = None
    optional: bool = False


def _llm_files(folder: str, what: str) -> tuple[FileSpec, ...]:
    # configuration_step1.py / modeling_step1.py ship with the checkpoint but our own modeling code
    # is used, so they are not required here.
    return (
        FileSpec(f"{folder}/config.json", f"{what} config", "json"),
        FileSpec(f"{folder}/tokenizer.model", "SentencePiece text tokenizer", "protobuf:1", 100_000),
        FileSpec(f"{folder}/tokenizer_config.json", "text tokenizer config", "json"),
    )


# Step1 LLM: 3,529,706,496 bf16 parameters = 7.06 GB (tests/fixtures/reference/llm/STEP1_FACTS.md);
# 4-bit variants keep the embedding and head in bf16 (0.92 GB) and pack the rest (~1.5 GB).
_LLM_MIN_BYTES = 6_000 * MB
_LLM_4BIT_MIN_BYTES = 1_500 * MB

PARTS: dict[str, Part] = {
    "tokenizer": Part(
        name="tokenizer",
        folder=TOKENIZER_FOLDER,
        repo_id="stepfun-ai/Step-Audio-Tokenizer",
        description="dual-codebook audio tokenizer (Paraformer vq02 + ONNX vq06)",
        files=(
            FileSpec(f"{PARAFORMER_FOLDER}/{PARAFORMER_FILES[0]}", "Paraformer config", "yaml"),
            # Paraformer-large streaming, ~220 M fp32 parameters.
            FileSpec(f"{PARAFORMER_FOLDER}/{PARAFORMER_FILES[1]}", "Paraformer weights", "torch", 100 * MB),
            FileSpec(f"{PARAFORMER_FOLDER}/{PARAFORMER_FILES[2]}", "Paraformer feature normalisation (CMVN)"),
            FileSpec(f"{PARAFORMER_FOLDER}/{PARAFORMER_FILES[3]}", "Paraformer token list", "json"),
            FileSpec(f"{PARAFORMER_FOLDER}/{PARAFORMER_SEG_DICT}", "Paraformer segmentation dictionary"),
            FileSpec(f"{PARAFORMER_FOLDER}/{PARAFORMER_FILES[4]}", "FunASR model description", "json"),
            # 1024 x 512 float32 centroids = 2,097,152 data bytes.
            FileSpec(f"{TOKENIZER_FOLDER}/{CENTROIDS_FILE}", "vq02 centroids", "npy", 2_097_152),
            # Whisper-style encoder, ~118 M parameters.
            FileSpec(
                f"{TOKENIZER_FOLDER}/{VQ06_ONNX_FILE}", "vq06 semantic tokenizer", "protobuf:7", 100 * MB
            ),
        ),
    ),
    "llm": Part(
        name="llm",
        folder=LLM_FOLDER,
        repo_id="stepfun-ai/Step-Audio-EditX",
        description="Step1 audio LLM (base, bf16)",
        files=(
            *_llm_files(LLM_FOLDER, "Step1 LLM"),
            FileSpec(f"{LLM_FOLDER}/{SAFETENSORS_INDEX}", "weight shard index", "json"),
        ),
        weights=WeightsSpec(LLM_FOLDER, index_required=True, min_real_total_bytes=_LLM_MIN_BYTES),
    ),
    "vocoder": Part(
        name="vocoder",
        folder=VOCODER_FOLDER,
        repo_id="stepfun-ai/Step-Audio-EditX",
        description="CosyVoice flow + HiFT vocoder",
        files=(
            FileSpec(
                f"{VOCODER_FOLDER}/{COSYVOICE_CONFIG_FILE}", "vocoder hyperparameters (hyperpyyaml)", "yaml"
            ),
            # 153.8 M flow and 20.8 M HiFT floats (tests/fixtures/reference/vocoder/manifest_real.json).
            FileSpec(f"{VOCODER_FOLDER}/{FLOW_FILE}", "flow-matching decoder weights", "torch", 100 * MB),
            FileSpec(f"{VOCODER_FOLDER}/{HIFT_FILE}", "HiFT vocoder weights", "torch", 20 * MB),
            # CAM++, ~7 M parameters.
            FileSpec(f"{VOCODER_FOLDER}/{SPEAKER_FILE}", "CAM++ speaker embedding", "protobuf:7", 5 * MB),
        ),
    ),
    "awq": Part(
        name="awq",
        folder=AWQ_FOLDER,
        repo_id="stepfun-ai/Step-Audio-EditX-AWQ-4bit",
        description="pre-quantized AWQ 4-bit Step1 LLM (optional)",
        files=_llm_files(AWQ_FOLDER, "AWQ 4-bit LLM"),
        weights=WeightsSpec(AWQ_FOLDER, index_required=False, min_real_total_bytes=_LLM_4BIT_MIN_BYTES),
        optional=True,
    ),
    "bnb": Part(
        name="bnb",
        folder=BNB_FOLDER,
        repo_id=None,  # no official repo: a BnB NF4 save of the base LLM
        description="pre-quantized BnB NF4 Step1 LLM (optional; bnb-4bit can also quantize the base)",
        files=_llm_files(BNB_FOLDER, "BnB 4-bit LLM"),
        weights=WeightsSpec(BNB_FOLDER, index_required=False, min_real_total_bytes=_LLM_4BIT_MIN_BYTES),
        optional=True,
    ),
}
DEFAULT_PARTS: tuple[str, ...] = ("tokenizer", "llm", "vocoder")
ROOT_FOLDERS: tuple[str, ...] = (TOKENIZER_FOLDER, LLM_FOLDER, AWQ_FOLDER, BNB_FOLDER)


# --- public API -------------------------------------------------------------------------------------


def is_demo_models(root: Path) -> bool:
    """True when ``root`` holds the tiny random-weight demo models (scripts/make_demo_models.py)."""
    return (Path(root) / DEMO_MARKER).is_file()


def expected_files(parts: Iterable[str] = DEFAULT_PARTS) -> list[str]:
    """Paths (relative to the model root) of the fixed-name files the given parts need."""
    return [spec.path for name in parts for spec in _part(name).files]


def verify_layout(
    root: Path | str, parts: Iterable[str] = DEFAULT_PARTS, real: bool | None = None
) -> list[str]:
    """Check the files the app needs under ``root``; return one line per problem (empty when complete).

    Each line starts with the path relative to ``root``. ``real`` applies the real-checkpoint size
    floors; by default they apply unless ``root`` carries the demo marker.
    """
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: model folder does not exist"]
    if real is None:
        real = not is_demo_models(root)
    problems: list[str] = []
    for name in parts:
        part = _part(name)
        if not (root / part.folder).is_dir():
            names = ", ".join(Path(s.path).name for s in part.files)
            hint = f" (download {part.repo_id})" if part.repo_id else ""
            problems.append(f"{part.folder}/: missing folder of the {part.description}{hint}; needs {names}")
            continue
        for spec in part.files:
            problem = file_problem(root / spec.path, spec.kind, spec.min_real_bytes if real else 1)
            if problem:
                problems.append(f"{spec.path}: {problem} ({spec.what})")
        if part.weights:
            problems.extend(_weights_problems(root, part.weights, real))
    return problems


def find_model_root(path: Path | str | None) -> Path | None:
    """The model root for a path a person gave: the root itself, a part folder inside it, or a folder
    holding the root one level down (e.g. ``/model/checkpoints``). None when no model folder is found."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.is_dir():
        return None
    path = path.resolve()
    if _holds_parts(path):
        return path
    if path.name == Path(VOCODER_FOLDER).name and path.parent.name == LLM_FOLDER:
        return path.parent.parent
    if path.name in ROOT_FOLDERS:
        return path.parent
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        if _holds_parts(child):
            return child
    return None


@dataclass(frozen=True)
class ModelRoot:
    """A model root folder and whether it holds the untrained demo models."""

    path: Path
    demo: bool


def locate_models(
    model_dir: Path | str,
    demo_dir: Path | str | None = None,
    demo_writer: Callable[[Path], object] | None = None,
) -> ModelRoot:
    """The root to load: ``model_dir`` (or the root found from it) when it holds every required file.

    Otherwise, with a ``demo_writer`` (``demo.write_demo_models``) and a ``demo_dir``, the tiny
    demo models are written once into ``demo_dir`` and used (the caller says so in the log and the
    page); without them a ``ModelFilesError`` names the missing files and how to get them.
    """
    model_dir = find_model_root(model_dir) or Path(model_dir)
    missing = verify_layout(model_dir)
    if not missing:
        return ModelRoot(model_dir, is_demo_models(model_dir))
    shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
    if demo_writer is None or demo_dir is None:
        raise ModelFilesError(
            f"model files missing or unusable under {model_dir}: {shown}. Download them "
            f"with `{DOWNLOAD_HINT.format(root=model_dir)}` or pass --model-dir to the "
            "folder holding them."
        )
    log.warning(
        "no complete models under %s (%s); using the untrained demo models in %s (the output "
        "is noise; get the real ones with `%s`)",
        model_dir,
        shown,
        demo_dir,
        DOWNLOAD_HINT.format(root=model_dir),
    )
    demo_writer(Path(demo_dir))
    still = verify_layout(Path(demo_dir))
    if still:
        raise ModelFilesError(
            f"the demo models under {demo_dir} are incomplete ({'; '.join(still[:3])}); "
            "delete the folder so they are written again"
        )
    return ModelRoot(Path(demo_dir), True)


def llm_dir_for(root: Path | str, variant: str) -> Path:
    """Folder of the LLM ``variant``: a pre-quantized BnB save when present, else the base weights
    (quantized while loading)."""
    if variant == "bnb-4bit" and (Path(root) / BNB_FOLDER / "config.json").exists():
        return Path(root) / BNB_FOLDER
    if variant == "awq":
        return Path(root) / AWQ_FOLDER
    return Path(root) / LLM_FOLDER


def has_real_models(root: Path | str | None, parts: Iterable[str] = DEFAULT_PARTS) -> bool:
    """True when ``root`` holds complete, sound real checkpoints (not the demo models) for ``parts``."""
    if root is None or not Path(root).is_dir() or is_demo_models(Path(root)):
        return False
    return not verify_layout(root, parts, real=True)


# --- internals -------------------------------------------------------------------------------------


def _part(name: str) -> Part:
    if name not in PARTS:
        raise ValueError(f"unknown model part {name!r}; choose from {', '.join(PARTS)}")
    return PARTS[name]


def _holds_parts(path: Path) -> bool:
    return any((path / folder).is_dir() for folder in ROOT_FOLDERS)


def _weights_problems(root: Path, spec: WeightsSpec, real: bool) -> list[str]:
    folder = root / spec.folder
    index = folder / SAFETENSORS_INDEX
    shards: list[str]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return []  # the index itself is reported by its FileSpec (kind json) or is unusable here
        if not shards:
            return [f"{spec.folder}/{SAFETENSORS_INDEX}: lists no weight shards"]
    elif spec.index_required:
        return []  # already reported as a missing FileSpec
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
        if not shards:
            return [f"{spec.folder}/: no *.safetensors weights"]
    problems = []
    total = 0
    for shard in shards:
        path = folder / shard
        problem = file_problem(path, "safetensors", 1)
        if problem:
            problems.append(f"{spec.folder}/{shard}: {problem} (LLM weight shard)")
        else:
            total += path.stat().st_size
    if real and not problems and total < spec.min_real_total_bytes:
        problems.append(
            f"{spec.folder}/: LLM weights total {human_size(total)}, the real checkpoint has at "
            f"least {human_size(spec.min_real_total_bytes)} (incomplete download?)"
        )
    return problems
