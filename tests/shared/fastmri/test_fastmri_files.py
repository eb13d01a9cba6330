"""fastMRI HDF5 files: round trip, fastMRI's own layout, attrs, header, errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from kadapt.errors import GeometryMismatchError, InvalidInputError, NotFoundError
from kadapt.fastmri.files import FastMriVolume, fastmri_volume, read_fastmri, write_fastmri
from kadapt.kspace.fft import ifft2c
from kadapt.mrd.header import make_header, parse_header


def _volume(rng: np.random.Generator, slices: int = 3, coils: int = 4, height: int = 16, width: int = 12):
    shape = (slices, coils, height, width)
    kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    rss = np.sqrt(np.sum(np.abs(ifft2c(kspace)) ** 2, axis=1)).astype(np.float32)
    header = make_header(readout=height, width=width, slices=slices, coils=coils, fov_mm=(200.0, 150.0, 3.0))
    return fastmri_volume(
        kspace,
        header_xml=header,
        acquisition="CORPD_FBK",
        patient_id="subject-7",
        reconstruction_rss=rss,
        extra_attrs={"snr": 21.5, "slices_kept": 3, "source": "unit-test"},
        extra_arrays={"sensitivity_maps": np.ones((coils, height, width), dtype=np.complex64)},
    )


def test_round_trip_keeps_arrays_header_and_attrs(tmp_path: Path) -> None:
    volume = _volume(np.random.default_rng(0))
    path = tmp_path / "file1.h5"
    write_fastmri(path, volume)
    back = read_fastmri(path)
    assert back.kspace.dtype == np.complex64
    np.testing.assert_array_equal(back.kspace, volume.kspace)
    assert back.reconstruction_rss is not None
    assert volume.reconstruction_rss is not None
    np.testing.assert_array_equal(back.reconstruction_rss, volume.reconstruction_rss)
    assert back.header_xml == volume.header_xml
    assert dict(back.attrs) == dict(volume.attrs)
    assert isinstance(back.attrs["slices_kept"], int)
    assert isinstance(back.attrs["snr"], float)
    np.testing.assert_array_equal(
        back.extra_arrays["sensitivity_maps"], volume.extra_arrays["sensitivity_maps"]
    )
    info = parse_header(back.header_xml)
    assert (info.height, info.width) == (16, 12)


def test_file_uses_fastmri_dataset_names_and_types(tmp_path: Path) -> None:
    volume = _volume(np.random.default_rng(1))
    path = tmp_path / "file2.h5"
    write_fastmri(path, volume)
    with h5py.File(path, "r") as file:
        assert file["kspace"].shape == (3, 4, 16, 12)
        assert file["kspace"].dtype == np.complex64
        assert file["reconstruction_rss"].dtype == np.float32
        header = file["ismrmrd_header"][()]
        assert isinstance(header, bytes)
        assert header.startswith(b"<?xml")
        assert file.attrs["acquisition"] == "CORPD_FBK"
        assert file.attrs["patient_id"] == "subject-7"
        assert float(file.attrs["max"]) == pytest.approx(float(volume.reconstruction_rss.max()))


def test_max_and_norm_follow_fastmri() -> None:
    volume = _volume(np.random.default_rng(2))
    rss = volume.reconstruction_rss
    assert rss is not None
    assert volume.attrs["max"] == pytest.approx(float(rss.max()))
    assert volume.attrs["norm"] == pytest.approx(float(np.linalg.norm(rss)))


def test_single_coil_file_without_max_gets_a_coil_axis_and_computed_attrs(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    kspace = (rng.standard_normal((2, 8, 6)) + 1j * rng.standard_normal((2, 8, 6))).astype(np.complex64)
    path = tmp_path / "singlecoil.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("kspace", data=kspace)
        file.create_dataset("ismrmrd_header", data=np.bytes_(b"<ismrmrdHeader/>"))
        file.attrs["acquisition"] = "CORPD_FBK"
    back = read_fastmri(path)
    assert back.kspace.shape == (2, 1, 8, 6)
    assert back.reconstruction_rss is None
    expected = np.abs(ifft2c(kspace))
    assert back.attrs["max"] == pytest.approx(float(expected.max()), rel=1e-5)
    assert back.attrs["patient_id"] == "singlecoil"


def test_slice_range_reads_part_of_the_volume(tmp_path: Path) -> None:
    volume = _volume(np.random.default_rng(4), slices=5)
    path = tmp_path / "file3.h5"
    write_fastmri(path, volume)
    part = read_fastmri(path, slices=slice(1, 3))
    np.testing.assert_array_equal(part.kspace, volume.kspace[1:3])
    assert part.reconstruction_rss is not None
    assert part.reconstruction_rss.shape[0] == 2


def test_errors_name_the_bad_value(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"nowhere\.h5"):
        read_fastmri(tmp_path / "nowhere.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(InvalidInputError, match=r"junk\.h5"):
        read_fastmri(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "nokspace.h5", "w") as file:
        file.create_dataset("ismrmrd_header", data=np.bytes_(b"<x/>"))
    with pytest.raises(InvalidInputError, match="'kspace'"):
        read_fastmri(tmp_path / "nokspace.h5")
    flat = np.zeros((4, 4), dtype=np.complex64)
    with pytest.raises(GeometryMismatchError, match=r"\(4, 4\)"):
        FastMriVolume(flat, None, "", {"acquisition": "a", "max": 1.0, "norm": 1.0, "patient_id": "p"})
    with pytest.raises(InvalidInputError, match="norm"):
        FastMriVolume(np.zeros((1, 1, 4, 4), dtype=np.complex64), None, "", {"acquisition": "a"})
