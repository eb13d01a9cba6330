"""BlobStore: atomic .npy round trip, sha256 over the file bytes, path confinement, a full volume."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from kadapt.errors import ChecksumMismatchError, InsufficientStorageError, InvalidInputError, NotFoundError
from kadapt.jobs.blobs import BlobStore


def test_round_trip_keeps_dtype_shape_and_values(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    rng = np.random.default_rng(0)
    kspace = (rng.standard_normal((2, 1, 4, 8, 6)) + 1j * rng.standard_normal((2, 1, 4, 8, 6))).astype(
        np.complex64
    )
    path, sha = store.put_array("scan-a/job-1/kspace", kspace)

    assert Path(path) == tmp_path.resolve() / "scan-a" / "job-1" / "kspace.npy"
    assert sha == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert store.file_sha256(path) == sha
    loaded = store.get_array(path, sha)
    assert loaded.dtype == np.complex64
    np.testing.assert_array_equal(loaded, kspace)
    # Paths relative to the root resolve to the same blob.
    np.testing.assert_array_equal(store.get_array("scan-a/job-1/kspace.npy", sha), kspace)
    # No temporary files are left next to the blob.
    assert sorted(p.name for p in Path(path).parent.iterdir()) == ["kspace.npy"]


def test_overwrite_is_atomic_replace_and_changes_checksum(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    path_a, sha_a = store.put_array("mask", np.zeros(8, dtype=bool))
    path_b, sha_b = store.put_array("mask", np.ones(8, dtype=bool))
    assert path_a == path_b
    assert sha_a != sha_b
    with pytest.raises(ChecksumMismatchError):
        store.get_array(path_a, sha_a)
    assert store.get_array(path_b, sha_b).all()


def test_checksum_mismatch_names_the_path(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    path, sha = store.put_array("images", np.arange(12, dtype=np.float32).reshape(3, 4))
    data = bytearray(Path(path).read_bytes())
    data[-1] ^= 0xFF  # corrupt one byte of the payload
    Path(path).write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match=r"images\.npy") as caught:
        store.get_array(path, sha)
    assert caught.value.to_problem()["path"] == path
    assert caught.value.slug == "checksum-mismatch"


@pytest.mark.parametrize("escape", ["../outside.npy", "/etc/passwd", "a/../../outside.npy"])
def test_paths_outside_the_root_are_rejected(tmp_path: Path, escape: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros(3))
    store = BlobStore(root)
    with pytest.raises(InvalidInputError, match="outside the blob root"):
        store.get_array(escape, "0" * 64)
    with pytest.raises(InvalidInputError):
        store.delete(escape)
    assert outside.exists()


def test_symlink_escaping_the_root_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros(3))
    (root / "link.npy").symlink_to(secret)
    with pytest.raises(InvalidInputError, match="outside the blob root"):
        BlobStore(root).get_array("link.npy", "0" * 64)


@pytest.mark.parametrize("key", ["../up", "/abs", "a//b", "a/../b", "", "sp ace", ".hidden"])
def test_bad_keys_are_rejected(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidInputError, match="blob key"):
        BlobStore(tmp_path).put_array(key, np.zeros(2))


def test_missing_and_invalid_blobs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(NotFoundError, match=r"missing\.npy"):
        store.get_array("missing.npy", "0" * 64)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not an npy file")
    with pytest.raises(InvalidInputError, match=r"not a valid \.npy"):
        store.get_array(garbage, hashlib.sha256(b"not an npy file").hexdigest())
    with pytest.raises(InvalidInputError, match="object arrays"):
        store.put_array("objects", np.array([object()]))


def test_delete(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    path, _ = store.put_array("x", np.zeros(2))
    assert store.delete(path) is True
    assert not Path(path).exists()
    assert store.delete(path) is False


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_volume_is_typed_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def full(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    store = BlobStore(tmp_path)
    monkeypatch.setattr(os, "fsync", full)  # the bytes are written, flushing them fails
    with pytest.raises(InsufficientStorageError, match="volume is full") as caught:
        store.put_array("scans/a/kspace", np.zeros(3))
    assert caught.value.status == 507
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []


def test_other_write_errors_stay_os_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output") as caught:
        BlobStore(tmp_path).put_array("x", np.zeros(3))
    assert caught.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []
