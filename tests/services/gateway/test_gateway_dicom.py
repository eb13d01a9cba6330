"""DICOM from the images endpoint: a ZIP of one file per (slice, frame), single files, de-identification."""

from __future__ import annotations

import io
import zipfile
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom.pixels import apply_modality_lut

if TYPE_CHECKING:
    from conftest import Gateway, GatewayFactory, Scanner

SUBJECT = """
  <subjectInformation>
    <patientName>Doe^Jane</patientName>
    <patientID>PID-0042</patientID>
    <patientBirthdate>1980-02-29</patientBirthdate>
    <patientGender>F</patientGender>
  </subjectInformation>
  <studyInformation>
    <studyDate>2024-05-17</studyDate>
    <accessionNumber>987654321</accessionNumber>
  </studyInformation>
"""
IMAGES = np.abs(np.random.default_rng(7).standard_normal((2, 2, 32, 32))).astype(np.float32)


async def done_scan(gateway: Gateway, scanner: Scanner) -> str:
    """A scan of ``scanner`` (2 slices x 2 frames) with a patient in its header, reconstructed to IMAGES."""
    header = scanner.header().replace(
        "<acquisitionSystemInformation>", SUBJECT + "<acquisitionSystemInformation>"
    )
    policy = {"num_acs": 4, "recon": "zero-filled"}
    created = await gateway.client.post("/v1/scans", json={"header_xml": header, "policy": policy})
    assert created.status_code == 201, created.text
    scan_id = str(created.json()["scan_id"])
    sent = await gateway.send(scan_id, scanner.readouts(scanner.lines_for(scanner.acs_columns(4))))
    assert sent.status_code == 200, sent.text
    completed = await gateway.client.post(f"/v1/scans/{scan_id}/complete", params={"force": "true"})
    assert completed.status_code == 200, completed.text
    await gateway.finish_recon(scan_id, IMAGES)
    return scan_id


def dicom_files(response: httpx.Response) -> dict[str, pydicom.Dataset]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name: pydicom.dcmread(io.BytesIO(archive.read(name))) for name in archive.namelist()}


def assert_images(dataset: pydicom.Dataset, expected: NDArray[np.float32]) -> None:
    recovered = apply_modality_lut(dataset.pixel_array, dataset).T  # stored (W, H), readout along columns
    assert np.abs(recovered - expected).max() <= float(dataset.RescaleSlope)


def assert_problem(response: httpx.Response, status: int, slug: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"].endswith(f"/{slug}")
    return str(body["detail"])


@pytest.fixture
def cine_scanner(make_scanner: type[Scanner]) -> Scanner:
    return make_scanner(slices=2, frames=2)


async def test_zip_of_the_whole_series(gateway: Gateway, cine_scanner: Scanner) -> None:
    scan_id = await done_scan(gateway, cine_scanner)
    response = await gateway.client.get(f"/v1/scans/{scan_id}/images", params={"format": "dicom"})
    assert response.headers["content-disposition"] == f'attachment; filename="{scan_id}-dicom.zip"'
    files = dicom_files(response)
    assert sorted(files) == [f"slice{s:03d}_frame{f:03d}.dcm" for s in range(2) for f in range(2)]
    for name, dataset in files.items():
        s, f = int(name[5:8]), int(name[14:17])  # slice<sss>_frame<fff>.dcm
        assert_images(dataset, IMAGES[s, f])
        assert (dataset.InstanceNumber, dataset.TemporalPositionIdentifier) == (2 * s + f + 1, f + 1)
        assert str(dataset.PatientName) == "Doe^Jane"
        assert dataset.PatientID == "PID-0042"
        assert dataset.SeriesDescription == "kadapt vd-random R4 zero-filled"
        assert [float(v) for v in dataset.PixelSpacing] == [8.0, 8.0]  # 256 mm over 32 x 32
    assert len({d.SeriesInstanceUID for d in files.values()}) == 1


async def test_deidentify_query_removes_the_patient(gateway: Gateway, cine_scanner: Scanner) -> None:
    scan_id = await done_scan(gateway, cine_scanner)
    response = await gateway.client.get(
        f"/v1/scans/{scan_id}/images", params={"format": "dicom", "deidentify": "true"}
    )
    for dataset in dicom_files(response).values():
        assert dataset.PatientName == ""
        assert dataset.PatientID == ""
        assert dataset.PatientBirthDate == ""
        assert dataset.StudyDate == ""
        assert dataset.PatientIdentityRemoved == "YES"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        raw = b"".join(archive.read(name) for name in archive.namelist())
    assert b"Doe" not in raw
    assert b"PID-0042" not in raw
    assert b"987654321" not in raw


async def test_the_setting_sets_the_default(make_gateway: GatewayFactory, cine_scanner: Scanner) -> None:
    async with make_gateway(dicom_deidentify=True) as gateway:
        scan_id = await done_scan(gateway, cine_scanner)
        url = f"/v1/scans/{scan_id}/images"
        default = dicom_files(await gateway.client.get(url, params={"format": "dicom"}))
        assert {d.PatientIdentityRemoved for d in default.values()} == {"YES"}
        identified = dicom_files(
            await gateway.client.get(url, params={"format": "dicom", "deidentify": "false"})
        )
        assert {str(d.PatientName) for d in identified.values()} == {"Doe^Jane"}


async def test_one_slice_is_one_dicom_file(gateway: Gateway, cine_scanner: Scanner) -> None:
    scan_id = await done_scan(gateway, cine_scanner)
    url = f"/v1/scans/{scan_id}/images"
    single = await gateway.client.get(url, params={"format": "dicom", "slice": 1, "frame": 1})
    assert single.status_code == 200, single.text
    assert single.headers["content-type"] == "application/dicom"
    dataset = pydicom.dcmread(io.BytesIO(single.content))
    assert dataset.InstanceNumber == 4
    assert_images(dataset, IMAGES[1, 1])
    first_frame = await gateway.client.get(url, params={"format": "dicom", "slice": 1})
    assert pydicom.dcmread(io.BytesIO(first_frame.content)).InstanceNumber == 3
    one_frame = dicom_files(await gateway.client.get(url, params={"format": "dicom", "frame": 1}))
    assert sorted(one_frame) == ["slice000_frame001.dcm", "slice001_frame001.dcm"]


async def test_bad_requests_are_problems(gateway: Gateway, cine_scanner: Scanner) -> None:
    created = await gateway.client.post(
        "/v1/scans", json={"header_xml": cine_scanner.header(), "policy": {"num_acs": 4}}
    )
    early = await gateway.client.get(
        f"/v1/scans/{created.json()['scan_id']}/images", params={"format": "dicom"}
    )
    assert "created" in assert_problem(early, 409, "invalid-state")
    scan_id = await done_scan(gateway, cine_scanner)
    url = f"/v1/scans/{scan_id}/images"
    assert_problem(await gateway.client.get(url, params={"format": "tiff"}), 422, "invalid-input")
    assert_problem(
        await gateway.client.get(url, params={"format": "dicom", "slice": -1}), 422, "invalid-input"
    )
    assert_problem(
        await gateway.client.get(url, params={"format": "dicom", "deidentify": "maybe"}), 422, "invalid-input"
    )
    detail = assert_problem(
        await gateway.client.get(url, params={"format": "dicom", "slice": 2}), 422, "encode-out-of-range"
    )
    assert "slice=2" in detail
    detail = assert_problem(
        await gateway.client.get(url, params={"format": "dicom", "frame": 5}), 422, "encode-out-of-range"
    )
    assert "frame=5" in detail
