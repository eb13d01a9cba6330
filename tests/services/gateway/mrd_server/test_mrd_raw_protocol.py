"""The MRD server from the protocol spec: raw sockets, messages packed by hand (``conftest.Wire``), the
server's answers parsed by hand — session order, NUL-terminated text, the plan as TEXT and as the 1028
``kadapt_plan`` struct (both equal to the REST plan of the same scan), prospective and retrospective
sessions, and every fault answered with a ``kadapt_error`` TEXT and a CLOSE."""

from __future__ import annotations

import asyncio
import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from kadapt.mrd.files import read_mrd, read_phantom
from kadapt.mrd.stream import encode_message, make_image_messages

if TYPE_CHECKING:
    from conftest import Gateway, RawClient, Received, Wire
    from kadapt.launcher.embedded import EmbeddedStack

TEXT, CLOSE, IMAGE, FEEDBACK = 5, 4, 1022, 1028
PHANTOM = ("-m", "128", "-c", "8")


def unpack_kadapt_plan(data: bytes) -> dict[str, Any]:
    """The 1028 ``kadapt_plan`` struct as docs/mrd.md draws it (independent of the server's decoder)."""
    version, plan_round, flags, width, ky_offset, frames, lines = struct.unpack_from("<IIIIiII", data)
    assert len(data) == 28 + 2 * frames * lines
    steps = struct.unpack_from(f"<{frames * lines}H", data, 28)
    return {
        "version": version,
        "round": plan_round,
        "degraded": bool(flags & 1),
        "final": bool(flags & 2),
        "width": width,
        "ky_offset": ky_offset,
        "ky": [list(steps[f * lines : (f + 1) * lines]) for f in range(frames)],
    }


def kinds(messages: list[Received]) -> list[str]:
    """``kadapt_*`` kinds of TEXT messages, ``feedback:<name>``, ``image`` and ``close`` in order."""
    names = []
    for message in messages:
        if message.message_id == TEXT:
            names.append(str(message.json["kind"]))
        elif message.message_id == FEEDBACK:
            names.append(f"feedback:{message.name}")
        else:
            names.append({IMAGE: "image", CLOSE: "close"}[message.message_id])
    return names


def correlation_with_phantom(path: Path, image: Received) -> float:
    phantom = read_phantom(path)
    assert phantom is not None
    assert image.pixels is not None
    return float(np.corrcoef(image.pixels[0, 0].ravel(), np.abs(phantom[0]).ravel())[0, 1])


async def test_retrospective_session_order_nul_texts_plan_text_and_feedback_equal_the_rest_plan(
    mrd_stack: EmbeddedStack,
    shepp_logan: Callable[..., Path],
    wire: type[Wire],
    raw_client: Callable[[int], Any],
) -> None:
    path = shepp_logan(*PHANTOM)
    raw = read_mrd(path)
    assert mrd_stack.mrd_port is not None
    client: RawClient = await raw_client(mrd_stack.mrd_port)
    # FIRE style: every text NUL-terminated with the NUL counted; R = 4 in the config, R = 2 from the TEXT.
    await client.send(
        wire.config_text("kadapt;R=4;acs=24;recon=zero-filled;feedback=on"),
        wire.header(raw.header_xml),
        wire.text(json.dumps({"kadapt": {"R": 2}, "parameters": {"config": "kadapt"}})),
        wire.acquisitions(raw.heads, np.asarray(raw.data)),
        wire.close(),
    )
    messages = await client.until_close()
    assert await client.at_eof()
    await client.aclose()
    assert kinds(messages) == [
        "kadapt_session", "kadapt_plan", "feedback:kadapt_plan", "kadapt_images", "image", "close",
    ]  # fmt: skip
    session, plan_text, feedback, _, image, _ = messages
    scan_id = session.json["scan_id"]
    assert session.json["policy"]["acceleration"] == 2.0  # the TEXT override won

    rest_plan = (await mrd_stack.gateway.get(f"/v1/scans/{scan_id}/plan")).json()
    plan = plan_text.json
    assert {key: plan[key] for key in rest_plan} == rest_plan
    assert plan["scan_id"] == scan_id
    assert plan["ky"] == [line - plan["ky_offset"] for line in rest_plan["lines"]]
    assert (plan["width"], plan["mode"], plan["num_acs"]) == (128, "retrospective", 24)

    struct_plan = unpack_kadapt_plan(feedback.data)
    assert struct_plan["version"] == 1
    assert struct_plan["round"] == rest_plan["round"]
    assert struct_plan["degraded"] == rest_plan["degraded"]
    assert struct_plan["final"] == rest_plan["final"]
    assert struct_plan["width"] == 128
    assert [[ky + struct_plan["ky_offset"] for ky in struct_plan["ky"][0]]] == [rest_plan["lines"]]

    assert image.image["matrix_size"] == (128, 128, 1)
    assert image.image["image_series_index"] == 1
    assert np.allclose(image.image["read_dir"], raw.heads["read_dir"][0])
    assert "<name>KadaptRecon</name>" in image.meta
    assert correlation_with_phantom(path, image) >= 0.95
    mask = np.load(io.BytesIO((await mrd_stack.gateway.get(f"/v1/scans/{scan_id}/mask")).content))
    assert np.flatnonzero(mask[0, 0]).tolist() == rest_plan["lines"]


