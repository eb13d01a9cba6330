"""The deployment path: the app builds a RedisSessionStore and a RedisJobQueue from ``redis_url``
(a real redis-server), and two replicas share scans through Redis and the data volume."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kadapt.gateway.domain.store import RedisSessionStore
from kadapt.jobs import RedisJobQueue
from kadapt.schemas import PlanResponse

if TYPE_CHECKING:
    from conftest import GatewayFactory, Scanner


async def test_prospective_scan_in_redis_mode(
    make_gateway: GatewayFactory, scanner: Scanner, redis_server: Any
) -> None:
    async with make_gateway(redis_url=redis_server.url) as gateway:
        assert isinstance(gateway.app.state.service.store, RedisSessionStore)
        assert isinstance(gateway.queue, RedisJobQueue)
        assert (await gateway.client.get("/readyz")).status_code == 200
        scan_id = await gateway.create_scan(scanner, recon="zero-filled")
        await gateway.send(scan_id, scanner.readouts(scanner.lines_for(scanner.acs_columns(4))))
        plan = PlanResponse.model_validate_json(
            (await gateway.client.get(f"/v1/scans/{scan_id}/plan")).content
        )
        assert not plan.degraded
        duplicate = await gateway.send(scan_id, scanner.readouts([(plan.lines[0], 0, 0), (15, 0, 0)]))
        assert duplicate.status_code == 409
        rest = [line for line in plan.lines if line not in scanner.acs_columns(4)]
        assert (await gateway.send(scan_id, scanner.readouts(scanner.lines_for(rest)))).status_code == 200
        completed = await gateway.client.post(f"/v1/scans/{scan_id}/complete")
        assert completed.json()["state"] == "reconstructing", completed.text
        images = np.ones((1, 1, 32, 32), dtype=np.float32)
        await gateway.finish_recon(scan_id, images)
        npy = await gateway.client.get(f"/v1/scans/{scan_id}/images")
        np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), images)
        assert (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["state"] == "done"


async def test_two_replicas_share_a_retrospective_scan(
    make_gateway: GatewayFactory, scanner: Scanner, redis_server: Any, tmp_path: Path
) -> None:
    shared = tmp_path / "shared-volume"
    async with (
        make_gateway(redis_url=redis_server.url, data_dir=shared) as first,
        make_gateway(redis_url=redis_server.url, data_dir=shared) as second,
    ):
        scan_id = await first.create_scan(scanner, retrospective=True)
        lines = scanner.all_lines()
        replicas = [first, second]
        for index, start in enumerate(range(0, len(lines), 8)):
            response = await replicas[index % 2].send(scan_id, scanner.readouts(lines[start : start + 8]))
            assert response.status_code == 200, response.text
        plan = PlanResponse.model_validate_json(
            (await second.client.get(f"/v1/scans/{scan_id}/plan")).content
        )
        assert (await second.send(scan_id, scanner.readouts([(16, 0, 0)]))).status_code == 409  # ACS again
        unplanned = next(line for line in range(32) if line not in plan.lines)
        again = (await first.send(scan_id, scanner.readouts([(unplanned, 0, 0)]))).json()
        assert again == {**again, "accepted": 0, "skipped_unplanned": 1}
        view = (await first.client.get(f"/v1/scans/{scan_id}")).json()
        assert view["acquired_lines"] == len(plan.lines) == 8
        mask = np.load(io.BytesIO((await second.client.get(f"/v1/scans/{scan_id}/mask")).content))
        assert tuple(np.flatnonzero(mask[0, 0])) == plan.lines
        assert (await second.client.post(f"/v1/scans/{scan_id}/complete")).status_code == 200
