"""DICOM on request from an MRD session: ``dicom=on`` writes the images as an MR Image Storage series
under the gateway's ``mrd_dicom_dir`` (``deidentify=on`` removes patient fields); without that
directory the request is refused before anything is stored."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom

if TYPE_CHECKING:
    from conftest import GatewayFactory, RawClient, Scanner, Wire

TEXT, CLOSE, IMAGE = 5, 4, 1022


def header_with_patient(scanner: Scanner) -> str:
    """The scanner's header with a named patient (subjectInformation goes first in ISMRMRD XML)."""
    xml = scanner.header()
    subject = (
        "<subjectInformation><patientName>Doe^Jane</patientName><patientID>P-17</patientID>"
        "</subjectInformation>"
    )
    return xml.replace(
        '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">',
        '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">' + subject,
        1,
    )


async def run_session(
    gateway: Any, client: RawClient, scanner: Scanner, wire: type[Wire], config: str
) -> list[Any]:
    await client.send(
        wire.config_file(config),
        wire.header(header_with_patient(scanner)),
        scanner.readouts(scanner.all_lines()),
        wire.close(),
    )
    session = await client.receive()
    scan_id = session.json["scan_id"]
    async with asyncio.timeout(10):
        while (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["state"] != "reconstructing":
            await asyncio.sleep(0.02)
    images = np.linspace(0.0, 2.0, 2 * scanner.height * scanner.width, dtype=np.float32)
    await gateway.finish_recon(scan_id, images.reshape(1, 2, scanner.height, scanner.width)[:, :1])
    return [session, *(await client.until_close())]


async def test_dicom_on_writes_a_series_readable_by_pydicom(
    make_gateway: GatewayFactory,
    scanner: Scanner,
    wire: type[Wire],
    raw_client: Callable[[int], Any],
    tmp_path: Path,
) -> None:
    async with make_gateway(mrd_port=0, mrd_dicom_dir=tmp_path / "dicom") as gateway:
        client: RawClient = await raw_client(gateway.app.state.mrd_server.port)
        messages = await run_session(
            gateway, client, scanner, wire, "kadapt;R=4;acs=4;recon=zero-filled;dicom=on"
        )
        await client.aclose()
    done = next(m.json for m in messages if m.message_id == TEXT and m.json["kind"] == "kadapt_images")
    scan_id = done["scan_id"]
    assert done["dicom"] == {"directory": str(tmp_path / "dicom" / scan_id), "files": 1}
    (path,) = sorted((tmp_path / "dicom" / scan_id).iterdir())
    dataset = pydicom.dcmread(path)
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert dataset.SeriesDescription == "kadapt vd-random R4 zero-filled"
    assert str(dataset.PatientName) == "Doe^Jane"
    image = next(m for m in messages if m.message_id == IMAGE)
    # The DICOM rows follow the phase encode as the MRD image's y does: the same picture.
    values = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    np.testing.assert_allclose(values, image.pixels[0, 0], atol=2.0 / 65535 * 2)


async def test_deidentify_on_removes_the_patient(
    make_gateway: GatewayFactory,
    scanner: Scanner,
    wire: type[Wire],
    raw_client: Callable[[int], Any],
    tmp_path: Path,
) -> None:
    async with make_gateway(mrd_port=0, mrd_dicom_dir=tmp_path / "dicom") as gateway:
        client: RawClient = await raw_client(gateway.app.state.mrd_server.port)
        config = "kadapt;R=4;acs=4;recon=zero-filled;dicom=on;deidentify=on"
        messages = await run_session(gateway, client, scanner, wire, config)
        await client.aclose()
    scan_id = messages[0].json["scan_id"]
    (path,) = sorted((tmp_path / "dicom" / scan_id).iterdir())
    dataset = pydicom.dcmread(path)
    assert str(dataset.PatientName) == ""
    assert dataset.PatientID == ""


async def test_dicom_on_without_a_dicom_directory_is_refused(
    make_gateway: GatewayFactory, scanner: Scanner, wire: type[Wire], raw_client: Callable[[int], Any]
) -> None:
    async with make_gateway(mrd_port=0) as gateway:
        client: RawClient = await raw_client(gateway.app.state.mrd_server.port)
        await client.send(
            wire.config_file("kadapt;R=4;acs=4;dicom=on"),
            wire.header(scanner.header()),
            scanner.readouts(scanner.lines_for([0])),
            wire.close(),
        )
        messages = await client.until_close()
        await client.aclose()
        assert [m.message_id for m in messages] == [TEXT, CLOSE]
        assert messages[0].json["slug"] == "invalid-input"
        assert "MRD_DICOM_DIR" in messages[0].json["detail"]
        assert list(gateway.settings.scans_dir.iterdir()) == []
