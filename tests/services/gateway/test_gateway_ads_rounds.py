"""ADS plans in rounds through the gateway (issue 5): the real sampler app in-process with a tiny ``ads``
bundle, the SENSE image so far as the plan payload, per-frame rounds with their own deadlines, and the
per-frame fallback of a later round."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from tests.shared.bundles.ads_fixtures import write_tiny_ads_bundle

from kadapt.bundles import load_bundle
from kadapt.bundles.ads_runtime import AdsRuntime
from kadapt.gateway.api.app import create_app
from kadapt.gateway.domain.dynamic_plans import earlier_lines, sampler_payload
from kadapt.gateway.domain.planning import PlanContext, check_plan, fallback_plan
from kadapt.gateway.domain.session import Encoding, ScanSession
from kadapt.gateway.settings import GatewaySettings
from kadapt.jobs import MemoryJobQueue
from kadapt.masks import line_budget
from kadapt.sampler.api.app import create_app as create_sampler
from kadapt.sampler.settings import SamplerSettings
from kadapt.schemas import PlanResponse, ScanGeometry, ScanPolicy
from kadapt.schemas.plan_binary import decode_plan_request

if TYPE_CHECKING:
    from conftest import Scanner

MRD = {"content-type": "application/vnd.ismrmrd.stream"}
FRAMES, HEIGHT, WIDTH, COILS, NUM_ACS = 4, 16, 32, 2, 4
NAME = "tiny-ads"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ads-gateway-models")
    write_tiny_ads_bundle(root, NAME, frames=FRAMES, height=HEIGHT, width=WIDTH, num_acs=NUM_ACS, seed=3)
    return root


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, repository: Path) -> AsyncIterator[httpx.AsyncClient]:
    sampler = create_sampler(SamplerSettings(model_repository=repository))
    async with contextlib.AsyncExitStack() as exits:
        await exits.enter_async_context(sampler.router.lifespan_context(sampler))
        sampler_client = await exits.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=sampler), base_url="http://sampler")
        )
        gateway = create_app(
            GatewaySettings(
                data_dir=tmp_path / "data", sampler_url="http://sampler", model_repository=repository
            ),
            sampler_client=sampler_client,
            queue=MemoryJobQueue(),
        )
        await exits.enter_async_context(gateway.router.lifespan_context(gateway))
        yield await exits.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway")
        )


def frame_mask(plan: PlanResponse) -> np.ndarray:
    assert plan.frame_lines is not None
    mask = np.zeros((FRAMES, WIDTH), dtype=bool)
    for frame, lines in enumerate(plan.frame_lines):
        mask[frame, list(lines)] = True
    return mask


async def test_two_ads_rounds_through_the_gateway(
    tmp_path: Path, repository: Path, make_scanner: type[Scanner]
) -> None:
    scanner = make_scanner(frames=FRAMES, coils=COILS, height=HEIGHT, width=WIDTH, seed=4)
    runtime = AdsRuntime.open(load_bundle(repository, NAME))
    policy = {
        "sampler": NAME,
        "num_acs": NUM_ACS,
        "acceleration": 4.0,
        "fallback": "kt-equispaced",
        "plan_deadline_ms": 5_000.0,
    }
    async with stack(tmp_path, repository) as client:
        created = await client.post("/v1/scans", json={"header_xml": scanner.header(), "policy": policy})
        assert created.status_code == 201, created.text
        scan_id = created.json()["scan_id"]
        sent = np.zeros((FRAMES, WIDTH), dtype=bool)
        wanted = np.zeros((FRAMES, WIDTH), dtype=bool)
        wanted[:, scanner.acs_columns(NUM_ACS)] = True
        for round_index in range(2):
            # Acquire what the scan still lacks (round 0: the ACS block; then the last plan's new lines).
            reply = await client.post(
                f"/v1/scans/{scan_id}/acquisitions?wait_plan=true",
                content=scanner.readouts(lines_of(wanted & ~sent)),
                headers=MRD,
            )
            assert reply.status_code == 200, reply.text
            sent |= wanted
            plan = PlanResponse.model_validate_json((await client.get(f"/v1/scans/{scan_id}/plan")).content)
            assert plan.round == round_index
            assert not plan.degraded, plan.reason
            assert plan.final == (round_index == 1)
            mask = frame_mask(plan)
            assert mask.sum(axis=1).tolist() == [runtime.round_budget(4.0, NUM_ACS, round_index)] * FRAMES
            assert np.all(mask[wanted])  # every frame keeps the ACS and the earlier round's lines
            wanted = mask
        assert wanted.sum(axis=1).tolist() == [line_budget(WIDTH, 4.0, NUM_ACS)] * FRAMES
        # The sampler saw the SENSE image of the stored data: the served rounds are the offline replay.
        assert np.array_equal(wanted, runtime.plan_all(scanner.expected[0], 4.0, NUM_ACS))
        last = await client.post(
            f"/v1/scans/{scan_id}/acquisitions",
            content=scanner.readouts(lines_of(wanted & ~sent)),
            headers=MRD,
        )
        assert last.json()["accepted"] == int((wanted & ~sent).sum())
        assert last.json()["outside_plan"] == 0


def lines_of(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(ky, slice 0, frame) of every True entry of a ``(frames, W)`` mask."""
    return [(int(ky), 0, int(frame)) for frame, ky in zip(*np.nonzero(mask), strict=True)]


