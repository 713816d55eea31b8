"""vLLM general plugin for the Step-Audio-EditX LLM (Step1); see README.md beside pyproject.toml.

``register()`` is the ``vllm.general_plugins`` entry point; vLLM calls it in every process it starts
(API server, engine core, workers), possibly more than once, so each step is idempotent:

* ``config.register_config``: a Step1 config class, so no remote code runs (drop when transformers or
  vLLM ship one that defaults to untied embeddings);
* ``cpu_alibi_sqrt.register_cpu_backend``: sqrt-ALiBi attention on vLLM's CPU backend, CPU only (drop
  when vLLM's CPU backend supports ``use_alibi_sqrt``).

``repetition`` holds the repetition-aware logits processor; vLLM loads it from
``--logits-processors editx_vllm_step1.repetition:RepetitionAwareLogitsProcessor``.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
_registered = False


def register() -> None:
    """Apply the plugin's registrations once per process."""
    global _registered
    if _registered:
        return
    _registered = True
    from editx_vllm_step1.config import register_config
    from editx_vllm_step1.cpu_alibi_sqrt import register_cpu_backend

    register_config()
    if register_cpu_backend():
        log.info("editx_vllm_step1: sqrt-ALiBi attention registered for vLLM's CPU backend")
