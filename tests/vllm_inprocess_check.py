"""Run models.llm_vllm in in-process mode under the vLLM venv's python; used by tests/test_llm_vllm.py.

    PYTHONPATH=REPO $EDITX_VLLM_PYTHON tests/vllm_inprocess_check.py RESULTS.json < jobs.json

stdin: ``{"engines": [{"model_dir": str, "options": {VLLMEngineOptions fields},
"jobs": [{"prompt_ids": [...], "max_length": int, "temperature": float, "seed": int | null,
"repetition_rule": bool, "stream": bool, "concurrent": int}]}]}``. One engine is started per entry
and its jobs run in order. Each job returns ``{"ids": [...], "seed": ...}``; with ``stream`` also
``"chunks"`` (the streamed chunks), with ``concurrent`` N the job runs N times at once from N threads
(seed + i each) and returns ``"runs"``. The results go to the file named by the only argument (vLLM's
processes log to stdout).
"""

from __future__ import annotations

import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from models.generation import GenerationOptions
from models.llm_vllm import VLLMStep1LLM
from models.vllm_options import VLLMEngineOptions


def run_job(llm: VLLMStep1LLM, job: dict) -> dict:
    llm.apply_repetition_rule = job.get("repetition_rule", True)
    prompt = job["prompt_ids"]

    def once(seed: int | None) -> dict:
        options = GenerationOptions(
            temperature=job.get("temperature", 0.0), seed=seed, max_length=job["max_length"]
        )
        ids, used = llm.generate_ids(prompt, options)
        out = {"ids": ids, "seed": used}
        if job.get("stream"):
            out["chunks"] = list(llm.stream_id_chunks(prompt, options))
        return out

    seed = job.get("seed")
    if job.get("concurrent"):
        n = job["concurrent"]
        with ThreadPoolExecutor(n) as pool:
            runs = list(pool.map(once, [None if seed is None else seed + i for i in range(n)]))
        return {"runs": runs, "repetition_rule": llm.repetition_rule}
    return {**once(seed), "repetition_rule": llm.repetition_rule}


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    spec = json.load(sys.stdin)
    results = []
    for engine in spec["engines"]:
        options = VLLMEngineOptions(**engine.get("options", {}))
        with VLLMStep1LLM.start_engine(Path(engine["model_dir"]), options) as llm:
            results.append([run_job(llm, job) for job in engine["jobs"]])
    Path(sys.argv[1]).write_text(json.dumps({"engines": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