def context(**changes: Any) -> PlanContext:
    fields: dict[str, Any] = {
        "scan_id": "s",
        "policy": ScanPolicy(sampler=NAME, num_acs=NUM_ACS, acceleration=4.0, fallback="kt-equispaced"),
        "geometry": ScanGeometry(
            slices=1, frames=FRAMES, coils=COILS, height=HEIGHT, width=WIDTH, readout_samples=2 * HEIGHT
        ),
        "acquired": (14, 15, 16, 17),
        "round": 1,
        "deadline_unix_ms": 0.0,
    }
    fields.update(changes)
    return PlanContext(**fields)


@pytest.mark.parametrize("fallback", ["kt-equispaced", "vd-random"])
def test_later_round_fallback_keeps_each_frames_lines_and_completes_the_mask(fallback: str) -> None:
    per_frame = tuple((f, 14, 15, 16, 17, 20 + f) for f in range(FRAMES))
    ctx = context(
        acquired_per_frame=per_frame,
        policy=ScanPolicy(sampler=NAME, num_acs=NUM_ACS, acceleration=4.0, fallback=fallback),
    )
    plan = fallback_plan(ctx, "sampler-timeout")
    assert plan.final
    assert plan.degraded
    assert plan.frame_lines is not None
    for frame, lines in enumerate(plan.frame_lines):
        assert len(lines) == line_budget(WIDTH, 4.0, NUM_ACS)
        assert set(per_frame[frame]) <= set(lines)
    assert check_plan(plan, ctx) is None


def test_check_plan_refuses_a_round_that_drops_a_frames_lines() -> None:
    per_frame = tuple((f, 14, 15, 16, 17) for f in range(FRAMES))
    ctx = context(acquired_per_frame=per_frame)
    good = fallback_plan(ctx, "x")
    assert check_plan(good, ctx) is None
    assert good.frame_lines is not None
    frame_lines = list(good.frame_lines)
    frame_lines[1] = tuple(line for line in frame_lines[1] if line != 1)  # frame 1 loses its own line
    bad = good.model_copy(update={"frame_lines": tuple(frame_lines), "final": False})
    assert "frame_lines[1] drop acquired lines [1]" in (check_plan(bad, ctx) or "")
    flat = good.model_copy(update={"frame_lines": None})
    assert "must give frame_lines" in (check_plan(flat, ctx) or "")


def test_payload_is_resolved_from_the_bundle_kind(repository: Path, tmp_path: Path) -> None:
    assert sampler_payload(ScanPolicy(sampler=NAME), repository) == "sense-image"
    assert sampler_payload(ScanPolicy(sampler=f"{NAME}/1"), repository) == "sense-image"
    assert sampler_payload(ScanPolicy(sampler="kt-equispaced"), repository) == "acs"
    assert sampler_payload(ScanPolicy(sampler="no-such-bundle"), repository) == "acs"
    assert sampler_payload(ScanPolicy(sampler=NAME), None) == "acs"


