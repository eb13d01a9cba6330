"""MRD HDF5 files: real files from ismrmrd-tools, write_mrd read back by ismrmrd.Dataset, errors."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest

from kadapt.errors import GeometryMismatchError, InvalidInputError, MrdDecodeError
from kadapt.kspace.fft import ifft2c
from kadapt.mrd.assemble import assemble_kspace
from kadapt.mrd.constants import AcquisitionFlag
from kadapt.mrd.files import read_mrd, read_phantom, write_mrd
from kadapt.mrd.header import make_header, parse_header
from kadapt.mrd.stream import make_acquisition


def test_read_real_file_matches_the_ismrmrd_object_api(shepp_logan_file: Callable[..., Path]) -> None:
    path = shepp_logan_file("-m", "128", "-c", "8")
    mrd = read_mrd(path)
    assert mrd.uniform
    assert len(mrd) == 128
    assert isinstance(mrd.data, np.ndarray)
    assert mrd.data.shape == (128, 8, 256)
    info = parse_header(mrd.header_xml)
    assert info.readout_oversampling == 2.0
    assert (info.height, info.width, info.receiver_channels) == (128, 128, 8)
    with ismrmrd.Dataset(str(path), "dataset", mode="r") as dataset:
        assert dataset.read_xml_header().decode() == mrd.header_xml
        for index in (0, 64, 127):
            theirs = dataset.read_acquisition(index)
            ours = mrd.acquisition(index)
            assert ours.head.tobytes() == bytes(theirs.getHead())
            np.testing.assert_array_equal(ours.data, theirs.data)
    assert [a.ky for a in mrd.acquisitions()] == list(range(128))


def test_read_real_file_with_noise_and_trajectory(shepp_logan_file: Callable[..., Path]) -> None:
    mrd = read_mrd(shepp_logan_file("-m", "64", "-c", "4", "-C", "-k"))
    first = mrd.acquisition(0)
    assert first.is_flag_set(AcquisitionFlag.ACQ_IS_NOISE_MEASUREMENT)
    # The noise readout has no trajectory, the others two dimensions: data is one array, traj a list.
    assert isinstance(mrd.data, np.ndarray)
    assert mrd.data.shape == (65, 4, 128)
    assert not mrd.uniform
    assert [t.shape for t in mrd.traj[:2]] == [(128, 0), (128, 2)]
    np.testing.assert_allclose(mrd.acquisition(1).traj[0], (-0.5, -0.5))
    with pytest.raises(GeometryMismatchError, match="trajectory dimensions"):
        mrd.batch()


def test_read_phantom(shepp_logan_file: Callable[..., Path], tmp_path: Path) -> None:
    phantom = read_phantom(shepp_logan_file("-m", "128", "-c", "8"))
    assert phantom is not None
    assert phantom.dtype == np.complex64
    assert phantom.shape == (1, 128, 128)
    assert np.abs(phantom).max() > 0
    path = tmp_path / "plain.h5"
    write_mrd(path, make_header(readout=8, width=4), [])
    assert read_phantom(path) is None


def test_write_mrd_is_read_by_ismrmrd(shepp_logan_file: Callable[..., Path], tmp_path: Path) -> None:
    source = read_mrd(shepp_logan_file("-m", "64", "-c", "4", "-a", "2", "-w", "16"))
    path = tmp_path / "copy.h5"
    write_mrd(path, source.header_xml, source.batch())
    with ismrmrd.Dataset(str(path), "dataset", mode="r") as dataset:
        assert dataset.read_xml_header().decode() == source.header_xml
        assert dataset.number_of_acquisitions() == len(source)
        for index in range(0, len(source), 17):
            theirs = dataset.read_acquisition(index)
            assert bytes(theirs.getHead()) == source.heads[index].tobytes()
            np.testing.assert_array_equal(theirs.data, source.data[index])
    copy = read_mrd(path)
    assert copy.heads.tobytes() == source.heads.tobytes()
    np.testing.assert_array_equal(copy.data, source.data)


def test_write_mrd_is_reconstructed_by_the_ismrmrd_cpp_library(
    shepp_logan_file: Callable[..., Path], tmp_path: Path
) -> None:
    if shutil.which("ismrmrd_recon_cartesian_2d") is None:
        pytest.skip("ismrmrd_recon_cartesian_2d (ismrmrd-tools) is not installed")
    source = read_mrd(shepp_logan_file("-m", "128", "-c", "8"))
    path = tmp_path / "ours.h5"
    write_mrd(path, source.header_xml, source.batch())
    subprocess.run(["ismrmrd_recon_cartesian_2d", str(path)], check=True, capture_output=True, timeout=60)
    with h5py.File(path, "r") as file:
        theirs = file["dataset/cpp/data"][...].reshape(128, 128)  # MRD image (y, x)
    assembled = assemble_kspace(source, parse_header(source.header_xml))
    ours = np.sqrt((np.abs(ifft2c(assembled.kspace[0, 0])) ** 2).sum(axis=0))  # (H = x, W = y)
    assert np.corrcoef(ours.T.ravel(), theirs.ravel())[0, 1] > 0.99


def test_write_mrd_with_mixed_shapes_and_trajectories(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = make_acquisition(
        0, rng.standard_normal((4, 40)).astype(np.complex64), flags=[AcquisitionFlag.ACQ_IS_NOISE_MEASUREMENT]
    )
    lines = [
        make_acquisition(ky, rng.standard_normal((4, 16)).astype(np.complex64), trajectory=np.ones((16, 2)))
        for ky in range(3)
    ]
    path = tmp_path / "mixed.h5"
    write_mrd(path, make_header(readout=16, width=3), [noise, *lines], group="scan")
    mrd = read_mrd(path, group="scan")
    assert not mrd.uniform
    assert [d.shape for d in mrd.data] == [(4, 40), (4, 16), (4, 16), (4, 16)]
    np.testing.assert_array_equal(mrd.data[2], lines[1].data)
    assert mrd.traj[1].shape == (16, 2)
    with pytest.raises(GeometryMismatchError, match="differ in coils, samples"):
        mrd.batch()
    with ismrmrd.Dataset(str(path), "scan", mode="r") as dataset:
        np.testing.assert_array_equal(dataset.read_acquisition(0).data, noise.data)
        np.testing.assert_array_equal(dataset.read_acquisition(3).traj, np.ones((16, 2)))
    write_mrd(path, make_header(readout=16, width=3), lines[:1], group="scan")
    assert len(read_mrd(path, group="scan")) == 1  # the group is replaced


def test_read_mrd_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    write_mrd(path, make_header(readout=8, width=2), [make_acquisition(0, np.ones((2, 8)))])
    with pytest.raises(InvalidInputError, match="no group /other"):
        read_mrd(path, group="other")
    with h5py.File(path, "a") as file:
        record = file["dataset/data"][0]
        record["data"] = np.zeros(6, dtype=np.float32)
        file["dataset/data"][0] = record
    with pytest.raises(MrdDecodeError, match="readout 0: data has 6 floats, its header implies 32"):
        read_mrd(path)
