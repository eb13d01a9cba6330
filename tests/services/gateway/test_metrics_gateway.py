"""The gateway's plan metrics scraped from ``/metrics`` in-process: latency buckets around the deadline,
``fallback_total{reason}``, ``deadline_miss_total``; and the sampler's state in ``/readyz``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from kadapt.gateway.domain.store import MemorySessionStore
from kadapt.schemas import PlanResponse

if TYPE_CHECKING:
    from conftest import Gateway, GatewayFactory, Scanner


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample, None when the series is not exported."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return None


async def plan_after_acs(gateway: Gateway, scanner: Scanner, **policy: object) -> PlanResponse:
    scan_id = await gateway.create_scan(scanner, **policy)
    report = await gateway.send(scan_id, scanner.readouts(scanner.lines_for(scanner.acs_columns(4))))
    assert report.status_code == 200, report.text
    response = await gateway.client.get(f"/v1/scans/{scan_id}/plan")
    assert response.status_code == 200, response.text
    return PlanResponse.model_validate_json(response.content)


async def test_a_sampler_plan_is_counted_in_time_with_buckets_around_the_deadline(
    gateway: Gateway, scanner: Scanner
) -> None:
    plan = await plan_after_acs(gateway, scanner, plan_deadline_ms=2_000.0)
    assert not plan.degraded
    text = (await gateway.client.get("/metrics")).text
    assert metric(text, "kadapt_gateway_plans_total", outcome="sampler") == 1.0
    assert metric(text, "kadapt_gateway_plan_seconds_count") == 1.0
    assert metric(text, "kadapt_gateway_deadline_miss_total") == 0.0
    assert metric(text, "kadapt_gateway_fallback_total") is None  # no fallback, no series
    bounds = {float(b) for b in re.findall(r'kadapt_gateway_plan_seconds_bucket\{le="([^"+]+)"\}', text)}
    assert {0.005, 0.0075, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1} <= bounds


async def test_a_fallback_is_counted_by_reason_and_a_down_sampler_leaves_the_gateway_ready(
    make_gateway: GatewayFactory, scanner: Scanner
) -> None:
    async with make_gateway(mode="down") as gateway:
        plan = await plan_after_acs(gateway, scanner, plan_deadline_ms=2_000.0)
        assert plan.degraded
        text = (await gateway.client.get("/metrics")).text
        assert metric(text, "kadapt_gateway_fallback_total", reason="sampler-unavailable") == 1.0
        assert metric(text, "kadapt_gateway_plans_total", outcome="fallback") == 1.0
        assert metric(text, "kadapt_gateway_deadline_miss_total") == 0.0  # the fallback came in time
        ready = await gateway.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "store": "ok",
            "queue": "ok",
            "sampler": "down: ConnectError",
            "auth": "disabled",
        }


async def test_a_plan_recorded_after_the_deadline_is_a_deadline_miss(
    make_gateway: GatewayFactory, scanner: Scanner, tmp_path: Path
) -> None:
    """The replica that asked the sampler stops before answering; the other replica watches the store
    until the deadline and only then records the fallback: an answer after the deadline, one miss."""
    store = MemorySessionStore()
    async with make_gateway(store=store, data_dir=tmp_path / "shared") as second:
        async with make_gateway(delay_s=5.0, store=store, data_dir=tmp_path / "shared") as first:
            scan_id = await first.create_scan(scanner, plan_deadline_ms=100.0)
            await first.send(scan_id, scanner.readouts(scanner.lines_for(scanner.acs_columns(4))))
        plan = PlanResponse.model_validate_json(
            (await second.client.get(f"/v1/scans/{scan_id}/plan")).content
        )
        assert plan.degraded
        again = await second.client.get(f"/v1/scans/{scan_id}/plan")  # the recorded plan: no new miss
        assert PlanResponse.model_validate_json(again.content) == plan
        text = (await second.client.get("/metrics")).text
        assert metric(text, "kadapt_gateway_deadline_miss_total") == 1.0
        assert metric(text, "kadapt_gateway_fallback_total", reason="sampler-timeout") == 1.0
