"""kadapt.bundles: write / load / verify, tampering, missing bundles, latest-version pick."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kadapt.bundles import (
    BundleGeometry,
    Manifest,
    list_bundle_refs,
    list_bundles,
    load_bundle,
    natural_version_key,
    utc_now,
    write_bundle,
)
from kadapt.errors import BundleError, BundleNotFoundError, ChecksumMismatchError


def make_manifest(name: str = "demo-mask", version: str = "1", **changes: object) -> Manifest:
    fields: dict[str, object] = {
        "name": name,
        "version": version,
        "kind": "fixed-mask",
        "geometry": BundleGeometry(ky=64),
        "accelerations": (4.0,),
        "num_acs": 8,
        "code_version": "test",
        "created": utc_now(),
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_write_then_load_verifies_every_file(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"\x00\x01" * 1000)
    written = write_bundle(
        tmp_path / "repo", make_manifest(), {"mask.npy": b"mask-bytes", "model.pt": source}
    )

    loaded = load_bundle(tmp_path / "repo", "demo-mask", "1")

    assert loaded.path == tmp_path / "repo" / "demo-mask" / "1"
    assert loaded.manifest == written.manifest
    assert loaded.manifest.files == {
        "mask.npy": hashlib.sha256(b"mask-bytes").hexdigest(),
        "model.pt": hashlib.sha256(source.read_bytes()).hexdigest(),
    }
    assert loaded.file("model.pt").read_bytes() == source.read_bytes()
    on_disk = json.loads((loaded.path / "manifest.json").read_text())
    assert on_disk["files"] == loaded.manifest.files
    assert on_disk["kind"] == "fixed-mask"
    # nothing left behind by the staged write
    assert sorted(p.name for p in (tmp_path / "repo" / "demo-mask").iterdir()) == ["1"]


def test_tampered_file_raises_checksum_mismatch_naming_it(tmp_path: Path) -> None:
    write_bundle(tmp_path, make_manifest(), {"mask.npy": b"original", "model.onnx": b"graph"})
    (tmp_path / "demo-mask" / "1" / "model.onnx").write_bytes(b"graph, edited")

    with pytest.raises(ChecksumMismatchError, match=r"'model\.onnx'") as info:
        load_bundle(tmp_path, "demo-mask")
    assert info.value.extra["file"] == "model.onnx"
    assert info.value.slug == "checksum-mismatch"


def test_missing_listed_file_is_a_bundle_error(tmp_path: Path) -> None:
    write_bundle(tmp_path, make_manifest(), {"mask.npy": b"original"})
    (tmp_path / "demo-mask" / "1" / "mask.npy").unlink()
    with pytest.raises(BundleError, match=r"'mask\.npy'.*missing"):
        load_bundle(tmp_path, "demo-mask", "1")


def test_missing_bundle_names_what_was_looked_for(tmp_path: Path) -> None:
    write_bundle(tmp_path, make_manifest(), {"mask.npy": b"x"})
    with pytest.raises(BundleNotFoundError, match="no version of bundle 'other'"):
        load_bundle(tmp_path, "other")
    with pytest.raises(BundleNotFoundError, match="demo-mask/7"):
        load_bundle(tmp_path, "demo-mask", "7")
    with pytest.raises(BundleNotFoundError, match=r"\.\./etc"):
        load_bundle(tmp_path, "../etc")
    with pytest.raises(BundleNotFoundError):
        load_bundle(tmp_path, "demo-mask", "../1")


def test_latest_version_is_the_highest_natural_version(tmp_path: Path) -> None:
    for version in ("2", "10", "9"):
        write_bundle(tmp_path, make_manifest(version=version), {"mask.npy": version.encode()})
    assert load_bundle(tmp_path, "demo-mask").manifest.version == "10"
    assert load_bundle(tmp_path, "demo-mask", "9").file("mask.npy").read_bytes() == b"9"
    assert [ref.version for ref in list_bundle_refs(tmp_path)] == ["2", "9", "10"]


def test_natural_version_key_orders_numbers_as_numbers() -> None:
    versions = ["1.10", "1.9", "10", "2", "1.9b", "1.9a"]
    assert sorted(versions, key=natural_version_key) == ["1.9", "1.9a", "1.9b", "1.10", "2", "10"]


def test_versions_are_immutable_unless_overwritten(tmp_path: Path) -> None:
    write_bundle(tmp_path, make_manifest(), {"mask.npy": b"first"})
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(tmp_path, make_manifest(), {"mask.npy": b"second"})
    replaced = write_bundle(tmp_path, make_manifest(), {"mask.npy": b"second"}, overwrite=True)
    assert replaced.file("mask.npy").read_bytes() == b"second"
    assert sorted(p.name for p in (tmp_path / "demo-mask").iterdir()) == ["1"]


@pytest.mark.parametrize("filename", ["../escape.npy", "sub/mask.npy", "manifest.json", ".hidden", ""])
def test_write_refuses_non_plain_file_names(tmp_path: Path, filename: str) -> None:
    with pytest.raises(BundleError, match="plain bundle file name"):
        write_bundle(tmp_path, make_manifest(), {filename: b"x"})


def test_list_bundles_returns_manifests_sorted(tmp_path: Path) -> None:
    write_bundle(tmp_path, make_manifest(name="zeta"), {"mask.npy": b"z"})
    write_bundle(tmp_path, make_manifest(name="alpha", kind="modl"), {"model.onnx": b"a"})
    write_bundle(tmp_path, make_manifest(name="alpha", version="2", kind="modl"), {"model.onnx": b"b"})
    manifests = list_bundles(tmp_path)
    assert [m.ref for m in manifests] == ["alpha/1", "alpha/2", "zeta/1"]
    assert list_bundles(tmp_path / "nowhere") == []


def test_invalid_or_misplaced_manifest_is_a_bundle_error(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, make_manifest(), {"mask.npy": b"x"})
    manifest_path = bundle.path / "manifest.json"
    document = json.loads(manifest_path.read_text())

    manifest_path.write_text(json.dumps({**document, "surprise": 1}))
    with pytest.raises(BundleError, match="surprise"):
        load_bundle(tmp_path, "demo-mask")

    manifest_path.write_text(json.dumps({**document, "name": "someone-else"}))
    with pytest.raises(BundleError, match="someone-else/1 but lives in demo-mask/1"):
        load_bundle(tmp_path, "demo-mask")


def test_manifest_is_strict() -> None:
    with pytest.raises(ValueError, match="accelerations"):
        make_manifest(accelerations=(1.0,))
    with pytest.raises(ValueError, match="kind"):
        make_manifest(kind="resnet")
    with pytest.raises(ValueError, match="sha256"):
        make_manifest(files={"mask.npy": "not-a-digest"})
    with pytest.raises(ValueError, match="name"):
        make_manifest(name="Bad Name")
    with pytest.raises(ValueError, match="created"):
        make_manifest(created="2024-01-01")