def test_earlier_lines_are_per_frame_after_a_per_frame_round() -> None:
    geometry = context().geometry
    session = ScanSession(
        scan_id="0" * 32,
        header_xml="<x/>",
        geometry=geometry,
        policy=context().policy,
        encoding=Encoding(ky_min=0, ky_max=WIDTH - 1, ky_offset=0),
        plan_round=1,
        plan=PlanResponse(
            scan_id="s",
            policy=NAME,
            lines=(0, 14, 15, 16, 17),
            frame_lines=tuple((f, 14, 15, 16, 17) for f in range(FRAMES)),
            round=0,
            final=False,
            served_by=NAME,
        ),
    )
    acs = (14, 15, 16, 17)
    assert earlier_lines(session, acs) == (acs, tuple((f, 14, 15, 16, 17) for f in range(FRAMES)))
    session.plan_round = 0
    assert earlier_lines(session, acs) == (acs, None)


async def test_a_late_second_round_gets_its_own_deadline_and_a_per_frame_fallback(
    tmp_path: Path, repository: Path, make_scanner: type[Scanner]
) -> None:
    """Round 0 answers (frame-specific lines); round 1's sampler is too slow: the gateway answers round 1
    by its own deadline with the fallback, which keeps each frame's round-0 lines. The requests carry the
    SENSE image so far and the per-frame lines."""
    scanner = make_scanner(frames=FRAMES, coils=COILS, height=HEIGHT, width=WIDTH, seed=5)
    seen: list[Any] = []

    async def sampler(request: httpx.Request) -> httpx.Response:
        plan_request = decode_plan_request(request.content, request.headers.get("content-type"))
        seen.append(plan_request)
        if plan_request.round == 1:
            await asyncio.sleep(2.0)
        frame_lines = tuple(
            tuple(sorted({*plan_request.acquired, frame, WIDTH - 1 - frame})) for frame in range(FRAMES)
        )
        plan = PlanResponse(
            scan_id=plan_request.scan_id,
            policy=plan_request.policy,
            lines=frame_lines[0],
            frame_lines=frame_lines,
            round=plan_request.round,
            final=False,
            served_by=NAME,
        )
        return httpx.Response(200, content=plan.model_dump_json())

    policy = {"sampler": NAME, "num_acs": NUM_ACS, "acceleration": 4.0, "fallback": "kt-equispaced"}
    async with httpx.AsyncClient(transport=httpx.MockTransport(sampler), base_url="http://sampler") as fake:
        gateway = create_app(
            GatewaySettings(
                data_dir=tmp_path / "data", sampler_url="http://sampler", model_repository=repository
            ),
            sampler_client=fake,
            queue=MemoryJobQueue(),
        )
        async with (
            gateway.router.lifespan_context(gateway),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gateway), base_url="http://gateway"
            ) as client,
        ):
            policy["plan_deadline_ms"] = 300.0
            created = await client.post("/v1/scans", json={"header_xml": scanner.header(), "policy": policy})
            scan_id = created.json()["scan_id"]
            acs = np.zeros((FRAMES, WIDTH), dtype=bool)
            acs[:, scanner.acs_columns(NUM_ACS)] = True
            first = (
                await client.post(
                    f"/v1/scans/{scan_id}/acquisitions?wait_plan=true",
                    content=scanner.readouts(lines_of(acs)),
                    headers=MRD,
                )
            ).json()["plan"]
            round0 = frame_mask(PlanResponse.model_validate(first, strict=False))
            second = (
                await client.post(
                    f"/v1/scans/{scan_id}/acquisitions?wait_plan=true",
                    content=scanner.readouts(lines_of(round0 & ~acs)),
                    headers=MRD,
                )
            ).json()["plan"]
    plan = PlanResponse.model_validate(second, strict=False)
    assert (plan.round, plan.degraded, plan.final) == (1, True, True)
    assert plan.reason == "sampler-timeout"
    assert plan.served_by == "kt-equispaced"
    mask = frame_mask(plan)
    assert mask.sum(axis=1).tolist() == [line_budget(WIDTH, 4.0, NUM_ACS)] * FRAMES
    assert np.all(mask[round0])  # every frame keeps its own round-0 lines
    assert [request.round for request in seen] == [0, 1]
    assert all(request.payload == "sense-image" for request in seen)
    assert seen[1].acquired_per_frame == tuple(tuple(np.flatnonzero(row).tolist()) for row in round0)
    image = np.load(io.BytesIO(seen[1].acs_npy() or b""))
    assert (image.shape, image.dtype) == ((FRAMES, HEIGHT, WIDTH), np.complex64)
