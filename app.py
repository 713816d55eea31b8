"""EditX Studio entry point: parse flags, load the models once, warm up, build the page, serve.

python app.py                                # ./checkpoints, else demo models; http://127.0.0.1:7860
python app.py --model-dir /model --host 0.0.0.0
python app.py --help                         # every flag (settings.py) and its EDITX_* variable
"""

from __future__ import annotations

import logging
import sys
import time

from settings import Settings, parse_settings

log = logging.getLogger("editx")


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Heavy imports after parsing, so --help and flag errors are instant.
    from errors import EditXError

    try:
        engine, examples = load(settings)
    except EditXError as exc:  # missing model files, a device that is not there: a message, no traceback
        log.error("cannot start: %s", exc)
        return 2
    import server
    from outputs import OutputStore
    from ui.access import AdminGate
    from ui.page import build_app

    options = server.ServeOptions(
        host=settings.host,
        port=settings.port,
        share=settings.share,
        concurrency=settings.concurrency,
        queue_size=settings.queue_size,
        api_key=settings.api_key,
        allowed_paths=(settings.examples_dir.resolve(),),
    )
    outputs = OutputStore()  # versions made on the page can be edited through the API, and back
    gate = AdminGate(settings.api_key, options.loopback_only)  # clearing the cache and deleting voices
    page = build_app(engine, examples, settings.max_text_chars, outputs, gate)
    log.info(
        "serving on http://%s:%d (%s models, variant %s)%s",
        settings.host,
        settings.port,
        "DEMO" if engine.demo else "real",
        settings.variant,
        "" if settings.share else "; --share also opens a public link",
    )
    server.serve(page, engine, options, outputs)
    return 0


def load(settings: Settings):
    """Locate (or build demo) models, load the engine, write the example voices, warm up."""
    from audio_read import load_audio
    from demo import write_demo_models
    from demo.examples import ensure_examples
    from engine import CloneEngine
    from model_layout import locate_models
    from synthesis import EngineConfig

    start = time.perf_counter()
    root = locate_models(
        settings.model_dir,
        settings.demo_dir if settings.allow_demo else None,
        write_demo_models if settings.allow_demo else None,
    )
    if root.demo:
        log.warning(
            "running on DEMO models from %s: untrained weights, the output is noise. Get the real "
            "models with `python scripts/download_models.py --out %s`",
            root.path,
            settings.model_dir,
        )
    config = EngineConfig(
        variant=settings.variant,
        auto_transcribe=settings.auto_transcribe,
        max_text_chars=settings.max_text_chars,
        chunk_chars=settings.chunk_chars,
        max_reference_seconds=settings.max_reference_seconds,
        device=settings.device,
        dtype=settings.dtype,
        llm_backend=settings.llm_backend,
        llm_url=settings.llm_url,
        llm_decode=settings.llm_decode,
        llm_prefix_cache_mb=settings.llm_prefix_cache_mb,
        vllm=vllm_options(settings),
        scores=settings.scores,
    )
    engine = CloneEngine.load(
        root.path,
        config,
        cache_dir=settings.cache_dir,
        cache_max_entries=settings.cache_max_entries,
        cache_max_bytes=settings.cache_max_bytes,
        ort_threads=settings.ort_threads,
        demo=root.demo,
        cache_url=settings.cache_url,
    )
    log.info("models loaded from %s in %.1f s", root.path, time.perf_counter() - start)
    refreshed = engine.voices.refresh_voices()
    if refreshed:
        log.info("re-encoded %d library voice(s) made with other model files", refreshed)
    examples = ensure_examples(settings.examples_dir)
    if settings.warmup and examples:
        first = examples[0]
        try:
            audio, sr = load_audio(first.path)
            engine.warm_up(audio, sr, first.reference_text or "warm up", first.target_text[:40])
        except Exception:  # serve anyway: each request reports its own error, the log has this one
            log.exception("warm-up failed; the first request may be slow or fail the same way")
    return engine, examples


def vllm_options(settings: Settings):
    """The in-process vLLM engine's settings from the --vllm-* flags."""
    from models.vllm_options import VLLMEngineOptions

    return VLLMEngineOptions(
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        max_model_len=settings.vllm_max_model_len,
        max_num_seqs=settings.vllm_max_num_seqs,
        quantization=settings.vllm_quantization,
        tensor_parallel_size=settings.vllm_tensor_parallel_size,
        enforce_eager=settings.vllm_enforce_eager,
    )


if __name__ == "__main__":
    sys.exit(main())