async def test_prospective_session_gets_the_plan_after_its_acs_lines_and_acquires_only_it(
    mrd_stack: EmbeddedStack,
    shepp_logan: Callable[..., Path],
    wire: type[Wire],
    raw_client: Callable[[int], Any],
    select_lines: Callable[..., np.ndarray],
) -> None:
    path = shepp_logan(*PHANTOM)
    raw = read_mrd(path)
    data = np.asarray(raw.data)
    assert mrd_stack.mrd_port is not None
    client: RawClient = await raw_client(mrd_stack.mrd_port)
    acs = select_lines(raw.heads, range(52, 76))
    await client.send(
        wire.config_file("kadapt;mode=prospective;policy=vd-random;R=2;acs=24;recon=zero-filled"),
        wire.header(raw.header_xml, nul=False),
        wire.acquisitions(raw.heads[acs], data[acs]),
    )
    # The scanner waits here: the plan must come back without any further byte from it.
    session = await client.receive(timeout_s=10)
    plan_text = await client.receive(timeout_s=10)
    feedback = await client.receive(timeout_s=10)
    assert session.json["mode"] == "prospective"
    assert session.json["feedback"] is True  # auto: prospective sessions get the 1028 message
    assert plan_text.json["kind"] == "kadapt_plan"
    assert feedback.name == "kadapt_plan"
    steps = unpack_kadapt_plan(feedback.data)["ky"][0]
    assert steps == plan_text.json["ky"]

    rest = select_lines(raw.heads, steps) & ~acs
    await client.send(wire.acquisitions(raw.heads[rest], data[rest]), wire.close())
    messages = await client.until_close()
    assert kinds(messages) == ["kadapt_images", "image", "close"]
    assert messages[0].json["acquired_lines"] == 64
    assert correlation_with_phantom(path, messages[1]) >= 0.95
    scan = (await mrd_stack.gateway.get(f"/v1/scans/{session.json['scan_id']}")).json()
    assert (scan["state"], scan["acquired_lines"]) == ("done", 64)
    await client.aclose()


async def test_lines_repeated_in_later_repetitions_are_acquired_once(
    mrd_stack: EmbeddedStack,
    shepp_logan: Callable[..., Path],
    wire: type[Wire],
    raw_client: Callable[[int], Any],
) -> None:
    path = shepp_logan("-m", "128", "-c", "8", "-a", "4", "-w", "24")
    raw = read_mrd(path)
    assert mrd_stack.mrd_port is not None
    client: RawClient = await raw_client(mrd_stack.mrd_port)
    await client.send(
        wire.config_file("kadapt;mode=prospective;R=2;acs=24;recon=zero-filled;feedback=off"),
        wire.header(raw.header_xml),
        wire.acquisitions(raw.heads, np.asarray(raw.data)),  # 200 readouts: the 24 ACS lines 4 times
        wire.close(),
    )
    messages = await client.until_close()
    assert kinds(messages) == ["kadapt_session", "kadapt_plan", "kadapt_images", "image", "close"]
    assert messages[2].json["acquired_lines"] == 128  # prospective: every line the scanner sent, once
    assert correlation_with_phantom(path, messages[3]) >= 0.97
    await client.aclose()


def _scanner_session(
    scanner: Any, wire: type[Wire], config: str = "kadapt;R=4;acs=4;recon=zero-filled"
) -> bytes:
    return wire.config_file(config) + wire.header(scanner.header())


