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
from the parameter counts in shared/reference; demo models are tiny and skip those floors.
"""

from __future__ import annotations

import json
import mmap
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

# Written by scripts/make_demo_models.py at the root of the tiny random-weight models.
DEMO_MARKER = "EDITX_DEMO_MODELS"

TOKENIZER_FOLDER = "Step-Audio-Tokenizer"
LLM_FOLDER = "Step-Audio-EditX"
VOCODER_FOLDER = f"{LLM_FOLDER}/CosyVoice-300M-25Hz"
AWQ_FOLDER = "Step-Audio-EditX-AWQ-4bit"
BNB_FOLDER = "Step-Audio-EditX-bnb-4bit"
PARAFORMER_SUBDIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
PARAFORMER_FOLDER = f"{TOKENIZER_FOLDER}/{PARAFORMER_SUBDIR}"
SAFETENSORS_INDEX = "model.safetensors.index.json"

MB = 1_000_000
GIT_LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"


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


# Step1 LLM: 3,529,706,496 bf16 parameters = 7.06 GB (shared/reference/llm/STEP1_FACTS.md);
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
            FileSpec(f"{PARAFORMER_FOLDER}/config.yaml", "Paraformer config", "yaml"),
            # Paraformer-large streaming, ~220 M fp32 parameters.
            FileSpec(f"{PARAFORMER_FOLDER}/model.pt", "Paraformer weights", "torch", 100 * MB),
            FileSpec(f"{PARAFORMER_FOLDER}/am.mvn", "Paraformer feature normalisation (CMVN)"),
            FileSpec(f"{PARAFORMER_FOLDER}/tokens.json", "Paraformer token list", "json"),
            FileSpec(f"{PARAFORMER_FOLDER}/seg_dict", "Paraformer segmentation dictionary"),
            FileSpec(f"{PARAFORMER_FOLDER}/configuration.json", "FunASR model description", "json"),
            # 1024 x 512 float32 centroids = 2,097,152 data bytes.
            FileSpec(f"{TOKENIZER_FOLDER}/linguistic_tokenizer.npy", "vq02 centroids", "npy", 2_097_152),
            # Whisper-style encoder, ~118 M parameters.
            FileSpec(f"{TOKENIZER_FOLDER}/speech_tokenizer_v1.onnx", "vq06 semantic tokenizer", "protobuf:7",
                     100 * MB),
        ),
    ),
    "llm": Part(
        name="llm",
        folder=LLM_FOLDER,
        repo_id="stepfun-ai/Step-Audio-EditX",
        description="Step1 audio LLM (base, bf16)",
        files=(*_llm_files(LLM_FOLDER, "Step1 LLM"),
               FileSpec(f"{LLM_FOLDER}/{SAFETENSORS_INDEX}", "weight shard index", "json")),
        weights=WeightsSpec(LLM_FOLDER, index_required=True, min_real_total_bytes=_LLM_MIN_BYTES),
    ),
    "vocoder": Part(
        name="vocoder",
        folder=VOCODER_FOLDER,
        repo_id="stepfun-ai/Step-Audio-EditX",
        description="CosyVoice flow + HiFT vocoder",
        files=(
            FileSpec(f"{VOCODER_FOLDER}/cosyvoice.yaml", "vocoder hyperparameters (hyperpyyaml)", "yaml"),
            # 153.8 M flow and 20.8 M HiFT floats (shared/reference/vocoder/manifest_real.json).
            FileSpec(f"{VOCODER_FOLDER}/flow.pt", "flow-matching decoder weights", "torch", 100 * MB),
            FileSpec(f"{VOCODER_FOLDER}/hift.pt", "HiFT vocoder weights", "torch", 20 * MB),
            # CAM++, ~7 M parameters.
            FileSpec(f"{VOCODER_FOLDER}/campplus.onnx", "CAM++ speaker embedding", "protobuf:7", 5 * MB),
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


# --- format checks: each returns None when the file is sound, else what is wrong -------------------

def _check_json(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"is not valid JSON ({exc})"
    return None


class _TagTolerantLoader(yaml.SafeLoader):
    """SafeLoader that accepts hyperpyyaml tags (``!new:``, ``!name:``, ``!ref``) without running them."""


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _check_yaml(path: Path) -> str | None:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TagTolerantLoader)  # noqa: S506
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        return f"is not valid YAML ({str(exc).splitlines()[0]})"
    if not isinstance(data, dict):
        return "is not a YAML mapping"
    return None


def _check_npy(path: Path) -> str | None:
    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None  # format 3.0 (utf-8 header) has no public reader; the size floor still applies
        except ValueError as exc:
            return f"is not a .npy array ({exc})"
        if dtype.hasobject:
            return None
        expected = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return _length_problem(path, expected, f"its header ({shape} {dtype})")


def _check_safetensors(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "is truncated (no safetensors header)"
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, 100 * MB):
            return f"is truncated or not safetensors (header length {header_len} vs file {size} bytes)"
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "is not a safetensors file (header is not JSON)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return _length_problem(path, 8 + header_len + max(ends, default=0), "its safetensors header")


def _check_torch(path: Path) -> str | None:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic.startswith(b"\x80"):
        return None  # legacy (pre-1.6) pickle format: no length to check
    if magic != b"PK\x03\x04":
        return "is not a PyTorch checkpoint (neither zip nor pickle)"
    # torch.save writes a zip whose central directory sits at the very end: a cut file loses it.
    if not zipfile.is_zipfile(path):
        return "is truncated (the zip directory of the torch checkpoint is missing)"
    return None


def _read_varint(buf: mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("varint runs past the end")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _protobuf_fields(path: Path) -> set[int]:
    """Walk the top-level fields of a protobuf message file; raise ValueError if one runs past EOF."""
    fields: set[int] = set()
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos, end = 0, len(buf)
        while pos < end:
            key, pos = _read_varint(buf, pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ValueError("field number 0")
            if wire == 0:
                _, pos = _read_varint(buf, pos, end)
            elif wire == 1:
                pos += 8
            elif wire == 2:
                length, pos = _read_varint(buf, pos, end)
                pos += length
            elif wire == 5:
                pos += 4
            else:
                raise ValueError(f"unsupported wire type {wire}")
            if pos > end:
                raise ValueError(f"field {number} needs {pos - end} more bytes")
            fields.add(number)
    return fields


def _check_protobuf(path: Path, required_field: int) -> str | None:
    # ONNX ModelProto keeps the graph in field 7; a SentencePiece ModelProto its pieces in field 1.
    try:
        fields = _protobuf_fields(path)
    except ValueError as exc:
        return f"is truncated or not a protobuf model ({exc})"
    if required_field not in fields:
        return f"is not the expected protobuf model (top-level field {required_field} is absent)"
    return None


def _length_problem(path: Path, expected: int, source: str) -> str | None:
    size = path.stat().st_size
    if size < expected:
        return f"is truncated: {source} needs {expected} bytes, the file has {size}"
    if size > expected:
        return f"has {size - expected} unexpected bytes after the data {source} describes"
    return None


def _format_problem(path: Path, kind: str) -> str | None:
    if kind == "bytes":
        return None
    if kind.startswith("protobuf:"):
        return _check_protobuf(path, int(kind.split(":", 1)[1]))
    check = {"json": _check_json, "yaml": _check_yaml, "npy": _check_npy,
             "safetensors": _check_safetensors, "torch": _check_torch}[kind]
    return check(path)


# --- public API -------------------------------------------------------------------------------------

def is_demo_models(root: Path) -> bool:
    """True when ``root`` holds the tiny random-weight demo models (scripts/make_demo_models.py)."""
    return (Path(root) / DEMO_MARKER).is_file()


def expected_files(parts: Iterable[str] = DEFAULT_PARTS) -> list[str]:
    """Paths (relative to the model root) of the fixed-name files the given parts need."""
    return [spec.path for name in parts for spec in _part(name).files]


def verify_layout(root: Path | str, parts: Iterable[str] = DEFAULT_PARTS,
                  real: bool | None = None) -> list[str]:
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
            problem = _file_problem(root / spec.path, spec.kind, spec.min_real_bytes if real else 1)
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


def _file_problem(path: Path, kind: str, min_bytes: int) -> str | None:
    if not path.exists():
        return "missing"
    if not path.is_file():
        return "is not a file"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    if size < 1024:
        with path.open("rb") as f:
            if f.read(len(GIT_LFS_POINTER_PREFIX)) == GIT_LFS_POINTER_PREFIX:
                return "is a Git LFS pointer, not the file (run `git lfs pull` or scripts/download_models.py)"
    if size < min_bytes:
        return (f"is {_human(size)}, the real checkpoint file is at least {_human(min_bytes)} "
                "(incomplete download?)")
    return _format_problem(path, kind)


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
        problem = _file_problem(path, "safetensors", 1)
        if problem:
            problems.append(f"{spec.folder}/{shard}: {problem} (LLM weight shard)")
        else:
            total += path.stat().st_size
    if real and not problems and total < spec.min_real_total_bytes:
        problems.append(f"{spec.folder}/: LLM weights total {_human(total)}, the real checkpoint has at "
                        f"least {_human(spec.min_real_total_bytes)} (incomplete download?)")
    return problems


def _human(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
