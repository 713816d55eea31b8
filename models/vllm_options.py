"""What the Step1 LLM asks of vLLM, in either mode: engine settings, one request, the plugin, errors.

    options = VLLMEngineOptions(dtype="float32", max_model_len=4096)
    options.engine_kwargs(model_dir)   # AsyncEngineArgs(**...) for the in-process engine (vllm_inprocess)
    options.cli_args(model_dir)        # the same as server flags (scripts/vllm_server.py)
    options.environment()              # variables vLLM reads at start-up

``VLLMRequest`` is one generation request in backend-neutral form, the unit both transports
(``models/vllm_remote.py``, ``models/vllm_inprocess.py``) take. The reference's repetition-aware
rule runs as the ``editx_vllm_step1`` plugin's logits processor (patches/vllm_step1), switched on per
request by ``REPETITION_XARGS``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errors import BackendUnavailable
from models.generation import REPETITION_THRESHOLD, REPETITION_WINDOW

# The plugin's logits processor (patches/vllm_step1) and the per-request switch it reads.
REPETITION_PROCESSOR = "editx_vllm_step1.repetition:RepetitionAwareLogitsProcessor"
REPETITION_XARGS = {"repetition_window": REPETITION_WINDOW, "repetition_threshold": REPETITION_THRESHOLD}
# The checkpoint's lm_head is not the embedding; vLLM's Step1 ties them when config.json lacks the key.
HF_OVERRIDES = {"tie_word_embeddings": False}
DEFAULT_MODEL_NAME = "step-audio-editx"


class VLLMBackendError(BackendUnavailable):
    """The vLLM backend failed: the server refused the request, or the engine stopped."""


@dataclass
class VLLMEngineOptions:
    """How a vLLM engine is started, in-process or as a server (``scripts/vllm_server.py``).

    ``dtype`` "auto" is the checkpoint's bf16; use "float32" on CPU (the numbers then match the native
    backend's fp32). ``max_model_len`` caps prompt + generated tokens (the app's cap is 8192).
    ``quantization`` names a vLLM method ("awq", "compressed-tensors", ...) for a pre-quantized
    folder; None reads it from config.json. ``cpu_kvcache_space_gb`` sets VLLM_CPU_KVCACHE_SPACE (CPU
    builds only). ``repetition_rule`` loads the plugin's logits processor.
    """

    dtype: str = "auto"
    max_model_len: int = 8192
    max_num_seqs: int = 16
    gpu_memory_utilization: float = 0.9
    quantization: str | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    repetition_rule: bool = True
    cpu_kvcache_space_gb: float | None = None
    served_model_name: str = DEFAULT_MODEL_NAME
    extra: dict[str, Any] = field(default_factory=dict)  # any other AsyncEngineArgs field

    def engine_kwargs(self, model_dir: Path) -> dict[str, Any]:
        """Keyword arguments of vllm's ``AsyncEngineArgs`` for the Step1 folder ``model_dir``."""
        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "served_model_name": [self.served_model_name],
            "skip_tokenizer_init": True,
            "hf_overrides": dict(HF_OVERRIDES),
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "quantization": self.quantization,
            "enforce_eager": self.enforce_eager,
            "tensor_parallel_size": self.tensor_parallel_size,
        }
        if self.repetition_rule:
            kwargs["logits_processors"] = [REPETITION_PROCESSOR]
        kwargs.update(self.extra)
        return kwargs

    def cli_args(self, model_dir: Path) -> list[str]:
        """The same settings as ``vllm serve`` / ``vllm.entrypoints.openai.api_server`` flags."""
        args = [
            "--model",
            str(model_dir),
            "--served-model-name",
            self.served_model_name,
            "--skip-tokenizer-init",
            "--hf-overrides",
            json.dumps(HF_OVERRIDES),
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--gpu-memory-utilization",
            str(self.gpu_memory_utilization),
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
        ]
        if self.quantization:
            args += ["--quantization", self.quantization]
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.repetition_rule:
            args += ["--logits-processors", REPETITION_PROCESSOR]
        for key, value in self.extra.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is not False and value is not None:
                args += [flag, value if isinstance(value, str) else json.dumps(value)]
        return args

    def environment(self) -> dict[str, str]:
        """Variables vLLM reads at start-up (set them before the engine or server starts).

        Usage statistics and hub look-ups are turned off (the model is a local folder). The
        repetition processor implements vLLM's V1 model-runner interface (the runner vLLM uses on CPU),
        so the V1 runner is asked for where the V2 one would be the default (GPUs).
        """
        env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
        if self.repetition_rule:
            env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        if self.cpu_kvcache_space_gb is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = f"{self.cpu_kvcache_space_gb:g}"
        return env


@dataclass
class VLLMRequest:
    """One generation request in backend-neutral form."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    eos_id: int
    repetition_rule: bool
