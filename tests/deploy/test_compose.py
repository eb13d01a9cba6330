"""deploy/docker-compose.yml: valid against the Compose specification (offline, no Docker engine here) and
wired as docs/operations.md says: healthchecks, recon replicas, Redis AOF, secrets, profiles, settings."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
KADAPT_SERVICES = ("gateway", "sampler", "recon", "recon-gpu")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping, so that anchors merge"
    return {str(key): str(value) for key, value in env.items()}


def test_compose_file_validates_against_the_compose_spec() -> None:
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.skip("check-jsonschema is not installed (it is a dev dependency)")
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_has_a_healthcheck_and_kadapt_services_probe_readyz(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "gateway", "sampler", "recon", "recon-gpu", "proxy"}
    for name, service in services.items():
        assert "healthcheck" in service, name
    ports = {"gateway": 8000, "sampler": 8001, "recon": 8002, "recon-gpu": 8002}
    for name, port in ports.items():
        test = services[name]["healthcheck"]["test"]
        assert test[-1] == f"http://127.0.0.1:{port}/readyz", name
        assert f"--port {port}" in _dockerfile_cmd(services[name]["build"]["target"]), name


def test_dependencies_wait_for_healthy_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["sampler"]["condition"] == "service_healthy"
    assert services["recon"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["proxy"]["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_redis_keeps_an_append_only_file_synced_every_second_on_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command  # a full Redis must not drop queued jobs
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-data" in compose["volumes"]


def test_recon_workers_are_replicated_and_share_the_blob_volume_with_the_gateway(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["recon"]["deploy"]["replicas"] >= 2
    for name in ("gateway", "recon", "recon-gpu"):
        assert "kadapt-data:/data" in services[name]["volumes"], name
        assert services[name]["shm_size"], name
    assert _env(services["gateway"])["KADAPT_GATEWAY_DATA_DIR"] == "/data"
    assert _env(services["recon"])["KADAPT_RECON_BLOB_DIR"] == "/data/blobs"  # the gateway's data_dir/blobs
    for name in KADAPT_SERVICES:
        limits = services[name]["deploy"]["resources"]["limits"]
        assert limits["cpus"], name
        assert limits["memory"], name
        assert services[name]["read_only"] is True, name


def test_token_files_and_the_sampler_token_come_from_docker_secrets(compose: dict[str, Any]) -> None:
    services = compose["services"]
    secrets = compose["secrets"]
    for name in KADAPT_SERVICES:
        service = services[name]
        mounted = set(service["secrets"])
        assert mounted <= set(secrets), name
        prefix = "KADAPT_RECON" if name.startswith("recon") else f"KADAPT_{name.upper()}"
        tokens_file = _env(service)[f"{prefix}_AUTH_TOKENS_FILE"]
        assert tokens_file.startswith("/run/secrets/"), name
        assert tokens_file.removeprefix("/run/secrets/") in mounted, name
    sampler_token = _env(services["gateway"])["KADAPT_GATEWAY_SAMPLER_TOKEN_FILE"]
    assert sampler_token.removeprefix("/run/secrets/") in services["gateway"]["secrets"]
    entrypoint = (ROOT / "deploy" / "docker" / "entrypoint.sh").read_text()
    assert "KADAPT_GATEWAY_SAMPLER_TOKEN_FILE" in entrypoint  # the entrypoint reads it into the setting
    generator = (ROOT / "deploy" / "secrets" / "generate.sh").read_text()
    for secret in secrets.values():
        assert Path(secret["file"]).parent == Path("secrets")
        assert Path(secret["file"]).name in generator  # deploy/secrets/generate.sh writes every one


def test_gpu_and_tls_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gpu = services["recon-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "recon-gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert "CUDAExecutionProvider" in _env(gpu)["KADAPT_RECON_PROVIDERS"]
    assert _env(gpu)["KADAPT_RECON_STRICT_PROVIDERS"] == "true"  # no silent CPU fallback
    proxy = services["proxy"]
    assert proxy["profiles"] == ["tls"]
    assert any(str(port).endswith(":443") for port in proxy["ports"])
    assert "./caddy/Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    caddyfile = (ROOT / "deploy" / "caddy" / "Caddyfile").read_text()
    assert "reverse_proxy gateway:8000" in caddyfile
    for name in ("gateway", "sampler", "recon"):
        assert "profiles" not in services[name], f"{name} runs in the default (CPU) profile"


def test_caddyfile_adapts_when_caddy_is_installed() -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (Debian package caddy); the file is checked for its proxy above")
    caddyfile = ROOT / "deploy" / "caddy" / "Caddyfile"
    for tls in ("internal", "/certs/cert.pem /certs/key.pem"):
        result = subprocess.run(
            [caddy, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
            capture_output=True,
            text=True,
            check=False,
            env={"KADAPT_TLS_HOST": "kadapt.example.org", "KADAPT_TLS": tls, "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr
        assert '"dial":"gateway:8000"' in result.stdout.replace(" ", "")


def test_every_kadapt_variable_is_a_setting(
    compose: dict[str, Any], unknown_env: Callable[[Iterable[str]], list[str]]
) -> None:
    for name in KADAPT_SERVICES:
        assert unknown_env(_env(compose["services"][name])) == [], name


def test_build_targets_exist_in_the_dockerfile(compose: dict[str, Any]) -> None:
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M))
    for name in KADAPT_SERVICES:
        build = compose["services"][name]["build"]
        assert build["dockerfile"] == "deploy/Dockerfile"
        assert build["context"] == ".."
        assert build["target"] in stages, name


def _dockerfile_cmd(target: str) -> str:
    """The CMD of ``target`` in deploy/Dockerfile, as one string."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
    match = re.search(r"^CMD (\[.*\])$", stage, re.M)
    assert match is not None, target
    return " ".join(yaml.safe_load(match.group(1)))
