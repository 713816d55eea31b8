"""compose.yaml (replicas behind a sticky load balancer, Redis, optional vLLM) and scripts/check_compose.py.

The project's compose.yaml must pass the structural checks (the CI path: no Docker engine there); where
an engine answers, ``docker compose config`` must accept it too. Each broken copy is the real file
with one thing changed, and the checker must name it. The engine calls are tested with a fake
``docker`` on PATH.
"""

from __future__ import annotations

import copy
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from scripts import check_compose as cc

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def test_project_compose_file_holds():
    assert cc.check_compose(cc.load_compose(COMPOSE), DOCKERFILE) == []
    if cc.engine_available():  # a developer machine with Docker; CI has none and relies on the above
        assert cc.compose_config(COMPOSE) == []


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A mutation that sets (or, for value None, deletes) the dotted ``path`` of the compose dict."""

    def mutate(compose: dict) -> None:
        *parents, last = (int(key) if key.isdigit() else key for key in path.split("/"))
        node = compose
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return mutate


APP, LB, REDIS, VLLM = "services/app", "services/lb", "services/redis", "services/vllm"
LABELS, ENV = f"{APP}/labels", f"{APP}/environment"
PAGE = "traefik.http.services.editx-page.loadbalancer."
API = "traefik.http.services.editx-api.loadbalancer."
GPU = "deploy/resources/reservations/devices/0"


def _redis_command(**flags: str) -> Callable[[dict], None]:
    def mutate(compose: dict) -> None:
        args = compose["services"]["redis"]["command"]
        for flag, value in flags.items():
            index = args.index(f"--{flag.replace('_', '-')}")
            if value:
                args[index + 1] = value
            else:
                del args[index : index + 2]

    return mutate


def _vllm_without(flag: str) -> Callable[[dict], None]:
    def mutate(compose: dict) -> None:
        compose["services"]["vllm"]["command"].remove(flag)

    return mutate


BROKEN = [
    (_set(VLLM, None), "services missing: vllm"),
    (_set(f"{VLLM}/profiles", None), "vllm: must sit under profiles: [vllm]"),
    (_set(f"{REDIS}/profiles", ["cache"]), "redis: has profiles ['cache']"),
    (_set(f"{REDIS}/healthcheck", None), "redis: no healthcheck"),
    (_set(f"{LB}/healthcheck", {"disable": True}), "lb: its health check is disabled"),
    (_set(f"{APP}/ports", ["7860:7860"]), "app: publishes ports"),
    (_set(f"{APP}/container_name", "editx"), "container_name is set"),
    (_set(f"{APP}/image", "other"), "app: must be image editx-studio"),
    (_set(f"{APP}/deploy", None), "app: needs one NVIDIA GPU reservation"),
    (_set(f"{APP}/{GPU}/device_ids", ["0", "1"]), "app: needs one NVIDIA GPU"),
    (_set(f"{VLLM}/{GPU}/count", 1), "vllm: needs one NVIDIA GPU"),
    (_set(f"{APP}/volumes", ["./checkpoints:/model"]), "app: mount the models read-only"),
    (_set(f"{VLLM}/volumes", None), "vllm: mount the models read-only at /model"),
    (_set(f"{APP}/depends_on/redis", {}), "depends_on redis needs condition"),
    (_set(f"{APP}/depends_on/vllm/required", None), "vllm must be required: false"),
    (_set(f"{ENV}/EDITX_CACHE_URL", "redis://localhost:6379/0"), "EDITX_CACHE_URL"),
    (_set(f"{ENV}/EDITX_CACHE_URL", "http://redis:6379/0"), "EDITX_CACHE_URL"),
    (_set(f"{ENV}/EDITX_LLM_URL", "http://vllm:8001"), "EDITX_LLM_URL='http://vllm:8001'"),
    (_set(f"{ENV}/EDITX_LLM_BACKEND", "tgi"), "EDITX_LLM_BACKEND is 'tgi'"),
    (_set(f"{ENV}/EDITX_API_KEY", None), "no EDITX_API_KEY"),
    (_set(f"{LABELS}/{PAGE}sticky.cookie", None), "page service editx-page must be sticky"),
    (_set(f"{LABELS}/{API}sticky.cookie", "true"), "/v1 service editx-api must not be sticky"),
    (_set(f"{LABELS}/traefik.http.routers.editx-page.rule", None), "no Traefik router for the page"),
    (_set(f"{LABELS}/{PAGE}server.port", "8080"), "must send to port 7860"),
    (_set(f"{LABELS}/traefik.enable", "false"), "traefik.enable=true is missing"),
    (_set(f"{LB}/image", "nginx:1.29"), "expected the traefik image"),
    (_set(f"{LB}/volumes", None), "needs /var/run/docker.sock"),
    (
        _set(f"{LB}/environment/TRAEFIK_PROVIDERS_DOCKER_CONSTRAINTS", "Label(`editx.stack`, `x`)"),
        "must select the app's editx.stack label",
    ),
    (_set(f"{REDIS}/volumes", None), "redis: mount a named volume at /data"),
    (_set("volumes", None), "named volume 'redis-data' is not declared"),
    (_redis_command(appendonly="no"), "persistence is off"),
    (_redis_command(maxmemory=""), "--maxmemory is not set"),
    (_redis_command(maxmemory_policy="allkeys-lru"), "--maxmemory-policy must be one of"),
    (_set(f"{VLLM}/image", "vllm/vllm-openai:latest"), "pinned to a version tag"),
    (_vllm_without("--skip-tokenizer-init"), "command lacks --skip-tokenizer-init"),
    (_vllm_without("--logits-processors"), "command lacks --logits-processors"),
    (_set(f"{VLLM}/environment/PYTHONPATH", None), "put it on PYTHONPATH"),
    (_set(f"{VLLM}/volumes/1", "./elsewhere:/opt/editx-vllm-plugin:ro"), "mount patches/vllm_step1"),
    (_set(f"{VLLM}/environment/VLLM_USE_V2_MODEL_RUNNER", "1"), "VLLM_USE_V2_MODEL_RUNNER must be 0"),
    (_set(f"{VLLM}/command/6", '{"tie_word_embeddings": true}'), "tie_word_embeddings to false"),
    (_set(f"{VLLM}/command/0", "stepfun-ai/Step-Audio-EditX"), "model folder under /model"),
]


@pytest.mark.parametrize(("mutate", "expected"), BROKEN, ids=[expected for _, expected in BROKEN])
def test_each_rule_names_its_violation(mutate, expected):
    compose = copy.deepcopy(cc.load_compose(COMPOSE))
    mutate(compose)
    problems = cc.check_compose(compose, DOCKERFILE)
    assert any(expected in p for p in problems), problems


def test_app_health_comes_from_the_image(tmp_path):
    text = DOCKERFILE.read_text()
    start = text.index("HEALTHCHECK")
    end = text.index("\n", text.index("CMD [", start))
    (tmp_path / "Dockerfile").write_text(text[:start] + text[end + 1 :])
    assert cc.check_compose(cc.load_compose(COMPOSE), tmp_path / "Dockerfile") == [
        "app: no healthcheck (and no image HEALTHCHECK to inherit)"
    ]


def test_list_forms_of_environment_and_labels_read_the_same():
    compose = cc.load_compose(COMPOSE)
    for service in compose["services"].values():
        for key in ("environment", "labels"):
            items = (service.get(key) or {}).items()
            service[key] = [name if value is None else f"{name}={value}" for name, value in items]
    assert cc.check_compose(compose, DOCKERFILE) == []
    assert cc.as_mapping(["A=1=2", "B"]) == {"A": "1=2", "B": None}


def test_defaults_and_volume_specs_are_read_like_compose():
    raw = {"a": ["${X:-./m}:/model:ro", "${Y}", "${Z-b}", 3]}
    assert cc.with_defaults(raw) == {"a": ["./m:/model:ro", "", "b", 3]}
    service = {"volumes": ["./m:/model:ro", "data:/data", {"source": "x", "target": "/x", "read_only": True}]}
    assert cc.volume_mounts(service) == [("./m", "/model", True), ("data", "/data", False), ("x", "/x", True)]


@pytest.fixture
def fake_docker(tmp_path, monkeypatch) -> Path:
    """A ``docker`` on PATH that logs its arguments and fails ``info`` and any ``--profile`` call."""
    log = tmp_path / "docker.log"
    docker = tmp_path / "bin" / "docker"
    docker.parent.mkdir()
    docker.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in\n'
        '  info|*--profile*) echo "no engine here" >&2; exit 1;;\nesac\nexit 0\n'
    )
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(docker.parent) + os.pathsep + os.environ.get("PATH", ""))
    return log


def test_engine_is_used_only_when_compose_and_info_both_answer(fake_docker, monkeypatch, tmp_path):
    assert cc.engine_available() is False
    assert fake_docker.read_text().splitlines() == ["compose version", "info"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cc.engine_available() is False


def test_compose_config_reports_the_engine_errors(fake_docker):
    assert cc.compose_config(COMPOSE) == ["docker compose --profile vllm config: no engine here"]
    assert fake_docker.read_text().splitlines() == [
        f"compose -f {COMPOSE} config --quiet",
        f"compose -f {COMPOSE} --profile vllm config --quiet",
    ]


def test_main(tmp_path, fake_docker):
    assert cc.main(["--engine", "off"]) == 0
    assert cc.main(["--engine", "auto"]) == 0  # the fake engine fails `docker info`: structure only
    assert cc.main(["--engine", "require"]) == 1  # ... and its `--profile vllm` config fails
    broken = yaml.safe_load(COMPOSE.read_text())
    del broken["services"]["redis"]["healthcheck"]
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert cc.main(["--compose", str(tmp_path / "compose.yaml"), "--engine", "off"]) == 1
