"""deploy/k8s, checked offline: every object parses and validates against the Kubernetes schemas
(kubernetes-validate ships them), the kustomization builds, selectors match labels, probes hit routes the
services serve on the ports their images listen on, every KADAPT_* variable is a setting, the HPA scales
the recon Deployment on a metric the recon service exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KNOWN_KINDS = {
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
}
# Oldest Kubernetes release the manifests must validate against (autoscaling/v2 and policy/v1 are GA).
OLDEST = "1.27.0"
SERVICE_PORTS = {"gateway": 8000, "sampler": 8001, "recon": 8002}


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path.name, document


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """``(kind, name)`` -> object, over every manifest."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for _, document in _documents():
        key = (document["kind"], document["metadata"]["name"])
        assert key not in found, f"duplicate {key}"
        found[key] = document
    return found


def _workloads(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: obj for (kind, name), obj in objects.items() if kind in {"Deployment", "StatefulSet"}}


def _kadapt_container(objects: dict[tuple[str, str], dict[str, Any]], service: str) -> dict[str, Any]:
    spec = objects[("Deployment", f"kadapt-{service}")]["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = spec["containers"]
    assert len(containers) == 1
    return containers[0]


def test_every_object_has_a_known_api_version_and_kind() -> None:
    for filename, document in _documents():
        assert (document["apiVersion"], document["kind"]) in KNOWN_KINDS, filename
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", document["metadata"]["name"]), filename


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert kustomization["namespace"] == "kadapt"
    images = {image["name"] for image in kustomization["images"]}
    for service in SERVICE_PORTS:
        assert f"kadapt-{service}" in images


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (a dev dependency)")
    newest = validate.latest_version()
    for filename, document in _documents():
        for version in (OLDEST, newest):
            try:
                validate.validate(document, version, strict=True)
            except validate.ValidationError as error:  # pragma: no cover - the message is the point
                raise AssertionError(f"{filename} {document['kind']} (k8s {version}): {error}") from error


def test_kustomization_builds_when_kubectl_is_installed() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (its built-in kustomize renders deploy/k8s offline)")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    built = [document for document in yaml.safe_load_all(result.stdout) if document]
    assert len(built) == len(list(_documents()))
    for document in built:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "kadapt", document["metadata"]["name"]
    images = {
        container["image"]
        for document in built
        if document["kind"] == "Deployment"
        for container in document["spec"]["template"]["spec"]["containers"]
    }
    assert images == {f"kadapt-{service}:0.1.0" for service in SERVICE_PORTS}


def test_selectors_match_the_pod_labels(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    templates = {
        name: obj["spec"]["template"]["metadata"]["labels"] for name, obj in _workloads(objects).items()
    }
    for name, obj in _workloads(objects).items():
        assert obj["spec"]["selector"]["matchLabels"].items() <= templates[name].items(), name
    for (kind, name), obj in objects.items():
        if kind == "Service":
            selector = obj["spec"]["selector"]
            matching = [w for w, labels in templates.items() if selector.items() <= labels.items()]
            assert matching == [name], f"Service {name} selects {matching}"
            workload = _workloads(objects)[name]
            ports = {
                p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]
            }
            for port in obj["spec"]["ports"]:
                assert port["targetPort"] in ports, f"Service {name}: {port['targetPort']}"
        if kind == "PodDisruptionBudget":
            selector = obj["spec"]["selector"]["matchLabels"]
            assert any(selector.items() <= labels.items() for labels in templates.values()), name
    assert objects[("StatefulSet", "kadapt-redis")]["spec"]["serviceName"] == "kadapt-redis"


def _routes(service: str) -> set[str]:
    """The paths the service's app documents (built from its settings, without starting it)."""
    from kadapt.launcher.factories import FACTORIES

    app: FastAPI = FACTORIES[service]()
    return set(app.openapi()["paths"])


@pytest.mark.parametrize("service", sorted(SERVICE_PORTS))
def test_probes_hit_health_routes_on_the_port_the_image_listens_on(
    objects: dict[tuple[str, str], dict[str, Any]], service: str
) -> None:
    container = _kadapt_container(objects, service)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == SERVICE_PORTS[service]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    stage = dockerfile.split(f" AS {service}\n", 1)[1].split("\nFROM ", 1)[0]
    assert f'"--port", "{SERVICE_PORTS[service]}"' in stage
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    routes = _routes(service)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ports, probe
        assert get["path"] in routes, f"{service} {probe}: {get['path']} not served"
    annotations = objects[("Deployment", f"kadapt-{service}")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(SERVICE_PORTS[service])
    assert annotations["prometheus.io/path"] in routes


def test_containers_run_unprivileged_with_a_read_only_root(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for name, workload in _workloads(objects).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"]["memory"], name


def test_every_kadapt_variable_is_a_setting_of_its_service(
    objects: dict[tuple[str, str], dict[str, Any]],
    env_names: dict[str, str],
    unknown_env: Callable[[Iterable[str]], list[str]],
) -> None:
    config = objects[("ConfigMap", "kadapt-config")]["data"]
    assert unknown_env(config) == []
    for service in SERVICE_PORTS:
        container = _kadapt_container(objects, service)
        assert {"configMapRef": {"name": "kadapt-config"}} in container["envFrom"]
        explicit = [variable["name"] for variable in container.get("env", [])]
        assert unknown_env(explicit) == [], service
        assert all(env_names[name] == service for name in explicit if name.startswith("KADAPT_")), service
    assert config["KADAPT_GATEWAY_REDIS_URL"] == config["KADAPT_RECON_REDIS_URL"]
    assert config["KADAPT_GATEWAY_REDIS_URL"].startswith("redis://kadapt-redis:6379/")
    assert config["KADAPT_GATEWAY_SAMPLER_URL"] == "http://kadapt-sampler:8001"
    assert config["KADAPT_RECON_BLOB_DIR"] == config["KADAPT_GATEWAY_DATA_DIR"] + "/blobs"


def test_token_files_are_mounted_where_the_settings_point(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    config = objects[("ConfigMap", "kadapt-config")]["data"]
    secret_keys = set(objects[("Secret", "kadapt-tokens")]["stringData"])
    for service in SERVICE_PORTS:
        deployment = objects[("Deployment", f"kadapt-{service}")]["spec"]["template"]["spec"]
        container = deployment["containers"][0]
        volumes = {volume["name"]: volume for volume in deployment["volumes"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        path = Path(config[f"KADAPT_{service.upper()}_AUTH_TOKENS_FILE"])
        secret = volumes[mounts[str(path.parent)]]["secret"]
        assert secret["secretName"] == "kadapt-tokens"
        assert [item["path"] for item in secret["items"]] == [path.name], service
        assert {item["key"] for item in secret["items"]} <= secret_keys
    gateway_env = {v["name"]: v for v in _kadapt_container(objects, "gateway")["env"]}
    reference = gateway_env["KADAPT_GATEWAY_SAMPLER_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "kadapt-tokens", "key": "sampler-token"}


def test_gateway_and_recon_share_one_read_write_many_volume(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    claim = objects[("PersistentVolumeClaim", "kadapt-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for service in ("gateway", "recon"):
        spec = objects[("Deployment", f"kadapt-{service}")]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "kadapt-data", service
    redis = objects[("StatefulSet", "kadapt-redis")]["spec"]
    args = " ".join(redis["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args
    assert "--appendfsync everysec" in args
    assert redis["volumeClaimTemplates"][0]["metadata"]["name"] == "redis-data"


def test_hpa_scales_the_recon_deployment_on_a_metric_the_recon_service_exports(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    hpa = objects[("HorizontalPodAutoscaler", "kadapt-recon")]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "kadapt-recon")
    assert ("Deployment", target["name"]) in objects
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    [metric] = hpa["metrics"]
    name = metric["external"]["metric"]["name"]
    assert name == "kadapt_recon_queue_depth"
    sources = "".join(path.read_text() for path in (ROOT / "services" / "kadapt" / "recon").rglob("*.py"))
    assert f'"{name}"' in sources, f"the recon service registers no gauge {name}"
    documented = (ROOT / "docs" / "operations.md").read_text()
    assert name in documented
    assert "externalRules" in documented  # the prometheus-adapter rule
