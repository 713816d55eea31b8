"""Check compose.yaml (several replicas behind a sticky load balancer) without a Docker engine.

    python scripts/check_compose.py                 # structure; plus `docker compose config` with an engine
    python scripts/check_compose.py --engine require

``check_compose`` reads the file with PyYAML and checks what the deployment relies on: the services
(lb, app, redis, and vllm under a profile), a health check for each (the app inherits the image's,
read from the Dockerfile), one GPU reservation per app replica and for vllm, no host port or fixed
name on the app (``--scale``), Traefik's sticky cookie for the page and plain round robin for /v1,
Redis with a named volume, persistence and ``noeviction`` under a maxmemory, the app's EDITX_* URLs
pointing at those services, and the vLLM flags the Step1 checkpoint needs. Where a Docker engine
answers, ``docker compose config`` must also accept the file, with and without ``--profile vllm``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from scripts.dockerfile_parse import Instruction, parse_dockerfile, values_of

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("check_compose")

SERVICES = ("lb", "app", "redis", "vllm")
VLLM_PROFILE = "vllm"
# vllm serve flags the Step1 checkpoint and the app's token-id protocol need.
VLLM_FLAGS = (
    "--hf-overrides",
    "--skip-tokenizer-init",
    "--max-model-len",
    "--gpu-memory-utilization",
    "--logits-processors",
)
PLUGIN_DIR = "patches/vllm_step1"  # holds the editx_vllm_step1 package the --logits-processors flag names
EVICTION_POLICIES = ("noeviction", "volatile-lru", "volatile-lfu", "volatile-ttl", "volatile-random")


def with_defaults(value: object) -> object:
    """``value`` as Compose interpolates it when no host variable is set: ``${VAR:-default}`` -> default."""
    if isinstance(value, dict):
        return {key: with_defaults(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_defaults(item) for item in value]
    if not isinstance(value, str):
        return value
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m[1] or "", value)


def load_compose(path: Path) -> dict:
    """compose.yaml as a dict, interpolated with the defaults it names (what a bare ``up`` runs)."""
    return with_defaults(yaml.safe_load(path.read_text()) or {})


def image_contract(dockerfile: Path) -> tuple[dict[str, str], Instruction | None]:
    """The final stage's ENV/ARG values and its HEALTHCHECK (None when it has none)."""
    stages, global_args = parse_dockerfile(dockerfile.read_text())
    final = stages[-1].instructions if stages else []
    health = next((i for i in reversed(final) if i.keyword == "HEALTHCHECK"), None)
    return values_of(final, global_args), health if health and health.args.upper() != "NONE" else None


def one_gpu(service: dict) -> bool:
    """Whether the service reserves exactly one NVIDIA GPU (``count: 1`` or one device id)."""
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])]
    # Docker refuses count together with device_ids, so exactly one of the two names the one GPU.
    return len(gpus) == 1 and (gpus[0].get("count") == 1) != (len(gpus[0].get("device_ids") or []) == 1)


def as_mapping(value: dict | list | None) -> dict:
    """``environment``/``labels`` in either Compose form (mapping, or list of KEY=VALUE / KEY) as a dict."""
    if isinstance(value, list):
        return dict((str(item).split("=", 1) + [None])[:2] for item in value)
    return dict(value or {})


def volume_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each volume; a short-syntax source may hold ``${VAR:-default}``."""
    mounts = []
    for spec in service.get("volumes") or []:
        if isinstance(spec, dict):
            mounts.append((str(spec.get("source", "")), str(spec.get("target")), bool(spec.get("read_only"))))
            continue
        head, _, last = str(spec).rpartition(":")
        mode = last if last in ("ro", "rw") else ""
        source, _, target = head.rpartition(":") if mode else (head, "", last)
        mounts.append((source, target, mode == "ro"))
    return mounts


def command_args(service: dict) -> list[str]:
    """A service's ``command`` as a list of words."""
    command = service.get("command") or []
    return [str(w) for w in command] if isinstance(command, list) else str(command).split()


