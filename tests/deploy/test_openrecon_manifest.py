"""The OpenRecon-style manifest describes what kadapt actually serves: parameters are the MRD config
keys with ScanPolicy's defaults and ranges, every choice exists, the config template parses back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le

from kadapt.bundles import Manifest
from kadapt.gateway.mrd_server.config import KNOWN_KEYS, parse_config
from kadapt.masks import mask_families
from kadapt.recon.domain.methods import classic_methods
from kadapt.schemas import ScanPolicy

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "openrecon" / "kadapt-openrecon.json"
# manifest parameter id -> ScanPolicy field
POLICY_FIELDS = {
    "policy": "sampler",
    "R": "acceleration",
    "acs": "num_acs",
    "recon": "recon",
    "deadline_ms": "plan_deadline_ms",
    "fallback": "fallback",
    "seed": "seed",
}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(MANIFEST.read_text())
    return document


def parameters(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {parameter["id"]: parameter for parameter in manifest["parameters"]}


def served_line_families() -> set[str]:
    return {
        name
        for name, family in mask_families().items()
        if family.dims in ("1d", "kt") and not family.population
    }


def test_identity_ports_and_container(manifest: dict[str, Any]) -> None:
    assert manifest["general"]["id"] == "kadapt"
    assert manifest["reconstruction"]["port"] == 9002
    assert manifest["reconstruction"]["transfer_protocol"]["protocol"] == "ISMRMRD"
    container = manifest["container"]
    assert container["entrypoint"][:2] == ["kadapt", "up"]
    assert {port["port"] for port in container["ports"] if port["required"]} == {9002}
    assert {volume["path"] for volume in container["volumes"]} == {"/data", "/opt/kadapt/models"}
    assert set(container["images"]) == {"cpu", "gpu"}
    assert manifest["outputs"][-1]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.4"


def test_parameters_are_the_mrd_config_keys(manifest: dict[str, Any]) -> None:
    known = {key.lower() for key in KNOWN_KEYS}
    assert {key.lower() for key in parameters(manifest)} <= known


def test_defaults_and_ranges_are_scan_policys(manifest: dict[str, Any]) -> None:
    fields = ScanPolicy.model_fields
    for key, name in POLICY_FIELDS.items():
        parameter = parameters(manifest)[key]
        assert parameter["default"] == fields[name].default, key
        for bound in fields[name].metadata:
            if isinstance(bound, Gt):
                assert parameter["exclusiveMinimum"] == bound.gt, key
            if isinstance(bound, Ge):
                assert parameter["minimum"] == bound.ge, key
            if isinstance(bound, Le):
                assert parameter["maximum"] == bound.le, key
    assert parameters(manifest)["mode"]["default"] == "retrospective"  # the MRD server's default


def test_every_choice_is_served(manifest: dict[str, Any]) -> None:
    params = parameters(manifest)
    bundles = {
        Manifest.model_validate_json(path.read_text()).name
        for path in (ROOT / "models").glob("*/*/manifest.json")
    }
    assert set(params["policy"]["values"]) <= served_line_families() | bundles
    assert set(params["fallback"]["values"]) <= served_line_families()
    assert set(params["recon"]["values"]) <= {method.name for method in classic_methods()}
    for parameter in manifest["parameters"]:
        if parameter["type"] == "choice":
            assert parameter["default"] in parameter["values"], parameter["id"]


def test_the_config_template_parses_back_to_the_defaults(manifest: dict[str, Any]) -> None:
    defaults = {key: parameter["default"] for key, parameter in parameters(manifest).items()}
    config = parse_config(manifest["config"]["template"].format(**defaults))
    assert config.policy == ScanPolicy(retrospective=True)
