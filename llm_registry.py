"""The engine's LLMs: one per (backend, variant), loaded at start-up or on first use.

    llms = LLMRegistry({"base": llm}, config, model_root, loader=native_loader(model_root, config))
    llm = llms.get("bnb-4bit")          # a native variant is loaded the first time it is asked for
    llms.available_variants()           # what the page and /v1/models offer
    llms.fingerprint(llm)               # the LLM files' fingerprint, for the provenance record

``native_loader`` loads a variant's folder with ``Step1LLM``; ``load_vllm`` connects to a running
``vllm serve`` or starts vLLM's engine in this process (docs/VLLM.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from errors import OptionsError
from model_layout import LLM_BACKENDS, VARIANTS, VLLM_VARIANTS, llm_dir_for
from models.device import pick_device
from models.generation import TokenStreamLLM
from models.llm import Step1LLM, variant_problem
from provenance import folder_fingerprint
from synthesis import EngineConfig

log = logging.getLogger(__name__)

LLMLoader = Callable[[str], Step1LLM]


class LLMRegistry:
    """Loaded LLMs by (backend, variant); ``llms`` given by name belong to the configured backend.

    Thread-safe: loading a variant on demand is locked.
    """

    def __init__(
        self,
        llms: dict[str, TokenStreamLLM],
        config: EngineConfig,
        model_root: Path | None = None,
        loader: LLMLoader | None = None,
    ):
        if config.variant not in llms and loader is None:
            raise OptionsError(f"default variant {config.variant!r} is not loaded")
        self.config, self.model_root = config, model_root
        self._llms = {(config.llm_backend, v): llm for v, llm in llms.items()}
        self._loader = loader
        self._load_lock = threading.Lock()
        self._fingerprints: dict[str, str | None] = {}

    def get(self, variant: str | None = None, backend: str | None = None) -> TokenStreamLLM:
        """The LLM of ``variant`` on ``backend`` (defaults: the configured ones), loading a native
        variant on first use. A vLLM deployment can still use the native backend (e.g. while its
        server is down) by asking for it."""
        backend = backend or self.config.llm_backend
        if backend not in LLM_BACKENDS:
            raise OptionsError(f"unknown LLM backend {backend!r}; choose one of {', '.join(LLM_BACKENDS)}")
        variant = variant or (self.config.variant if backend == self.config.llm_backend else "base")
        key = (backend, variant)
        if key in self._llms:
            return self._llms[key]
        if backend != "native" or variant not in VARIANTS or self._loader is None:
            raise OptionsError(
                f"model variant {variant!r} on the {backend} backend is not available here; "
                f"choose {', '.join(self.available_variants())}"
            )
        with self._load_lock:
            if key not in self._llms:
                try:
                    self._llms[key] = self._loader(variant)
                except Exception as exc:  # an optional variant that cannot load is the user's choice to fix
                    log.exception("could not load LLM variant %s", variant)
                    raise OptionsError(
                        f"model variant {variant!r} could not be loaded ({exc}); "
                        f"use {self.config.variant!r} or check the model files"
                    ) from exc
        return self._llms[key]

    @property
    def loaded_variants(self) -> list[str]:
        """Variants loaded on the configured backend."""
        return [v for b, v in self._llms if b == self.config.llm_backend]

    @property
    def loaded_backends(self) -> list[str]:
        """Backends with at least one loaded LLM, sorted."""
        return sorted({b for b, _ in self._llms})

    @property
    def applies_repetition_rule(self) -> bool:
        """Whether every loaded LLM samples with the repetition-aware rule."""
        return all(llm.applies_repetition_rule for llm in self._llms.values())

    def prefix_stores(self) -> list:
        """The loaded native LLMs' stores of voices' prompt keys/values (models/decode.py)."""
        return [store for llm in self._llms.values() if (store := getattr(llm, "prefixes", None)) is not None]

    def decode(self) -> str:
        """How the default variant's LLM decodes: dynamic, static or graphs (native), or "vllm"."""
        llm = self._llms.get((self.config.llm_backend, self.config.variant))
        return getattr(llm, "decode", self.config.llm_backend)

    def device(self) -> str:
        """The device the default variant's LLM runs on (e.g. "cpu", "cuda:0"); for an LLM without
        one in this process (vLLM), the device ``--device`` resolves to here."""
        llm = self._llms.get((self.config.llm_backend, self.config.variant))
        device = getattr(llm, "device", None)
        return str(device if device is not None else pick_device(self.config.device))

    def available_variants(self) -> list[str]:
        """Variants of the configured backend that can run here (loaded first): files present,
        shapes and libraries usable. A vLLM deployment serves the one variant it was started with."""
        out = self.loaded_variants
        if self.config.llm_backend == "native" and self._loader is not None and self.model_root:
            for variant in VARIANTS:
                if variant in out:
                    continue
                problem = variant_problem(llm_dir_for(self.model_root, variant), variant)
                if problem is None:
                    out.append(variant)
                else:
                    log.debug("variant %s not offered: %s", variant, problem)
        return out

    def fingerprint(self, llm: TokenStreamLLM) -> str | None:
        """Fingerprint of an LLM's files (computed once per variant; None for a backend without a folder)."""
        key = f"{llm.backend}:{llm.variant}"
        if key not in self._fingerprints:
            self._fingerprints[key] = folder_fingerprint(getattr(llm, "model_dir", None))
        return self._fingerprints[key]


def native_loader(model_root: Path, config: EngineConfig) -> LLMLoader:
    """A loader of native variants from their folders under ``model_root``."""

    def load_llm(variant: str) -> Step1LLM:
        folder = llm_dir_for(model_root, variant)
        t0 = time.perf_counter()
        llm = Step1LLM.load(
            folder,
            variant=variant,
            device=config.device,
            dtype=config.dtype,
            decode=config.llm_decode,
            prefix_cache_mb=config.llm_prefix_cache_mb,
        )
        log.info(
            "loaded LLM %s from %s, %s decoding (%.2f s)",
            variant,
            folder,
            llm.decode,
            time.perf_counter() - t0,
        )
        return llm

    return load_llm


def load_vllm(model_root: Path, config: EngineConfig) -> TokenStreamLLM:
    """The vLLM backend for ``config.variant``: a running ``vllm serve`` at ``config.llm_url``, or
    vLLM's engine in this process (which needs the vllm package: see docs/VLLM.md)."""
    from models.llm_vllm import VLLMStep1LLM
    from models.vllm_options import VLLMEngineOptions

    if config.variant not in VLLM_VARIANTS:
        raise OptionsError(
            f"the vllm backend serves {' or '.join(VLLM_VARIANTS)}, not {config.variant!r} "
            "(bitsandbytes 4-bit is the native backend's; vLLM runs the AWQ checkpoint)"
        )
    folder = llm_dir_for(model_root, config.variant)
    t0 = time.perf_counter()
    if config.llm_url:
        llm = VLLMStep1LLM.connect(config.llm_url, folder)
    else:
        llm = VLLMStep1LLM.start_engine(folder, config.vllm or VLLMEngineOptions())
    llm.variant = config.variant
    log.info(
        "LLM %s on vLLM (%s) ready in %.2f s; repetition rule %s",
        config.variant,
        llm.mode,
        time.perf_counter() - t0,
        "on" if llm.applies_repetition_rule else "OFF",
    )
    return llm
