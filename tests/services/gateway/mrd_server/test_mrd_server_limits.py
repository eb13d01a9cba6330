"""The MRD server's bounds: concurrent sessions, readouts held per connection, idle and non-reading
clients, shutdown with sessions open — each checked on a gateway with a fake sampler in this process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from kadapt.mrd.stream import decode_acquisitions

if TYPE_CHECKING:
    from conftest import Gateway, GatewayFactory, RawClient, Scanner, Wire

TEXT, CLOSE = 5, 4
CONFIG = "kadapt;R=4;acs=4;recon=zero-filled"


def mrd_port(gateway: Gateway) -> int:
    return int(gateway.app.state.mrd_server.port)


async def wait_for_metric(gateway: Gateway, line: str, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while line not in (await gateway.client.get("/metrics")).text:
            await asyncio.sleep(0.02)


async def test_sessions_beyond_the_limit_are_refused_and_the_slot_frees_up(
    make_gateway: GatewayFactory, wire: type[Wire], raw_client: Callable[[int], Any]
) -> None:
    async with make_gateway(mrd_port=0, mrd_max_connections=1) as gateway:
        first: RawClient = await raw_client(mrd_port(gateway))
        await first.send(wire.config_file(CONFIG))
        await asyncio.sleep(0.05)  # the first session is open
        second: RawClient = await raw_client(mrd_port(gateway))
        refused = await second.until_close(timeout_s=10)
        assert [m.message_id for m in refused] == [TEXT, CLOSE]
        assert refused[0].json["slug"] == "service-unavailable"
        assert "mrd_max_connections" in refused[0].json["detail"]
        await second.aclose()

        await first.send(wire.close())
        assert [m.message_id for m in await first.until_close()] == [CLOSE]
        await first.aclose()
        await wait_for_metric(gateway, "kadapt_gateway_mrd_active_sessions 0.0")
        third: RawClient = await raw_client(mrd_port(gateway))
        await third.send(wire.config_file(CONFIG), wire.close())
        assert [m.message_id for m in await third.until_close()] == [CLOSE]
        await third.aclose()


async def test_readouts_reach_ingest_in_bounded_batches(
    make_gateway: GatewayFactory, scanner: Scanner, wire: type[Wire], raw_client: Callable[[int], Any]
) -> None:
    async with make_gateway(mrd_port=0, mrd_batch_readouts=8) as gateway:
        service = gateway.app.state.service
        batches: list[int] = []
        ingest = service.ingest

        async def counting_ingest(scan_id: str, payload: bytes) -> Any:
            batches.append(len(decode_acquisitions(payload)))
            return await ingest(scan_id, payload)

        service.ingest = counting_ingest
        client: RawClient = await raw_client(mrd_port(gateway))
        # Everything in one write: the server still holds at most 8 readouts before ingesting them.
        await client.send(
            wire.config_file(CONFIG + ";mode=prospective"),
            wire.header(scanner.header()),
            scanner.readouts(scanner.all_lines()),
            wire.close(),
        )
        session = await client.receive()
        scan_id = session.json["scan_id"]
        async with asyncio.timeout(10):
            while (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["state"] != "reconstructing":
                await asyncio.sleep(0.02)
        assert max(batches) <= 8
        assert sum(batches) == scanner.width
        images = np.ones((1, 1, scanner.height, scanner.width), dtype=np.float32)
        await gateway.finish_recon(scan_id, images)
        kinds = [m.json["kind"] if m.message_id == TEXT else m.message_id for m in await client.until_close()]
        assert kinds[-3:] == ["kadapt_images", 1022, CLOSE]
        await client.aclose()


async def test_a_silent_session_ends_with_deadline_exceeded(
    make_gateway: GatewayFactory, wire: type[Wire], raw_client: Callable[[int], Any]
) -> None:
    async with make_gateway(mrd_port=0, mrd_idle_timeout_s=0.2) as gateway:
        client: RawClient = await raw_client(mrd_port(gateway))
        await client.send(wire.config_file(CONFIG))
        messages = await client.until_close(timeout_s=5)
        assert messages[0].json["slug"] == "deadline-exceeded"
        assert "no data for 0.2 s" in messages[0].json["detail"]
        await client.aclose()


async def test_a_client_that_stops_reading_is_dropped_and_others_are_served(
    make_gateway: GatewayFactory, scanner: Scanner, wire: type[Wire], raw_client: Callable[[int], Any]
) -> None:
    async with make_gateway(mrd_port=0, mrd_write_timeout_s=0.3) as gateway:
        client: RawClient = await raw_client(mrd_port(gateway))
        await client.send(
            wire.config_file(CONFIG),
            wire.header(scanner.header()),
            scanner.readouts(scanner.all_lines()),
            wire.close(),
        )
        scan_id = (await client.receive()).json["scan_id"]
        async with asyncio.timeout(10):
            while (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["state"] != "reconstructing":
                await asyncio.sleep(0.02)
        # 16 MB of images for a client that reads nothing: far beyond the socket buffers.
        await gateway.finish_recon(scan_id, np.ones((16, 1, 512, 512), dtype=np.float32))
        await wait_for_metric(gateway, 'kadapt_gateway_mrd_sessions_total{outcome="deadline-exceeded"} 1.0')
        await client.aclose()
        # The scan itself is done and stays available over REST.
        assert (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["state"] == "done"
        other: RawClient = await raw_client(mrd_port(gateway))
        await other.send(wire.config_file(CONFIG), wire.close())
        assert [m.message_id for m in await other.until_close()] == [CLOSE]
        await other.aclose()


async def test_shutdown_ends_open_sessions_and_removes_their_scans(
    make_gateway: GatewayFactory, scanner: Scanner, wire: type[Wire], raw_client: Callable[[int], Any]
) -> None:
    async with make_gateway(mrd_port=0) as gateway:
        client: RawClient = await raw_client(mrd_port(gateway))
        await client.send(
            wire.config_file(CONFIG), wire.header(scanner.header()), scanner.readouts(scanner.lines_for([0]))
        )
        assert (await client.receive()).json["kind"] == "kadapt_session"
        await asyncio.sleep(0.05)  # the readout is ingested after the flush delay
        assert len(list(gateway.settings.scans_dir.iterdir())) == 1
    assert await client.at_eof()
    await client.aclose()
    assert list(gateway.settings.scans_dir.iterdir()) == []
