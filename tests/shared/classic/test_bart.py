"""BART wrapper: .cfl/.hdr files against the real ``bart`` executable, pics on a phantom, the error paths."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kadapt.classic.bart import (
    BART_ENV,
    bart_available,
    bart_pics,
    find_bart,
    read_cfl,
    write_cfl,
)
from kadapt.errors import DependencyUnavailableError, ExternalToolError, GeometryMismatchError
from kadapt.kspace.coils import rss
from kadapt.kspace.fft import ifft2c

NUM_ACS = 8


def _random_complex(shape: tuple[int, ...], seed: int) -> np.ndarray[Any, np.dtype[np.complex64]]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.mark.parametrize("shape", [(3, 5, 1, 2), (7, 3), (5,), (2, 1, 3), (1, 4, 1, 1, 3)])
def test_cfl_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    array = _random_complex(shape, seed=len(shape))
    write_cfl(tmp_path / "a", array)
    header = (tmp_path / "a.hdr").read_text().splitlines()
    assert header[0] == "# Dimensions"
    assert [int(d) for d in header[1].split()] == [*shape, *[1] * (16 - len(shape))]
    assert (tmp_path / "a.cfl").stat().st_size == array.size * 8
    back = read_cfl(tmp_path / "a")
    assert back.dtype == np.complex64
    np.testing.assert_array_equal(back, array)  # no trailing singleton dims in these shapes


def test_read_cfl_drops_trailing_singletons(tmp_path: Path) -> None:
    array = _random_complex((4, 3, 1, 1), seed=0)
    write_cfl(tmp_path / "a", array)
    np.testing.assert_array_equal(read_cfl(tmp_path / "a"), array[:, :, 0, 0])


def test_cfl_layout_matches_bart(tmp_path: Path) -> None:
    """BART reads our file as column-major: its transpose of dims 0 and 1 is numpy's transpose."""
    array = _random_complex((3, 5), seed=1)
    write_cfl(tmp_path / "a", array)
    subprocess.run([find_bart(), "transpose", "0", "1", str(tmp_path / "a"), str(tmp_path / "b")], check=True)
    np.testing.assert_array_equal(read_cfl(tmp_path / "b"), array.T)
    subprocess.run([find_bart(), "ones", "2", "3", "5", str(tmp_path / "ones")], check=True)
    np.testing.assert_array_equal(read_cfl(tmp_path / "ones"), np.ones((3, 5), dtype=np.complex64))


def _phantom_slice(size: int = 64, coils: int = 4) -> np.ndarray[Any, np.dtype[np.complex64]]:
    import sigpy
    import sigpy.mri

    from kadapt.kspace.fft import fft2c

    image = sigpy.shepp_logan((size, size)).astype(np.complex64) * np.float32(50.0)
    maps = sigpy.mri.birdcage_maps((coils, size, size)).astype(np.complex64)
    return fft2c(maps * image).astype(np.complex64)


def _psnr(reference: np.ndarray[Any, Any], estimate: np.ndarray[Any, Any]) -> float:
    mse = float(np.mean((reference.astype(np.float64) - estimate) ** 2))
    return float(10 * np.log10(float(reference.max()) ** 2 / mse))


def test_pics_beats_zero_filled_and_scales_with_the_input(
    tmp_path: Path, vd_mask: Callable[..., np.ndarray[Any, Any]]
) -> None:
    kspace = _phantom_slice()
    reference = rss(ifft2c(kspace), axis=0)
    mask = vd_mask(kspace.shape[-1], 4.0, NUM_ACS, np.random.default_rng(0))
    undersampled = np.where(mask[None, None, :], kspace, 0).astype(np.complex64)
    result = bart_pics(undersampled, NUM_ACS, 1e-3, iterations=50, workdir=tmp_path, threads=1)
    assert result.image.shape == reference.shape
    assert result.image.dtype == np.float32
    assert result.calib_s > 0
    assert result.pics_s > 0
    zero_filled = rss(ifft2c(undersampled), axis=0)
    assert _psnr(reference, result.image) > _psnr(reference, zero_filled) + 3.0
    # ACS normalisation in, scale back out: a 1000x brighter slice reconstructs 1000x brighter.
    brighter = bart_pics(undersampled * np.float32(1000.0), NUM_ACS, 1e-3, iterations=50, threads=1)
    tolerance = 1e-3 * float(result.image.max())
    np.testing.assert_allclose(brighter.image, result.image * 1000.0, rtol=1e-3, atol=tolerance * 1000.0)


def test_pics_refuses_bad_shapes() -> None:
    with pytest.raises(GeometryMismatchError, match=r"\(coil, H, W\)"):
        bart_pics(np.zeros((1, 4, 8, 8), dtype=np.complex64), 4, 1e-3)


def test_missing_bart_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bart on PATH
    monkeypatch.delenv(BART_ENV, raising=False)
    assert not bart_available()
    with pytest.raises(DependencyUnavailableError, match="no 'bart' executable on PATH") as caught:
        find_bart()
    assert caught.value.slug == "dependency-unavailable"
    with pytest.raises(DependencyUnavailableError):
        bart_pics(_phantom_slice(16, 2), 4, 1e-3)
    monkeypatch.setenv(BART_ENV, str(tmp_path / "no-such-bart"))
    with pytest.raises(DependencyUnavailableError, match="no-such-bart"):
        find_bart()


def test_kadapt_bart_names_the_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_bart()
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(BART_ENV, real)
    assert bart_available()
    assert find_bart() == real


def test_bart_failure_carries_its_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake-bart"
    fake.write_text(
        "#!/bin/sh\necho 'noise on stdout'\necho 'ecalib: calibration region too small' >&2\nexit 3\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv(BART_ENV, str(fake))
    with pytest.raises(ExternalToolError, match="status 3: ecalib: calibration region too small") as caught:
        bart_pics(_phantom_slice(16, 2), 4, 1e-3, workdir=tmp_path / "work")
    assert caught.value.slug == "external-tool-failed"
    assert caught.value.extra["returncode"] == 3
