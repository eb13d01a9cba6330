"""``POST .../acquisitions?wait_plan=true``: the request that completes the ACS block answers with the
plan (the one ``GET .../plan`` returns, recorded once), the fallback at the deadline when the sampler is
slow; other requests do not wait; without the flag the report carries no plan."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from kadapt.gateway.domain import scans
from kadapt.gateway.domain.ingest import ParsedRequest, parse_request
from kadapt.gateway.domain.session import ScanSession
from kadapt.schemas import IngestReport, PlanResponse

if TYPE_CHECKING:
    from conftest import Gateway, GatewayFactory, Scanner


async def send_waiting(gateway: Gateway, scan_id: str, payload: bytes) -> IngestReport:
    response = await gateway.client.post(
        f"/v1/scans/{scan_id}/acquisitions?wait_plan=true",
        content=payload,
        headers={"content-type": "application/vnd.ismrmrd.stream"},
    )
    assert response.status_code == 200, response.text
    return IngestReport.model_validate_json(response.content)


async def get_plan(gateway: Gateway, scan_id: str) -> PlanResponse:
    response = await gateway.client.get(f"/v1/scans/{scan_id}/plan")
    assert response.status_code == 200, response.text
    return PlanResponse.model_validate_json(response.content)


async def metrics(gateway: Gateway) -> str:
    return str((await gateway.client.get("/metrics")).text)


async def test_the_acs_completing_post_answers_with_the_plan_a_later_get_returns(
    gateway: Gateway, scanner: Scanner
) -> None:
    scan_id = await gateway.create_scan(scanner, sampler="learned-demo", plan_deadline_ms=2_000.0)
    acs = scanner.acs_columns(4)
    first_half = await send_waiting(gateway, scan_id, scanner.readouts(scanner.lines_for(acs[:2])))
    # Not the whole ACS block: nothing to wait for, no plan asked for yet.
    assert (first_half.state.value, first_half.plan, first_half.plan_ready) == ("calibrating", None, False)
    assert gateway.sampler.requests == []

    report = await send_waiting(gateway, scan_id, scanner.readouts(scanner.lines_for(acs[2:])))
    assert report.plan is not None
    assert not report.plan.degraded
    assert (report.state.value, report.plan_ready, report.accepted) == ("acquiring", True, 2)
    assert set(acs) <= set(report.plan.lines)
    assert await get_plan(gateway, scan_id) == report.plan
    text = await metrics(gateway)
    assert 'kadapt_gateway_plans_total{outcome="sampler"} 1.0' in text
    assert 'kadapt_gateway_plans_total{outcome="fallback"}' not in text
    assert len(gateway.sampler.requests) == 1

    # A plan is current: a later request with the flag carries it (no waiting involved).
    rest = [line for line in report.plan.lines if line not in acs]
    later = await send_waiting(gateway, scan_id, scanner.readouts(scanner.lines_for(rest[:1])))
    assert later.plan == report.plan


async def test_a_slow_sampler_gives_the_fallback_inline_at_the_deadline(
    make_gateway: GatewayFactory, scanner: Scanner
) -> None:
    async with make_gateway(delay_s=5.0) as gateway:
        scan_id = await gateway.create_scan(scanner, plan_deadline_ms=150.0)
        report = await send_waiting(
            gateway, scan_id, scanner.readouts(scanner.lines_for(scanner.acs_columns(4)))
        )
        assert report.plan is not None
        assert report.plan.degraded
        assert report.plan.reason == "sampler-timeout"
        assert report.plan.served_by == "vd-random"
        assert len(report.plan.lines) == 8
        assert report.state.value == "acquiring"
        assert await get_plan(gateway, scan_id) == report.plan  # recorded: the same answer later
        text = await metrics(gateway)
        assert 'kadapt_gateway_fallback_total{reason="sampler-timeout"} 1.0' in text
        assert 'kadapt_gateway_plans_total{outcome="fallback"} 1.0' in text


async def test_without_the_flag_the_report_has_no_plan(gateway: Gateway, scanner: Scanner) -> None:
    scan_id = await gateway.create_scan(scanner)
    response = await gateway.send(scan_id, scanner.readouts(scanner.lines_for(scanner.acs_columns(4))))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["plan"] is None
    await get_plan(gateway, scan_id)
    again = await gateway.send(scan_id, scanner.readouts([(0, 0, 0)]))
    assert again.json()["plan"] is None  # a plan is current, but nobody asked for it


async def test_the_next_round_of_a_multi_round_policy_comes_inline_too(
    make_gateway: GatewayFactory, scanner: Scanner
) -> None:
    async with make_gateway(mode="two-rounds") as gateway:
        scan_id = await gateway.create_scan(scanner, plan_deadline_ms=2_000.0)
        acs = scanner.acs_columns(4)
        first = await send_waiting(gateway, scan_id, scanner.readouts(scanner.lines_for(acs)))
        assert first.plan is not None
        assert (first.plan.round, first.plan.final) == (0, False)
        # The round's last lines start round 1; the answer waits for it.
        second = await send_waiting(gateway, scan_id, scanner.readouts([(0, 0, 0), (31, 0, 0)]))
        assert second.plan is not None
        assert (second.plan.round, second.plan.final, len(second.plan.lines)) == (1, True, 8)
        assert await get_plan(gateway, scan_id) == second.plan
        assert 'kadapt_gateway_plans_total{outcome="sampler"} 2.0' in await metrics(gateway)


async def test_a_retrospective_upload_in_one_request_gets_its_plan(
    gateway: Gateway, scanner: Scanner
) -> None:
    scan_id = await gateway.create_scan(scanner, retrospective=True, plan_deadline_ms=2_000.0)
    report = await send_waiting(gateway, scan_id, scanner.readouts(scanner.all_lines()))
    assert report.plan is not None
    assert report.plan == await get_plan(gateway, scan_id)
    assert (report.accepted, report.staged, report.skipped_unplanned) == (8, 0, 24)


async def test_the_deadline_counts_from_the_arrival_of_the_acs_completing_request(
    make_gateway: GatewayFactory, scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parsing the request is made slow (300 ms); the sampler never answers in time. The fallback must
    # still reach the scanner about one deadline after it sent the request, not one deadline after the
    # gateway finished storing it.
    def slow_parse(payload: bytes, session: ScanSession) -> ParsedRequest:
        time.sleep(0.3)
        return parse_request(payload, session)

    monkeypatch.setattr(scans, "parse_request", slow_parse)
    async with make_gateway(delay_s=5.0) as gateway:
        scan_id = await gateway.create_scan(scanner, plan_deadline_ms=400.0)
        sent = time.time() * 1000.0
        report = await send_waiting(
            gateway, scan_id, scanner.readouts(scanner.lines_for(scanner.acs_columns(4)))
        )
        answered = time.time() * 1000.0
        assert report.plan is not None
        assert report.plan.degraded
        session = await gateway.app.state.service.store.get(scan_id)
        assert session.plan_deadline_unix_ms is not None
        # Anchored at arrival: within the deadline of the send, not 300 ms (the slow parse) later.
        assert sent <= session.plan_deadline_unix_ms - 400.0 < sent + 150.0
        assert answered - sent < 400.0 + 150.0
