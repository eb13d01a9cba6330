"""assemble_kspace on real MRD files and synthetic readouts; kspace_to_acquisitions as its inverse."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kadapt.errors import EncodeOutOfRangeError, GeometryMismatchError, InvalidHeaderError, NonFiniteDataError
from kadapt.kspace.fft import ifft2c
from kadapt.mrd.assemble import acs_columns, assemble_kspace, kspace_to_acquisitions
from kadapt.mrd.constants import AcquisitionFlag
from kadapt.mrd.files import read_mrd, read_phantom
from kadapt.mrd.header import EncodingInfo, make_header, parse_header
from kadapt.mrd.stream import Acquisition, decode_acquisitions, encode_acquisitions, make_acquisition

Flag = AcquisitionFlag


def rss_image(kspace: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares magnitude of coil k-space (coil, H, W) -> (H, W)."""
    image: np.ndarray = np.sqrt((np.abs(ifft2c(kspace)) ** 2).sum(axis=0))
    return image


def correlation_with_phantom(path: Path, kspace: np.ndarray) -> float:
    phantom = read_phantom(path)
    assert phantom is not None
    # The phantom is stored (z, y, x) with x the readout; kadapt's image is (H = readout, W = phase).
    reference = np.abs(phantom[0]).T
    return float(np.corrcoef(rss_image(kspace).ravel(), reference.ravel())[0, 1])


