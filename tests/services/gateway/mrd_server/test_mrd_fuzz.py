"""Fuzzing the MRD server (hypothesis): garbage, truncations, wrong ids, huge declared lengths and single
byte mutations of a valid session. Every bad connection ends with a ``kadapt_error`` TEXT and a CLOSE (or,
for an empty stream, a plain close), never an ``internal-error``; sessions that keep a valid stream
finish with images. Meanwhile good sessions run on their own connections and all complete, and no scan
of a failed session is left open.

Hypothesis drives a blocking socket client in a worker thread while the server (and the good sessions)
run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if TYPE_CHECKING:
    from conftest import RawClient, Received, Scanner, Wire
    from kadapt.launcher.embedded import EmbeddedStack

TEXT, CLOSE, IMAGE = 5, 4, 1022
KNOWN_IDS = frozenset({1, 2, 3, 4, 5, 1008, 1022, 1026, 1028, 1030})
EXPECTED_SLUGS = frozenset(
    {
        "mrd-malformed",
        "mrd-truncated",
        "payload-too-large",
        "invalid-state",
        "invalid-input",
        "invalid-header",
        "invalid-acceleration",
        "config-not-found",
        "geometry-mismatch",
        "non-finite-data",
        "encode-out-of-range",
        "duplicate-line",
        "mask-family-not-found",
        "job-failed",
    }
)
CONFIG = "kadapt;R=4;acs=4;recon=zero-filled"


def valid_session(scanner: Scanner, wire: type[Wire]) -> tuple[bytes, list[int]]:
    """A whole valid session and the byte offsets where its messages start."""
    parts = [wire.config_file(CONFIG), wire.header(scanner.header())]
    parts += [scanner.readouts([line]) for line in scanner.all_lines()]
    parts.append(wire.close())
    starts, offset = [], 0
    for part in parts:
        starts.append(offset)
        offset += len(part)
    return b"".join(parts), starts


def bad_streams(valid: bytes, starts: list[int]) -> st.SearchStrategy[bytes]:
    """Streams that must fail: garbage, truncations, wrong ids and huge lengths after a valid prefix, and
    1-3 bytes of ``valid`` changed (which may also leave a valid session). A closure, so hypothesis never
    prints the 80 kB session in reprs."""

    @st.composite
    def streams(draw: st.DrawFn) -> bytes:
        kind = draw(st.sampled_from(["garbage", "truncated", "wrong-id", "huge-length", "mutated"]))
        if kind == "garbage":
            return draw(st.binary(max_size=2048))
        if kind == "truncated":
            return valid[: draw(st.integers(1, len(valid) - 1))]
        prefix = valid[: draw(st.sampled_from(starts))]
        if kind == "wrong-id":
            message_id = draw(st.integers(0, 0xFFFF).filter(lambda i: i not in KNOWN_IDS))
            return prefix + struct.pack("<H", message_id) + draw(st.binary(max_size=512))
        if kind == "huge-length":
            message_id = draw(st.sampled_from([2, 3, 5, 1028]))
            length = draw(st.integers(64 * 1024 * 1024 - 16, 0xFFFF_FFFF))
            return prefix + struct.pack("<HI", message_id, length) + draw(st.binary(max_size=256))
        # One to three bytes changed, mostly in the config / header / first readout headers.
        mutated = bytearray(valid)
        for _ in range(draw(st.integers(1, 3))):
            where = draw(st.one_of(st.integers(0, min(len(valid) - 1, 4000)), st.integers(0, len(valid) - 1)))
            mutated[where] = draw(st.integers(0, 255))
        return bytes(mutated)

    return streams()


def check_reply(payload: bytes, messages: list[Received], rest: int) -> str:
    """The connection's ending is one of the allowed ones; returns ``error`` / ``images`` / ``closed``."""
    assert rest == 0, f"the server sent {rest} bytes of an incomplete message"
    if not messages:
        assert payload == b"", "a non-empty stream got a plain close"
        return "closed"
    assert messages[-1].message_id == CLOSE
    for message in messages:
        if message.message_id == TEXT:
            assert message.json["kind"] in {"kadapt_session", "kadapt_plan", "kadapt_images", "kadapt_error"}
    errors = [m.json for m in messages if m.message_id == TEXT and m.json["kind"] == "kadapt_error"]
    if errors:
        assert len(errors) == 1
        assert messages[-2].message_id == TEXT
        assert errors[0]["slug"] in EXPECTED_SLUGS, errors[0]
        assert errors[0]["detail"]
        return "error"
    if len(messages) > 1:
        assert messages[-2].message_id == IMAGE
        return "images"
    return "closed"  # CLOSE before any data: answered with a CLOSE


async def good_session(port: int, valid: bytes, raw_client: Callable[[int], Any]) -> None:
    client: RawClient = await raw_client(port)
    await client.send(valid)
    messages = await client.until_close(timeout_s=60)
    await client.aclose()
    assert [m.message_id for m in messages][-2:] == [IMAGE, CLOSE]


async def test_fuzzed_streams_end_cleanly_and_never_disturb_other_sessions(
    mrd_stack: EmbeddedStack,
    scanner: Scanner,
    wire: type[Wire],
    raw_client: Callable[[int], Any],
    exchange: Callable[..., bytes],
    parse_server_bytes: Callable[[bytes], tuple[list[Received], int]],
) -> None:
    port = mrd_stack.mrd_port
    assert port is not None
    valid, starts = valid_session(scanner, wire)
    endings: list[str] = []

    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(payload=bad_streams(valid, starts))
    def fuzz(payload: bytes) -> None:
        messages, rest = parse_server_bytes(exchange(port, payload, 30.0))
        endings.append(check_reply(payload, messages, rest))

    stop = asyncio.Event()

    async def good_sessions() -> int:
        completed = 0
        while not stop.is_set() or completed == 0:
            await good_session(port, valid, raw_client)
            completed += 1
        return completed

    concurrent = asyncio.create_task(good_sessions())
    try:
        await asyncio.to_thread(fuzz)
    finally:
        stop.set()
        completed = await concurrent
    assert completed >= 1
    assert "error" in endings
    await good_session(port, valid, raw_client)  # and the server still serves

    # No scan of a failed session is left open (the scanner's session is gone).
    scans_dir = mrd_stack.gateway_app.state.settings.scans_dir
    for scan_dir in scans_dir.iterdir():
        scan = (await mrd_stack.gateway.get(f"/v1/scans/{scan_dir.name}")).json()
        assert scan["state"] in ("reconstructing", "done", "failed"), scan
