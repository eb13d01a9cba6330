"""Deferred removal of deleted scans' directories (``kadapt.gateway.domain.trash``)."""

from __future__ import annotations

from pathlib import Path

from kadapt.gateway.domain.trash import Trash


def _scan_dir(root: Path, name: str) -> Path:
    directory = root / name
    (directory / "noise").mkdir(parents=True)
    (directory / "kspace.npy").write_bytes(b"\0" * 4096)
    return directory


def test_discard_moves_the_directory_away_at_once_and_empty_removes_it(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    directory = _scan_dir(scans, "a" * 32)
    other = _scan_dir(scans, "b" * 32)
    trash = Trash(scans)
    trash.discard(directory)
    assert not directory.exists()
    assert other.exists()  # only the discarded scan moves
    folder = Trash.folder_for(scans)
    assert folder == tmp_path / ".scans-trash"
    (moved,) = folder.iterdir()
    assert moved.name.startswith("a" * 32)
    assert (moved / "kspace.npy").stat().st_size == 4096
    trash.empty()
    assert list(folder.iterdir()) == []
    assert other.exists()


def test_discarding_a_missing_directory_is_not_an_error(tmp_path: Path) -> None:
    trash = Trash(tmp_path / "scans")
    trash.discard(tmp_path / "scans" / "nothing-here")
    trash.discard(tmp_path / "gone" / "parent" / "missing")
    trash.empty()
    assert not (tmp_path / "scans").exists()


def test_the_same_scan_discarded_twice_keeps_both_until_emptied(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    trash = Trash(scans)
    trash.discard(_scan_dir(scans, "c" * 32))
    trash.discard(_scan_dir(scans, "c" * 32))
    assert len(list(Trash.folder_for(scans).iterdir())) == 2
    trash.empty()
    assert list(Trash.folder_for(scans).iterdir()) == []


def test_a_new_process_empties_what_an_earlier_one_left(tmp_path: Path) -> None:
    scans, blobs = tmp_path / "scans", tmp_path / "blobs" / "scans"
    Trash(scans, blobs).discard(_scan_dir(scans, "d" * 32))
    Trash(scans, blobs).discard(_scan_dir(blobs, "d" * 32))
    # The first processes died before emptying; a new one knows the folders from its settings alone.
    Trash(scans, blobs).empty()
    assert list(Trash.folder_for(scans).iterdir()) == []
    assert list(Trash.folder_for(blobs).iterdir()) == []