def random_kspace(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def test_real_fully_sampled_file_reconstructs_the_phantom(shepp_logan_file: Callable[..., Path]) -> None:
    path = shepp_logan_file("-m", "128", "-c", "8")
    mrd = read_mrd(path)
    assembled = assemble_kspace(mrd, parse_header(mrd.header_xml))
    assert assembled.kspace.shape == (1, 1, 8, 128, 128)  # readout oversampling 2 removed
    assert assembled.sampled.all()
    assert not assembled.calibration_lines.any()
    assert assembled.noise is None
    assert assembled.reference is None
    assert assembled.imaging_readouts == 128
    assert correlation_with_phantom(path, assembled.kspace[0, 0]) >= 0.95


def test_real_file_with_calibration_lines(shepp_logan_file: Callable[..., Path]) -> None:
    # -a 2 -w 16: two repetitions each sample every other line; in the 16 central lines the other
    # repetition's lines come as calibration-only readouts (ACQ_IS_PARALLEL_CALIBRATION).
    path = shepp_logan_file("-m", "128", "-c", "8", "-a", "2", "-w", "16")
    mrd = read_mrd(path)
    info = parse_header(mrd.header_xml)
    assembled = assemble_kspace(mrd, info)
    assert info.repetitions == 2
    assert np.flatnonzero(assembled.calibration_lines).tolist() == list(range(56, 72))
    assert assembled.reference is not None
    assert assembled.reference_sampled is not None
    assert np.flatnonzero(assembled.reference_sampled[0, 0]).tolist() == list(range(56, 72))
    assert assembled.sampled.all()  # the repetitions are merged into one frame
    assert assembled.imaging_readouts == 128
    assert correlation_with_phantom(path, assembled.kspace[0, 0]) >= 0.95


def test_real_file_noise_readout_is_set_aside(shepp_logan_file: Callable[..., Path]) -> None:
    path = shepp_logan_file("-m", "128", "-c", "8", "-C")
    mrd = read_mrd(path)
    assembled = assemble_kspace(mrd, parse_header(mrd.header_xml))
    assert assembled.noise is not None
    assert assembled.noise.shape == (8, 256)
    np.testing.assert_array_equal(assembled.noise, mrd.data[0])
    assert assembled.imaging_readouts == 128
    assert correlation_with_phantom(path, assembled.kspace[0, 0]) >= 0.95


@pytest.mark.parametrize("oversampling", [1, 2])
def test_kspace_to_acquisitions_is_inverted_by_assembly(oversampling: int) -> None:
    rng = np.random.default_rng(0)
    kspace = random_kspace(rng, (2, 3, 4, 16, 12))
    mask = rng.random((2, 3, 12)) < 0.4
    batch = kspace_to_acquisitions(kspace, num_acs=4, readout_oversampling=oversampling, mask=mask)
    assert batch.data.shape[1:] == (4, 16 * oversampling)
    acquired = mask | acs_columns(12, 4)
    assert len(batch) == acquired.sum()
    header = make_header(readout=16 * oversampling, width=12, recon_readout=16, slices=2, frames=3, coils=4)
    assembled = assemble_kspace(batch, parse_header(header))
    np.testing.assert_array_equal(assembled.sampled, acquired)
    np.testing.assert_array_equal(assembled.calibration_lines, acs_columns(12, 4))
    expected = np.where(acquired[:, :, None, None, :], kspace, 0)
    np.testing.assert_allclose(assembled.kspace, expected, atol=1e-5)


def test_kspace_to_acquisitions_flags_and_counters() -> None:
    batch = kspace_to_acquisitions(np.ones((1, 2, 2, 8, 8), np.complex64), num_acs=2, mask=np.zeros(8, bool))
    acquisitions = batch.acquisitions()
    assert [(a.phase, a.ky) for a in acquisitions] == [(0, 3), (0, 4), (1, 3), (1, 4)]
    assert all(a.is_flag_set(Flag.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING) for a in acquisitions)
    first, last = acquisitions[0], acquisitions[1]
    assert first.is_flag_set(Flag.ACQ_FIRST_IN_ENCODE_STEP1)
    assert first.is_flag_set(Flag.ACQ_FIRST_IN_SLICE)
    assert last.is_flag_set(Flag.ACQ_LAST_IN_ENCODE_STEP1)
    assert last.is_flag_set(Flag.ACQ_LAST_IN_SLICE)
    assert not last.is_flag_set(Flag.ACQ_LAST_IN_MEASUREMENT)
    assert acquisitions[-1].is_flag_set(Flag.ACQ_LAST_IN_MEASUREMENT)
    assert [a.scan_counter for a in acquisitions] == [1, 2, 3, 4]
    shifted = kspace_to_acquisitions(np.ones((1, 1, 1, 4, 8), np.complex64), num_acs=2, center_line=10)
    assert [a.ky for a in shifted.acquisitions()][:2] == [6, 7]  # ky = column - 4 + 10


def test_list_of_acquisitions_and_bulk_codec_give_the_same_kspace() -> None:
    rng = np.random.default_rng(1)
    kspace = random_kspace(rng, (1, 1, 3, 8, 10))
    batch = kspace_to_acquisitions(kspace, num_acs=4, readout_oversampling=2)
    info = parse_header(make_header(readout=16, width=10, recon_readout=8, coils=3))
    from_batch = assemble_kspace(batch, info).kspace
    from_list = assemble_kspace(batch.acquisitions(), info).kspace
    decoded = decode_acquisitions(encode_acquisitions(batch.heads, batch.data))
    np.testing.assert_array_equal(from_list, from_batch)
    np.testing.assert_array_equal(assemble_kspace(decoded, info).kspace, from_batch)


def lines(
    rng: np.random.Generator, columns: list[int], coils: int = 2, samples: int = 8, **kwargs: Any
) -> list[Acquisition]:
    return [make_acquisition(c, random_kspace(rng, (coils, samples)), **kwargs) for c in columns]


def small_info(**kwargs: Any) -> EncodingInfo:
    return parse_header(make_header(readout=8, width=8, coils=2, **kwargs))


def test_calibration_only_lines_fill_only_lines_without_imaging() -> None:
    rng = np.random.default_rng(2)
    imaging = lines(rng, [0, 2, 4, 6])
    calibration = lines(rng, [2, 3, 4, 5], flags=[Flag.ACQ_IS_PARALLEL_CALIBRATION])
    assembled = assemble_kspace(imaging + calibration, small_info())
    assert np.flatnonzero(assembled.sampled[0, 0]).tolist() == [0, 2, 3, 4, 5, 6]
    assert np.flatnonzero(assembled.calibration_lines).tolist() == [2, 3, 4, 5]
    assert assembled.reference is not None
    np.testing.assert_array_equal(assembled.kspace[0, 0, :, :, 2], imaging[1].data)  # imaging wins
    np.testing.assert_array_equal(assembled.kspace[0, 0, :, :, 3], calibration[1].data)  # filled
    np.testing.assert_array_equal(assembled.reference[0, 0, :, :, 2], calibration[0].data)
    assert assembled.imaging_readouts == 4


def test_reverse_readouts_are_flipped_and_repeats_averaged() -> None:
    rng = np.random.default_rng(3)
    (forward,) = lines(rng, [1])
    reverse = make_acquisition(1, forward.data[:, ::-1], flags=[Flag.ACQ_IS_REVERSE], average=1)
    assembled = assemble_kspace([forward, reverse], small_info())
    np.testing.assert_allclose(assembled.kspace[0, 0, :, :, 1], forward.data, rtol=1e-6)
    (other,) = lines(rng, [1], average=2)
    averaged = assemble_kspace([forward, other], small_info()).kspace[0, 0, :, :, 1]
    np.testing.assert_allclose(averaged, (forward.data + other.data) / 2, rtol=1e-5)


def test_navigator_and_phase_correction_readouts_are_ignored_and_counted() -> None:
    rng = np.random.default_rng(4)
    imaging = lines(rng, [4])
    extra = (
        lines(rng, [4], flags=[Flag.ACQ_IS_NAVIGATION_DATA])
        + lines(rng, [4, 4], flags=[Flag.ACQ_IS_PHASECORR_DATA])
        + lines(rng, [99], flags=[Flag.ACQ_IS_DUMMYSCAN_DATA])  # out of range, but ignored
    )
    assembled = assemble_kspace(extra + imaging, small_info())
    assert assembled.skipped == {
        "ACQ_IS_NAVIGATION_DATA": 1, "ACQ_IS_PHASECORR_DATA": 2, "ACQ_IS_DUMMYSCAN_DATA": 1
    }  # fmt: skip
    np.testing.assert_array_equal(assembled.kspace[0, 0, :, :, 4], imaging[0].data)
    assert assembled.imaging_readouts == 1


def test_asymmetric_echo_is_placed_by_center_sample() -> None:
    rng = np.random.default_rng(5)
    full = random_kspace(rng, (2, 8))
    partial = make_acquisition(2, full[:, 2:], center_sample=2)  # samples 2..7, centre 4 -> index 2
    assembled = assemble_kspace([partial], small_info())
    expected = full.copy()
    expected[:, :2] = 0
    np.testing.assert_array_equal(assembled.kspace[0, 0, :, :, 2], expected)


def test_ky_offset_centres_the_header_centre() -> None:
    rng = np.random.default_rng(6)
    info = parse_header(make_header(readout=8, width=8, coils=2, center_line=2, ky_maximum=5))
    assembled = assemble_kspace(lines(rng, [2]), info)
    assert np.flatnonzero(assembled.sampled[0, 0]).tolist() == [4]


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"columns": [8]}, EncodeOutOfRangeError, "readout 0: kspace_encode_step_1=8 outside"),
        ({"columns": [1], "slice": 1}, EncodeOutOfRangeError, "slice=1 outside the header's limits 0..0"),
        ({"columns": [1], "phase": 3}, EncodeOutOfRangeError, "phase=3 outside"),
        ({"columns": [1], "kspace_encode_step_2": 1}, EncodeOutOfRangeError, "3D encoding"),
        ({"columns": [1], "coils": 3}, GeometryMismatchError, "3 coils, the header's receiverChannels is 2"),
        (
            {"columns": [1], "samples": 10},
            GeometryMismatchError,
            "10 samples, more than the encoded matrix x=8",
        ),
    ],
)
def test_invalid_readouts_raise_named_errors(
    kwargs: dict[str, Any], error: type[Exception], named: str
) -> None:
    rng = np.random.default_rng(7)
    with pytest.raises(error, match=named):
        assemble_kspace(lines(rng, **kwargs), small_info(frames=3))


def test_inconsistent_coils_non_finite_data_and_trajectory_are_refused() -> None:
    rng = np.random.default_rng(8)
    mixed = lines(rng, [1]) + lines(rng, [2], coils=3)
    info = parse_header(make_header(readout=8, width=8))
    with pytest.raises(GeometryMismatchError, match=r"readout 1 is \(coils, samples\)=\(3, 8\)"):
        assemble_kspace(mixed, info)
    bad = random_kspace(rng, (2, 8))
    bad[1, 3] = np.nan
    with pytest.raises(NonFiniteDataError, match="imaging readout 1 contains NaN"):
        assemble_kspace([*lines(rng, [0]), make_acquisition(1, bad)], small_info())
    radial = parse_header(make_header(readout=8, width=8, trajectory="radial"))
    with pytest.raises(InvalidHeaderError, match="'radial' is not supported"):
        assemble_kspace(lines(rng, [1]), radial)