def flag_value(args: list[str], flag: str) -> str | None:
    """The value after ``flag`` (or of ``flag=value``) in a command, None when absent."""
    for i, word in enumerate(args):
        if word == flag and i + 1 < len(args):
            return args[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def check_compose(compose: dict, dockerfile: Path) -> list[str]:
    """Every problem of the replica deployment in a parsed compose.yaml (empty when it holds)."""
    problems: list[str] = []
    services = compose.get("services") or {}
    if missing := [name for name in SERVICES if name not in services]:
        return [f"services missing: {', '.join(missing)}"]
    lb, app, redis, vllm = (services[name] for name in SERVICES)
    env, image_health = image_contract(dockerfile)
    port = env.get("EDITX_PORT", "7860")

    for name, service in services.items():
        health = service.get("healthcheck") or {}
        if health.get("disable") or health.get("test") in (["NONE"], "NONE"):
            problems.append(f"{name}: its health check is disabled")
        elif not health and not (service.get("build") and image_health):
            problems.append(f"{name}: no healthcheck (and no image HEALTHCHECK to inherit)")
        profiles = service.get("profiles") or []
        if name == "vllm" and VLLM_PROFILE not in profiles:
            problems.append(f"vllm: must sit under profiles: [{VLLM_PROFILE}] (optional service)")
        elif name != "vllm" and profiles:
            problems.append(f"{name}: has profiles {profiles}; the default stack would not start it")
        if service.get("ports") and name != "lb":
            problems.append(f"{name}: publishes ports {service['ports']}; only lb does")
        for source, _, _ in volume_mounts(service):
            named = source and not source.startswith(("/", ".", "~"))
            if named and source not in (compose.get("volumes") or {}):
                problems.append(f"{name}: named volume {source!r} is not declared under volumes:")

    # app: the project's image, one GPU each, nothing that stops --scale.
    if app.get("image") != "editx-studio" or app.get("build") not in (".", {"context": "."}):
        problems.append("app: must be image editx-studio built from this repo (build: .)")
    for key in ("container_name", "ports"):
        if key in app:
            problems.append(f"app: {key} is set; `docker compose up --scale app=N` needs it unset")
    model_dir = env.get("EDITX_MODEL_DIR", "/model")
    for name, service in (("app", app), ("vllm", vllm)):
        if not one_gpu(service):
            problems.append(f"{name}: needs one NVIDIA GPU reservation (count: 1 or one device id)")
        if not any(target == model_dir and read_only for _, target, read_only in volume_mounts(service)):
            problems.append(f"{name}: mount the models read-only at {model_dir} (HOST:{model_dir}:ro)")
    depends = app.get("depends_on") or {}
    if (depends.get("redis") or {}).get("condition") != "service_healthy":
        problems.append("app: depends_on redis needs condition: service_healthy")
    if "vllm" in depends and depends["vllm"].get("required") is not False:
        problems.append("app: depends_on vllm must be required: false (vllm only runs with --profile vllm)")

    # app environment: the URLs point at the services that serve them.
    app_env = as_mapping(app.get("environment"))
    cache = urlsplit(str(app_env.get("EDITX_CACHE_URL", "")))
    if cache.scheme != "redis" or cache.hostname != "redis" or (cache.port or 6379) != 6379:
        problems.append(
            f"app: EDITX_CACHE_URL={app_env.get('EDITX_CACHE_URL')!r} must be redis://redis:6379/N"
        )
    llm = urlsplit(str(app_env.get("EDITX_LLM_URL", "")))
    vllm_args = command_args(vllm)
    if llm.hostname != "vllm" or str(llm.port) != (flag_value(vllm_args, "--port") or "8000"):
        problems.append(
            f"app: EDITX_LLM_URL={app_env.get('EDITX_LLM_URL')!r} must name the vllm service and its --port"
        )
    if app_env.get("EDITX_LLM_BACKEND") not in ("native", "vllm"):
        problems.append(f"app: EDITX_LLM_BACKEND is {app_env.get('EDITX_LLM_BACKEND')!r}, not native or vllm")
    if "EDITX_API_KEY" not in app_env:
        problems.append("app: environment has no EDITX_API_KEY (pass it through from the host)")

    # lb: Traefik finds the replicas through the Docker API; sticky page, round-robin /v1.
    labels = as_mapping(app.get("labels"))
    if not str(lb.get("image", "")).startswith("traefik:"):
        problems.append("lb: expected the traefik image (its Docker provider discovers --scale replicas)")
    if not any("/var/run/docker.sock" in str(v) for v in lb.get("volumes") or []):
        problems.append("lb: Traefik needs /var/run/docker.sock to discover the app replicas")
    if str(labels.get("traefik.enable")).lower() != "true":
        problems.append("app: label traefik.enable=true is missing (lb exposes nothing by default)")
    routers = {
        k.split(".")[3]: v
        for k, v in labels.items()
        if k.startswith("traefik.http.routers.") and k.endswith(".rule")
    }
    page = next((r for r, rule in routers.items() if "PathPrefix(`/`)" in rule), None)
    api = next((r for r, rule in routers.items() if "PathPrefix(`/v1`)" in rule), None)
    for role, router, sticky in (("page", page, True), ("/v1", api, False)):
        service = labels.get(f"traefik.http.routers.{router}.service", router)
        prefix = f"traefik.http.services.{service}.loadbalancer."
        if router is None:
            problems.append(f"app: no Traefik router for the {role}")
        elif str(labels.get(prefix + "sticky.cookie", "false")).lower() != str(sticky).lower():
            problems.append(f"app: the {role} service {service} must {'' if sticky else 'not '}be sticky")
        elif str(labels.get(prefix + "server.port")) != port:
            problems.append(f"app: Traefik service {service} must send to port {port} (EDITX_PORT)")
    stack = labels.get("editx.stack")
    constraint = str(as_mapping(lb.get("environment")).get("TRAEFIK_PROVIDERS_DOCKER_CONSTRAINTS", ""))
    if stack is None or not re.search(rf"Label\(`editx\.stack`,\s*`{re.escape(str(stack))}`\)", constraint):
        problems.append("lb: TRAEFIK_PROVIDERS_DOCKER_CONSTRAINTS must select the app's editx.stack label")

    # redis: persistent, bounded, never evicting what has no TTL.
    redis_args = command_args(redis)
    if not any(target == "/data" for _, target, _ in volume_mounts(redis)):
        problems.append("redis: mount a named volume at /data")
    snapshots = (flag_value(redis_args, "--save") or "").strip('"')
    if flag_value(redis_args, "--appendonly") != "yes" and not snapshots:
        problems.append("redis: persistence is off (--appendonly yes or --save)")
    if not flag_value(redis_args, "--maxmemory"):
        problems.append("redis: --maxmemory is not set")
    if flag_value(redis_args, "--maxmemory-policy") not in EVICTION_POLICIES:
        problems.append(
            f"redis: --maxmemory-policy must be one of {', '.join(EVICTION_POLICIES)} (voices "
            "have no TTL and must never be evicted)"
        )

    # vllm: the official server image, the Step1 flags, one GPU.
    image = str(vllm.get("image", ""))
    if not image.startswith("vllm/vllm-openai:") or image.endswith((":latest", ":")):
        problems.append(f"vllm: image {image!r} must be vllm/vllm-openai pinned to a version tag")
    if missing := [flag for flag in VLLM_FLAGS if flag not in " ".join(vllm_args)]:
        problems.append(f"vllm: command lacks {', '.join(missing)}")
    overrides = flag_value(vllm_args, "--hf-overrides")
    if overrides and json.loads(overrides).get("tie_word_embeddings") is not False:
        problems.append("vllm: --hf-overrides must set tie_word_embeddings to false (untied lm_head)")
    plugin_mounts = [
        target for source, target, _ in volume_mounts(vllm) if source.rstrip("/").endswith(PLUGIN_DIR)
    ]
    vllm_env = as_mapping(vllm.get("environment"))
    if not plugin_mounts or vllm_env.get("PYTHONPATH") not in plugin_mounts:
        problems.append(
            f"vllm: mount {PLUGIN_DIR} and put it on PYTHONPATH (the repetition-aware logits processor)"
        )
    if str(vllm_env.get("VLLM_USE_V2_MODEL_RUNNER")) != "0":
        problems.append("vllm: VLLM_USE_V2_MODEL_RUNNER must be 0 (the logits processor is a V1 one)")
    if not vllm_args or not vllm_args[0].startswith(model_dir + "/"):
        problems.append(f"vllm: the first argument must be a model folder under {model_dir}")
    return problems


def engine_available() -> bool:
    """Whether a Docker engine answers: ``docker compose version`` and ``docker info`` both succeed."""
    docker = shutil.which("docker")
    return bool(docker) and all(
        subprocess.run([docker, *args], capture_output=True, text=True).returncode == 0
        for args in (["compose", "version"], ["info"])
    )


def compose_config(path: Path) -> list[str]:
    """``docker compose config`` on the file, with and without the vllm profile: its errors, if any."""
    problems = []
    for extra in ([], ["--profile", VLLM_PROFILE]):
        result = subprocess.run(
            ["docker", "compose", "-f", str(path), *extra, "config", "--quiet"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            problems.append(f"docker compose {' '.join(extra)} config: {result.stderr.strip()}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line: exit 1 when the structure or (with an engine) ``docker compose config`` fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compose", type=Path, default=ROOT / "compose.yaml")
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    parser.add_argument(
        "--engine",
        choices=("auto", "require", "off"),
        default="auto",
        help="run `docker compose config`: when an engine answers (auto), always, or never",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    problems = check_compose(load_compose(args.compose), args.dockerfile)
    if args.engine == "require" or (args.engine == "auto" and engine_available()):
        problems += compose_config(args.compose)
    elif args.engine == "auto":
        log.info("no Docker engine answers; `docker compose config` not run")
    for line in problems:
        log.error("%s", line)
    log.info("%s: %s", args.compose.name, f"{len(problems)} problem(s)" if problems else "OK")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
