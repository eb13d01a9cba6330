"""Readout-oversampling removal and ACS normalisation."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kadapt.errors import InvalidAccelerationError, InvalidInputError, NonFiniteDataError
from kadapt.kspace.coils import rss
from kadapt.kspace.fft import fft1c, fft2c, ifft2c
from kadapt.kspace.preprocess import (
    acs_block,
    acs_scale,
    acs_start,
    normalise_by_acs,
    remove_readout_oversampling,
)


def complex_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.mark.parametrize("height", [32, 33])
def test_removing_oversampling_of_a_zero_margin_image_round_trips(height: int) -> None:
    rng = np.random.default_rng(0)
    image = complex_normal(rng, (4, height, 20))  # (coil, H, W), the prescribed field of view
    oversampled_height = 2 * height
    padded = np.zeros((4, oversampled_height, 20), np.complex64)
    start = oversampled_height // 2 - height // 2
    padded[:, start : start + height] = image
    oversampled_kspace = fft2c(padded)
    kspace = remove_readout_oversampling(oversampled_kspace)
    assert kspace.shape == (4, height, 20)
    assert kspace.dtype == np.complex64
    np.testing.assert_allclose(kspace, fft2c(image), atol=1e-5)


def test_removing_oversampling_along_the_sample_axis_of_mrd_readouts() -> None:
    rng = np.random.default_rng(1)
    profile = complex_normal(rng, (8, 64))  # (coil, samples) after removal
    padded = np.zeros((8, 128), np.complex64)
    padded[:, 32:96] = profile
    readouts = fft1c(padded, axis=-1)
    np.testing.assert_allclose(remove_readout_oversampling(readouts, axis=-1), fft1c(profile), atol=1e-5)


def test_removing_oversampling_rejects_bad_factors() -> None:
    kspace = np.zeros((2, 10, 4), np.complex64)
    with pytest.raises(InvalidInputError, match="factor 3"):
        remove_readout_oversampling(kspace, factor=3)
    with pytest.raises(InvalidInputError, match="factor"):
        remove_readout_oversampling(kspace, factor=0)
    with pytest.raises(InvalidInputError, match="axis 5"):
        remove_readout_oversampling(kspace, axis=5)
    assert remove_readout_oversampling(kspace, factor=1) is kspace


def test_oversampling_removal_on_an_ismrmrd_generated_raw_file(tmp_path: Path) -> None:
    """A real MRD raw file with 2x readout oversampling, written by ISMRMRD's own generator."""
    tool = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
    if tool is None:
        pytest.skip("ismrmrd-tools is not installed (make setup installs it as root)")
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "phantom.h5"
    subprocess.run([tool, "-m", "64", "-c", "4", "-n", "0", "-o", str(path)], check=True, capture_output=True)
    with h5py.File(path, "r") as file:
        acquisitions = file["dataset/data"][:]
        phantom = file["dataset/phantom"][0]
        csm = file["dataset/csm"][0]
    samples = int(acquisitions["head"]["number_of_samples"][0])
    assert samples == 128
    kspace = np.zeros((4, samples, 64), np.complex64)  # (coil, H = readout, W = ky)
    for acquisition in acquisitions:
        ky = acquisition["head"]["idx"]["kspace_encode_step_1"]
        kspace[:, :, ky] = acquisition["data"].view(np.complex64).reshape(4, samples)
    image = rss(ifft2c(remove_readout_oversampling(kspace)))
    assert image.shape == (64, 64)
    # The generator stores images (y, x); ours are (x = readout, y = ky).
    expected = (
        np.abs(phantom["real"] + 1j * phantom["imag"]) * rss(csm["real"] + 1j * csm["imag"], axis=0)
    ).T
    assert np.corrcoef(image.ravel(), expected.ravel())[0, 1] > 0.99


@pytest.mark.parametrize(
    ("width", "num_acs", "start"), [(320, 24, 148), (321, 24, 148), (80, 7, 37), (10, 10, 0)]
)
def test_acs_block_is_the_centred_columns(width: int, num_acs: int, start: int) -> None:
    assert acs_start(width, num_acs) == start
    kspace = np.broadcast_to(np.arange(width, dtype=np.complex64), (2, 3, width))
    np.testing.assert_array_equal(acs_block(kspace, num_acs)[0, 0].real, np.arange(start, start + num_acs))


def test_acs_block_rejects_impossible_sizes() -> None:
    with pytest.raises(InvalidAccelerationError, match="num_acs=11"):
        acs_start(10, 11)


def test_acs_scale_is_the_995th_percentile_of_the_acs_magnitude() -> None:
    rng = np.random.default_rng(2)
    kspace = complex_normal(rng, (2, 4, 16, 40))
    start = 40 // 2 - 8 // 2
    expected = np.percentile(np.abs(kspace[..., start : start + 8]), 99.5)
    assert acs_scale(kspace, 8) == pytest.approx(float(expected), rel=1e-6)
    # Samples outside the ACS block do not move the scale.
    kspace[..., 0] *= 1000
    assert acs_scale(kspace, 8) == pytest.approx(float(expected), rel=1e-6)


def test_normalise_by_acs_is_scale_invariant_and_keeps_complex64() -> None:
    rng = np.random.default_rng(3)
    kspace = complex_normal(rng, (4, 16, 40))
    normalised, scale = normalise_by_acs(kspace, 10)
    rescaled, rescale = normalise_by_acs((37.5 * kspace).astype(np.complex64), 10)
    assert normalised.dtype == np.complex64
    assert rescale == pytest.approx(37.5 * scale, rel=1e-5)
    np.testing.assert_allclose(rescaled, normalised, rtol=1e-5, atol=1e-6)
    assert acs_scale(normalised, 10) == pytest.approx(1.0, rel=1e-5)


def test_acs_scale_rejects_empty_and_non_finite_acs() -> None:
    kspace = np.zeros((2, 8, 16), np.complex64)
    kspace[..., 0] = 1.0  # signal only outside the ACS block
    with pytest.raises(InvalidInputError, match="no signal"):
        acs_scale(kspace, 4)
    kspace[..., 8] = np.nan
    with pytest.raises(NonFiniteDataError, match="NaN"):
        normalise_by_acs(kspace, 4)
