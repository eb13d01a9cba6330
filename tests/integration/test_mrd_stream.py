"""MRD streaming through the real processes: redis-server + sampler + recon + gateway (uvicorn) with the
gateway's MRD port, two phantom files streamed at once by ``ismrmrd``-package clients over TCP; the
images come back over the stream, the same scans are done in the REST API (Redis-backed sessions, the
recon worker in its own process), and the TEXT plan is the REST plan."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigFile, ProtocolDeserializer, ProtocolSerializer

from kadapt.launcher.processes import ProcessStack
from kadapt.mrd.files import read_phantom

pytestmark = pytest.mark.integration
GENERATOR = "ismrmrd_generate_cartesian_shepp_logan"
CONFIG = "kadapt;policy=vd-random;R=2;acs=24;recon=zero-filled;deadline_ms=500"


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    for tool in ("redis-server", GENERATOR):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make setup installs it as root)")
    root = tmp_path_factory.mktemp("mrd")
    files = {
        "fully-sampled": ("-m", "128", "-c", "8"),
        "a4-w24": ("-m", "128", "-c", "8", "-a", "4", "-w", "24"),
    }
    for name, args in files.items():
        subprocess.run([GENERATOR, *args, "-o", str(root / f"{name}.h5")], check=True, capture_output=True)
    return {name: root / f"{name}.h5" for name in files}


def stream(port: int, path: Path) -> tuple[list[dict[str, Any]], list[Any]]:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        outgoing, incoming = sock.makefile("wb"), sock.makefile("rb")
        with ismrmrd.Dataset(str(path), "dataset", False) as dataset:
            serializer = ProtocolSerializer(outgoing)
            serializer.serialize(ConfigFile(CONFIG))
            serializer.serialize(ismrmrd.xsd.CreateFromDocument(dataset.read_xml_header()))
            for index in range(dataset.number_of_acquisitions()):
                serializer.serialize(dataset.read_acquisition(index))
            serializer.close()
        texts, images = [], []
        for item in ProtocolDeserializer(incoming).deserialize():
            if isinstance(item, str):
                texts.append(json.loads(item))
            else:
                images.append(item)
        outgoing.close()
        incoming.close()
    return texts, images


def test_two_phantom_streams_at_once_through_the_process_stack(
    phantom_files: dict[str, Path], tmp_path: Path
) -> None:
    with ProcessStack(data_dir=tmp_path / "stack", log_dir=tmp_path / "logs", mrd=True) as stack:
        port = stack.mrd_port
        assert port is not None
        with ThreadPoolExecutor(max_workers=2) as pool:
            streamed = pool.map(lambda path: stream(port, path), phantom_files.values())
            results = dict(zip(phantom_files, streamed, strict=True))
        with httpx.Client(base_url=stack.url("gateway"), timeout=30) as client:
            for name, (texts, images) in results.items():
                assert [text["kind"] for text in texts] == ["kadapt_session", "kadapt_plan", "kadapt_images"]
                scan_id = texts[0]["scan_id"]
                assert len(images) == 1
                phantom = read_phantom(phantom_files[name])
                assert phantom is not None
                magnitude = np.asarray(images[0].data)[0, 0]
                assert np.corrcoef(magnitude.ravel(), np.abs(phantom[0]).ravel())[0, 1] >= 0.95, name
                rest_plan = client.get(f"/v1/scans/{scan_id}/plan").json()
                assert {key: texts[1][key] for key in rest_plan} == rest_plan
                scan = client.get(f"/v1/scans/{scan_id}").json()
                assert (scan["state"], scan["acquired_lines"]) == ("done", 64)
                stored = client.get(f"/v1/scans/{scan_id}/images", params={"format": "npy"})
                assert stored.status_code == 200
            metrics = client.get("/metrics").text
        assert 'kadapt_gateway_mrd_sessions_total{outcome="completed"} 2.0' in metrics