BAD_STREAMS: dict[str, tuple[Callable[[Any, type[Wire]], bytes], str, str]] = {
    "unknown-id": (
        lambda s, w: (
            _scanner_session(s, w) + s.readouts(s.lines_for([0])) + struct.pack("<H", 999) + b"x" * 64
        ),
        "mrd-malformed",
        "unknown message id 999",
    ),
    "ndarray": (
        lambda s, w: _scanner_session(s, w) + struct.pack("<HHHH", 1030, 7, 0, 1) + b"\0" * 64,
        "mrd-malformed",
        "not supported",
    ),
    "header-claims-4gb": (
        lambda s, w: w.config_file("kadapt") + struct.pack("<HI", 3, 0xFFFF_FFF0) + b"<ismrmrdHeader",
        "payload-too-large",
        "declares 4294967286 bytes",
    ),
    "acquisition-before-header": (
        lambda s, w: w.config_file("kadapt") + s.readouts(s.lines_for([0])),
        "invalid-state",
        "before the HEADER",
    ),
    "header-before-config": (lambda s, w: w.header(s.header()), "invalid-state", "starts with CONFIG_FILE"),
    "not-xml-header": (lambda s, w: w.config_file("kadapt") + w.header("<nope"), "invalid-header", "XML"),
    "unknown-config-key": (lambda s, w: w.config_file("kadapt;speed=11"), "invalid-input", "speed"),
    "bad-config-value": (lambda s, w: w.config_text("kadapt;R=fast"), "invalid-input", "R='fast'"),
    "impossible-acceleration": (
        lambda s, w: _scanner_session(s, w, "kadapt;R=16;acs=8") + s.readouts(s.lines_for([0])),
        "invalid-acceleration",
        "",
    ),
    "wrong-coil-count": (
        lambda s, w: _scanner_session(s, w) + s.readouts(s.lines_for([0]), coils=2),
        "geometry-mismatch",
        "2 coils",
    ),
    "huge-samples": (
        lambda s, w: (
            _scanner_session(s, w)
            + s.readouts(s.lines_for([0]), data=np.full((1, 4, 64), 3e35, dtype=np.complex64))
        ),
        "non-finite-data",
        "beyond 1e+30",
    ),
    "close-before-data": (lambda s, w: _scanner_session(s, w) + w.close(), "invalid-state", "nothing"),
    "second-header": (
        lambda s, w: _scanner_session(s, w) + s.readouts(s.lines_for([0])) + w.header(s.header()),
        "invalid-state",
        "second Header",
    ),
    "image-input": (
        lambda s, w: (
            _scanner_session(s, w)
            + encode_message(make_image_messages(np.ones((1, 1, 4, 4)), field_of_view=(1.0, 1.0, 1.0))[0])
        ),
        "invalid-input",
        "IMAGE input",
    ),
    "eof-without-close": (
        lambda s, w: _scanner_session(s, w) + s.readouts(s.lines_for([0, 1])),
        "mrd-truncated",
        "without a CLOSE",
    ),
    "eof-inside-a-message": (
        lambda s, w: _scanner_session(s, w) + s.readouts(s.lines_for([0, 1]))[:-100],
        "mrd-truncated",
        "bytes of it were received",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
async def test_faults_end_the_session_with_an_error_text_and_a_close(
    mrd_gateway: Gateway, scanner: Any, wire: type[Wire], raw_client: Callable[[int], Any], case: str
) -> None:
    build, slug, fragment = BAD_STREAMS[case]
    client: RawClient = await raw_client(mrd_gateway.app.state.mrd_server.port)
    await client.send(build(scanner, wire))
    client.writer.write_eof()  # the client is done talking; EOF cases rely on it
    messages = await client.until_close(timeout_s=20)
    assert await client.at_eof()
    await client.aclose()
    errors = [m.json for m in messages if m.message_id == TEXT and m.json["kind"] == "kadapt_error"]
    assert len(errors) == 1, kinds(messages)
    assert kinds(messages)[-2:] == ["kadapt_error", "close"]
    assert errors[0]["slug"] == slug
    assert errors[0]["type"] == f"https://kadapt.dev/problems/{slug}"
    assert fragment in errors[0]["detail"]
    # A scan the failed session had opened is gone (nobody can finish it); the server still serves.
    assert list(mrd_gateway.settings.scans_dir.iterdir()) == []
    assert (await mrd_gateway.client.get("/readyz")).status_code == 200


async def test_connectivity_checks_get_a_close_back(
    mrd_stack: EmbeddedStack, wire: type[Wire], raw_client: Callable[[int], Any]
) -> None:
    assert mrd_stack.mrd_port is not None
    probe: RawClient = await raw_client(mrd_stack.mrd_port)
    await probe.aclose()  # connect and leave: nothing to answer
    client: RawClient = await raw_client(mrd_stack.mrd_port)
    await client.send(wire.config_file("kadapt"), wire.close())
    assert kinds(await client.until_close()) == ["close"]
    await client.aclose()
    counted = 'kadapt_gateway_mrd_sessions_total{outcome="completed"} 1.0'
    async with asyncio.timeout(5):  # the server counts once its side of the connection is closed
        while counted not in (await mrd_stack.gateway.get("/metrics")).text:
            await asyncio.sleep(0.02)
    metrics = (await mrd_stack.gateway.get("/metrics")).text
    assert 'kadapt_gateway_mrd_sessions_total{outcome="disconnected"} 1.0' in metrics  # the probe
    assert "kadapt_gateway_mrd_active_sessions 0.0" in metrics
