"""A stock stream client — the ``ismrmrd`` package's ProtocolSerializer / ProtocolDeserializer over a TCP
socket, as python-ismrmrd-server's client drives it — against the gateway's MRD server in the embedded
stack (gateway + sampler over ASGI + in-memory queue + recon worker, one process).

Files: ``ismrmrd_generate_cartesian_shepp_logan -m 128 -c 8`` (fully sampled, 2x readout oversampling,
noise 0.05) and the same with ``-a 4 -w 24`` (4 repetitions, each every 4th line plus a 24-line ACS
block). Settings: retrospective mode, ``vd-random`` at R = 2 with 24 ACS lines, zero-filled recon — the
sampled image then correlates 0.960-0.963 with ``/dataset/phantom`` (cg-sense: ~0.94; R = 3: ~0.935).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigFile, ProtocolDeserializer, ProtocolSerializer

from kadapt.mrd.files import read_mrd, read_phantom
from kadapt.mrd.header import parse_header

if TYPE_CHECKING:
    from kadapt.launcher.embedded import EmbeddedStack

CONFIG = "kadapt;policy=vd-random;R=2;acs=24;recon=zero-filled;mode=retrospective"
FILES = {
    "fully-sampled": ("-m", "128", "-c", "8"),
    "a4-w24-repetitions": ("-m", "128", "-c", "8", "-a", "4", "-w", "24"),
}


def stream_file(port: int, path: Path, config: str) -> tuple[list[str], list[Any]]:
    """Send config, header and every acquisition of ``path``, then CLOSE; return the TEXTs and IMAGEs
    the server sent until its CLOSE (the deserializer's generator ends there)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        outgoing, incoming = sock.makefile("wb"), sock.makefile("rb")
        with ismrmrd.Dataset(str(path), "dataset", False) as dataset:
            header = ismrmrd.xsd.CreateFromDocument(dataset.read_xml_header())
            serializer = ProtocolSerializer(outgoing)
            serializer.serialize(ConfigFile(config))
            serializer.serialize(header)
            for index in range(dataset.number_of_acquisitions()):
                serializer.serialize(dataset.read_acquisition(index))
            serializer.close()  # CLOSE + flush
        texts: list[str] = []
        images: list[Any] = []
        for item in ProtocolDeserializer(incoming).deserialize():
            (texts if isinstance(item, str) else images).append(item)
        outgoing.close()
        incoming.close()
    return texts, images


@pytest.mark.parametrize("name", list(FILES))
async def test_ismrmrd_client_streams_a_phantom_file_and_gets_matching_images(
    mrd_stack: EmbeddedStack, shepp_logan: Callable[..., Path], name: str
) -> None:
    path = shepp_logan(*FILES[name])
    port = mrd_stack.mrd_port
    assert port is not None
    texts, images = await asyncio.to_thread(stream_file, port, path, CONFIG)

    documents = [json.loads(text) for text in texts]
    assert [document["kind"] for document in documents] == ["kadapt_session", "kadapt_plan", "kadapt_images"]
    session, plan, done = documents
    assert session["mode"] == "retrospective"
    assert session["feedback"] is False  # a stock deserializer stops at message 1028: not sent unasked
    assert session["policy"]["acceleration"] == 2.0
    assert len(plan["lines"]) == 64  # round(128 / 2), ACS included
    assert set(range(52, 76)) <= set(plan["lines"])
    assert plan["ky"] == plan["lines"]  # the generator's k-space centre is ky 64 = column W // 2
    assert done["recon_method_used"] == "zero-filled"
    assert done["acquired_lines"] == 64
    assert done["images"] == 1

    (image,) = images
    info = parse_header(read_mrd(path).header_xml)
    assert tuple(image.matrix_size) == (128, 128, 1)
    assert np.allclose(image.field_of_view, info.recon_fov_mm)
    assert (image.image_series_index, image.image_index, image.slice) == (1, 1, 0)
    assert image.data_type == ismrmrd.DATATYPE_FLOAT
    meta = image.meta
    assert meta["KadaptPolicy"] == "vd-random"
    assert meta["KadaptAcceleration"] == "2"
    assert meta["KadaptRecon"] == "zero-filled"
    assert meta["KadaptDegraded"] == "false"
    assert meta["KadaptScanId"] == session["scan_id"]

    phantom = read_phantom(path)
    assert phantom is not None
    # MRD pixels are (channels, z, y, x) with x the readout; the phantom is stored (z, y, x) too.
    magnitude = np.asarray(image.data)[0, 0]
    correlation = float(np.corrcoef(magnitude.ravel(), np.abs(phantom[0]).ravel())[0, 1])
    assert correlation >= 0.95

    rest_plan = (await mrd_stack.gateway.get(f"/v1/scans/{session['scan_id']}/plan")).json()
    assert {key: plan[key] for key in rest_plan} == rest_plan
    scan = (await mrd_stack.gateway.get(f"/v1/scans/{session['scan_id']}")).json()
    assert scan["state"] == "done"
    assert scan["acquired_lines"] == 64


@pytest.mark.parametrize(
    "config", ["default", "simplefft", "invertcontrast", "<gadgetronStreamConfiguration/>"]
)
async def test_foreign_configs_are_refused_with_a_text_naming_them_and_a_close(
    mrd_stack: EmbeddedStack, shepp_logan: Callable[..., Path], config: str
) -> None:
    path = shepp_logan(*FILES["fully-sampled"])
    port = mrd_stack.mrd_port
    assert port is not None
    texts, images = await asyncio.to_thread(stream_file, port, path, config)
    assert images == []
    (error,) = (json.loads(text) for text in texts)
    assert error["kind"] == "kadapt_error"
    assert error["slug"] == "config-not-found"
    assert config in error["detail"]
    assert (await mrd_stack.gateway.get("/metrics")).status_code == 200
