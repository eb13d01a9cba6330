"""DICOM series from kadapt magnitude volumes: pixels, geometry, header fields, UIDs, cine, errors."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from kadapt.dicom import SliceGeometry, dicom_datasets, quantise_series, write_dicom_series
from kadapt.errors import EncodeOutOfRangeError, GeometryMismatchError, InvalidInputError, NonFiniteDataError
from kadapt.mrd.header import make_header
from kadapt.mrd.stream import make_image_messages

H, W = 32, 24  # recon readout x phase-encode lines of the rich_header fixture


def magnitude(slices: int = 3, frames: int = 2, seed: int = 0, scale: float = 1e-3) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (np.abs(rng.standard_normal((slices, frames, H, W))) * scale).astype(np.float32)


def read_series(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in paths]


def test_pixels_come_back_within_one_step(tmp_path: Path, rich_header: Callable[..., str]) -> None:
    volume = magnitude()
    paths = write_dicom_series(volume, rich_header(slices=3, frames=2), tmp_path, series_description="t")
    assert [path.name for path in paths[:3]] == [
        "slice000_frame000.dcm",
        "slice000_frame001.dcm",
        "slice001_frame000.dcm",
    ]
    assert len(paths) == 6
    stored = quantise_series(volume).stored
    for index, dataset in enumerate(read_series(paths)):
        s, f = divmod(index, 2)
        pixels = dataset.pixel_array
        assert pixels.dtype == np.uint16
        assert pixels.shape == (W, H)  # rows along the phase encode, columns along the readout
        np.testing.assert_array_equal(pixels.T, stored[s, f])
        recovered = apply_modality_lut(pixels, dataset).T
        step = float(dataset.RescaleSlope)
        assert np.abs(recovered - volume[s, f]).max() <= step
    assert stored.max() == 65535  # the series maximum uses the whole 16 bits


def test_file_format_and_sop_class(tmp_path: Path, rich_header: Callable[..., str]) -> None:
    path = write_dicom_series(magnitude(1, 1), rich_header(), tmp_path, series_description="t")[0]
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    dataset = pydicom.dcmread(path)
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dataset.SOPClassUID == dataset.file_meta.MediaStorageSOPClassUID == MRImageStorage
    assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
    assert (dataset.Rows, dataset.Columns, dataset.BitsStored, dataset.PixelRepresentation) == (W, H, 16, 0)
    assert dataset.PhotometricInterpretation == "MONOCHROME2"
    assert list(dataset.ImageType) == ["DERIVED", "PRIMARY", "OTHER"]
    assert dataset.Modality == "MR"


def test_default_axial_geometry(tmp_path: Path, rich_header: Callable[..., str]) -> None:
    paths = write_dicom_series(magnitude(3, 1), rich_header(slices=3), tmp_path, series_description="t")
    phase_step, readout_step = 180.0 / W, 200.0 / H  # FOV 200 (readout) x 180 (phase) mm
    for s, dataset in enumerate(read_series(paths)):
        assert [float(v) for v in dataset.PixelSpacing] == [phase_step, readout_step]
        assert [float(v) for v in dataset.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(dataset.SliceThickness) == float(dataset.SpacingBetweenSlices) == 4.0
        centre_z = (s - 1) * 4.0
        expected = [-(H - 1) / 2 * readout_step, -(W - 1) / 2 * phase_step, centre_z]
        np.testing.assert_allclose([float(v) for v in dataset.ImagePositionPatient], expected)
        assert float(dataset.SliceLocation) == centre_z
        assert dataset.InPlanePhaseEncodingDirection == "COL"


def pixel_to_patient(dataset: pydicom.Dataset, row: float, column: float) -> NDArray[np.float64]:
    """DICOM PS3.3 C.7.6.2.1.1: the patient position of pixel (row, column)."""
    orientation = np.array([float(v) for v in dataset.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    origin = np.array([float(v) for v in dataset.ImagePositionPatient])
    return origin + column * column_spacing * orientation[:3] + row * row_spacing * orientation[3:]


def vector(values: NDArray[np.float64] | tuple[float, ...]) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def test_oblique_geometry_from_acquisitions(rich_header: Callable[..., str]) -> None:
    angle = np.deg2rad(30.0)
    read = vector((np.cos(angle), np.sin(angle), 0.0))
    phase = vector((0.0, 0.0, -1.0))
    normal = vector(np.cross(read, phase))
    centres = [vector(np.array([10.0, -5.0, 20.0]) + s * 6.0 * np.array(normal)) for s in range(2)]
    geometry = {s: SliceGeometry(centres[s], read, phase, normal) for s in range(2)}
    datasets = dicom_datasets(
        magnitude(2, 1), rich_header(slices=2), series_description="t", slice_geometry=geometry
    )
    for s, dataset in enumerate(datasets):
        np.testing.assert_allclose(
            [float(v) for v in dataset.ImageOrientationPatient], [*read, *phase], atol=1e-9
        )
        # The FOV centre lies between the middle pixels: (rows - 1) / 2, (columns - 1) / 2.
        np.testing.assert_allclose(pixel_to_patient(dataset, (W - 1) / 2, (H - 1) / 2), centres[s], atol=1e-5)
        # Moving along a row (increasing column) follows the readout direction.
        step = pixel_to_patient(dataset, 0, 1) - pixel_to_patient(dataset, 0, 0)
        np.testing.assert_allclose(step, np.array(read) * 200.0 / H, atol=1e-6)
        assert float(dataset.SpacingBetweenSlices) == pytest.approx(6.0)
        assert float(dataset.SliceThickness) == 4.0


def test_patient_study_and_system_fields(rich_header: Callable[..., str]) -> None:
    dataset = dicom_datasets(
        magnitude(1, 1), rich_header(), series_description="kadapt vd R4", series_number=7
    )[0]
    assert str(dataset.PatientName) == "Doe^Jane"
    assert dataset.PatientID == "PID-0042"
    assert dataset.PatientBirthDate == "19800229"
    assert dataset.PatientSex == "F"
    assert float(dataset.PatientWeight) == 61.5
    assert (dataset.StudyDate, dataset.StudyTime) == ("20240517", "094107")
    assert dataset.AccessionNumber == "987654321"
    assert str(dataset.ReferringPhysicianName) == "House^Gregory"
    assert (dataset.InstitutionName, dataset.StationName) == ("St Elsewhere Hospital", "MRC45070")
    assert dataset.Manufacturer == "kadapt"
    assert float(dataset.MagneticFieldStrength) == pytest.approx(2.89362)
    assert float(dataset.ImagingFrequency) == pytest.approx(63.5)
    assert (float(dataset.RepetitionTime), float(dataset.EchoTime), dataset.ScanningSequence) == (
        3000,
        98,
        "SE",
    )
    assert dataset.PatientPosition == "FFS"
    assert (dataset.SeriesDescription, dataset.SeriesNumber) == ("kadapt vd R4", 7)
    assert "SIEMENS Prisma" in dataset.DerivationDescription


def test_cine_frames_are_temporal_positions(rich_header: Callable[..., str]) -> None:
    datasets = dicom_datasets(
        magnitude(2, 4), rich_header(slices=2, frames=4), series_description="cine", frame_interval_ms=40.0
    )
    assert [d.InstanceNumber for d in datasets] == list(range(1, 9))
    for s in range(2):
        frames = datasets[4 * s : 4 * s + 4]
        assert [d.TemporalPositionIdentifier for d in frames] == [1, 2, 3, 4]
        assert [float(d.TriggerTime) for d in frames] == [0.0, 40.0, 80.0, 120.0]
        assert {d.NumberOfTemporalPositions for d in frames} == {4}
        assert {float(d.SliceLocation) for d in frames} == {(s - 0.5) * 4.0}


def test_uids_are_shared_in_a_series_and_derived_from_the_measurement(
    rich_header: Callable[..., str],
) -> None:
    xml = rich_header(slices=2, frames=2)
    first = dicom_datasets(magnitude(2, 2), xml, series_description="a")
    again = dicom_datasets(magnitude(2, 2), xml, series_description="a")
    other_scan = dicom_datasets(magnitude(2, 2), xml, series_description="a", uid_entropy=("scan-2",))
    assert len({d.SeriesInstanceUID for d in first}) == len({d.StudyInstanceUID for d in first}) == 1
    assert len({d.SOPInstanceUID for d in first}) == 4
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in first]  # a re-export replaces
    assert other_scan[0].SeriesInstanceUID != first[0].SeriesInstanceUID
    assert other_scan[0].StudyInstanceUID == first[0].StudyInstanceUID
    assert first[0].SeriesInstanceUID.startswith("1.3.12.2.1107.5.2.19.45070.")
    assert first[0].FrameOfReferenceUID == "1.3.12.2.1107.5.2.19.45070.1.20240517094107.0.0.0"
    for dataset in first:
        assert dataset.SeriesInstanceUID.is_valid
        assert dataset.SOPInstanceUID.is_valid


def test_headers_without_a_measurement_id_get_fresh_uids() -> None:
    xml = make_header(readout=H, width=W, slices=2)
    first = dicom_datasets(magnitude(2, 1), xml, series_description="a")
    second = dicom_datasets(magnitude(2, 1), xml, series_description="a")
    assert first[0].SeriesInstanceUID == first[1].SeriesInstanceUID
    assert first[0].SeriesInstanceUID != second[0].SeriesInstanceUID
    assert first[0].PatientName == ""  # type 2: present, empty
    assert first[0].StudyDate == ""


def test_only_selects_images_with_the_series_scaling(rich_header: Callable[..., str]) -> None:
    volume = magnitude(3, 2)
    xml = rich_header(slices=3, frames=2)
    whole = dicom_datasets(volume, xml, series_description="a")
    one = dicom_datasets(volume, xml, series_description="a", only=[(2, 1)])
    assert [dataset.InstanceNumber for dataset in one] == [6]
    assert one[0].PixelData == whole[5].PixelData
    assert one[0].RescaleSlope == whole[5].RescaleSlope
    assert one[0].SOPInstanceUID == whole[5].SOPInstanceUID


def test_negative_and_blank_volumes() -> None:
    xml = make_header(readout=H, width=W)
    signed = magnitude(1, 1) - 5e-4
    dataset = dicom_datasets(signed, xml, series_description="a")[0]
    assert float(dataset.RescaleIntercept) < 0
    assert np.abs(apply_modality_lut(dataset.pixel_array, dataset).T - signed[0, 0]).max() <= float(
        dataset.RescaleSlope
    )
    blank = dicom_datasets(np.zeros((1, 1, H, W), np.float32), xml, series_description="a")[0]
    assert not blank.pixel_array.any()
    assert float(blank.RescaleSlope) == 1.0


def test_bad_inputs_are_named(rich_header: Callable[..., str]) -> None:
    xml = rich_header(slices=2)
    with pytest.raises(GeometryMismatchError, match=r"\(H, W\) = \(24, 32\)"):
        dicom_datasets(np.zeros((1, 1, W, H), np.float32), xml, series_description="a")
    with pytest.raises(GeometryMismatchError, match="slice, frame, H, W"):
        dicom_datasets(np.zeros((H, W), np.float32), xml, series_description="a")
    bad = magnitude(1, 1)
    bad[0, 0, 3, 4] = np.nan
    with pytest.raises(NonFiniteDataError):
        dicom_datasets(bad, xml, series_description="a")
    axial = SliceGeometry((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    with pytest.raises(GeometryMismatchError, match=r"slice\(s\) \[1\]"):
        dicom_datasets(magnitude(2, 1), xml, series_description="a", slice_geometry={0: axial})
    skewed = SliceGeometry((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    with pytest.raises(GeometryMismatchError, match="orthonormal"):
        dicom_datasets(magnitude(1, 1), xml, series_description="a", slice_geometry={0: skewed})
    with pytest.raises(InvalidInputError, match="series_number=-1"):
        dicom_datasets(magnitude(1, 1), xml, series_description="a", series_number=-1)
    with pytest.raises(EncodeOutOfRangeError, match="slice=0 frame=3"):
        dicom_datasets(magnitude(1, 1), xml, series_description="a", only=[(0, 3)])


def test_pixel_layout_matches_kadapts_mrd_images(rich_header: Callable[..., str]) -> None:
    volume = magnitude(1, 1)
    (message,) = make_image_messages(volume, field_of_view=(200.0, 180.0, 4.0))
    dataset = dicom_datasets(volume, rich_header(), series_description="t")[0]
    recovered = apply_modality_lut(dataset.pixel_array, dataset)
    # MRD pixels are (1, 1, y = W, x = H) with x along the readout; DICOM rows x columns the same.
    assert recovered.shape == message.data[0, 0].shape
    assert np.abs(recovered - message.data[0, 0]).max() <= float(dataset.RescaleSlope)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (apt) not installed")
@pytest.mark.parametrize("deidentify", [False, True])
def test_files_pass_the_dicom3tools_iod_checker(
    tmp_path: Path, rich_header: Callable[..., str], deidentify: bool
) -> None:
    paths = write_dicom_series(
        magnitude(2, 2),
        rich_header(slices=2, frames=2),
        tmp_path,
        series_description="kadapt vd-random R4 cg-sense",
        deidentify=deidentify,
        frame_interval_ms=40.0,
    )
    for path in (paths[0], paths[-1]):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        lines = (report.stdout + report.stderr).splitlines()
        assert "MRImage" in lines
        assert [line for line in lines if line.startswith("Error")] == []
