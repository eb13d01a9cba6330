"""De-identification: patient fields blanked or removed, dates removed, UIDs replaced, method recorded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from kadapt.dicom import deidentify_datasets, dicom_datasets, write_dicom_series

IDENTIFYING_TEXT = (
    b"Doe",
    b"PID-0042",
    b"19800229",
    b"987654321",
    b"House",
    b"Elsewhere",
    b"MRC45070",
    b"20240517",
    b"ST77",
    b"t2_tse_cor",
    b"Knee",
)


def volume(slices: int = 2, frames: int = 2) -> np.ndarray:
    return np.abs(np.random.default_rng(1).standard_normal((slices, frames, 32, 24))).astype(np.float32)


def test_identified_files_carry_the_patient(tmp_path: Path, rich_header: Callable[..., str]) -> None:
    path = write_dicom_series(volume(), rich_header(slices=2, frames=2), tmp_path, series_description="s")[0]
    raw = path.read_bytes()
    assert all(text in raw for text in IDENTIFYING_TEXT)


def test_deidentified_files_hold_no_identifying_text(tmp_path: Path, rich_header: Callable[..., str]) -> None:
    paths = write_dicom_series(
        volume(), rich_header(slices=2, frames=2), tmp_path, series_description="s", deidentify=True
    )
    for path in paths:
        raw = path.read_bytes()
        leaked = [text for text in IDENTIFYING_TEXT if text in raw]
        assert leaked == []
        dataset = pydicom.dcmread(path)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber"):
            assert keyword in dataset  # type 2: kept, empty
            assert dataset[keyword].value in ("", None)
        for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "ContentDate"):
            assert dataset[keyword].value in ("", None)
        for keyword in ("PatientWeight", "PatientSize", "InstitutionName", "StationName", "SeriesDate"):
            assert keyword not in dataset
        for keyword in ("StudyDescription", "ProtocolName", "InstanceCreationDate", "DerivationDescription"):
            assert keyword not in dataset
        assert dataset.PatientIdentityRemoved == "YES"
        assert "PS3.15" in dataset.DeidentificationMethod
        assert dataset.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert dataset.LongitudinalTemporalInformationModified == "REMOVED"
        assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
        # What a reader needs is kept.
        assert dataset.SeriesDescription == "s"
        assert float(dataset.MagneticFieldStrength) > 2.8
        assert dataset.pixel_array.shape == (24, 32)


def test_uids_are_replaced_consistently(rich_header: Callable[..., str]) -> None:
    xml = rich_header(slices=2, frames=2)
    identified = dicom_datasets(volume(), xml, series_description="s")
    first = dicom_datasets(volume(), xml, series_description="s", deidentify=True)
    second = dicom_datasets(volume(), xml, series_description="s", deidentify=True)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({d[keyword].value for d in first}) == 1  # still one series
        assert first[0][keyword].value != identified[0][keyword].value
        assert first[0][keyword].value != second[0][keyword].value  # fresh, not a hash of the originals
    assert len({d.SOPInstanceUID for d in first}) == 4
    assert not first[0].SeriesInstanceUID.startswith("1.3.12.2.1107")


def test_private_attributes_are_removed() -> None:
    dataset = Dataset()
    dataset.PatientName = "Roe^Richard"
    dataset.add_new(0x00290010, "LO", "VENDOR")
    dataset.add_new(0x00291010, "OB", b"csa header")
    deidentify_datasets([dataset])
    assert dataset.PatientName == ""
    assert 0x00290010 not in dataset
    assert 0x00291010 not in dataset
