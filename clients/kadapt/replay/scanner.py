"""The scanner side of one scan over the gateway's REST API (docs/api.md).

ACS block first, then the plan (the gateway has already asked the sampler when the ACS completed), then
only the planned lines in shots of ``shot_lines`` readouts, optionally paced by TR, then complete
(:func:`acquire_scan`). A multi-round (ADS) plan is not ``final``: the scanner acquires its new lines,
whose last shot starts the gateway's next round, and takes that round's plan from the answer, until a
final plan; every round is recorded (:class:`PlanRound`: lines per frame, degraded, the scanner's wait
and whether it stayed within the plan deadline). Then complete
(:func:`acquire_scan`, the scanner's part), wait for the reconstruction and fetch the images
(:func:`collect_scan`, which a scanner may leave to a viewer while it goes on with its next scan).
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass

import httpx
import numpy as np
from numpy.typing import NDArray

from kadapt.errors import JobFailedError, KadaptError, ServiceUnavailableError
from kadapt.replay.sources import ReplayScan
from kadapt.schemas import PlanResponse, ScanCreate, ScanPolicy, ScanPublic, ScanState

MRD_STREAM = "application/vnd.ismrmrd.stream"


@dataclass(frozen=True)
class PlanRound:
    """One plan round as the scanner saw it: ``lines_per_frame`` the plan's line count per frame,
    ``elapsed_ms`` from sending the shot that completed the previous round's lines (round 0: the ACS
    block) to holding this plan, ``deadline_met`` whether that stayed within ``plan_deadline_ms``."""

    round: int
    lines_per_frame: tuple[int, ...]
    final: bool
    degraded: bool
    reason: str | None
    served_by: str
    elapsed_ms: float
    deadline_met: bool

    @classmethod
    def of(cls, plan: PlanResponse, frames: int, elapsed_ms: float, deadline_ms: float) -> PlanRound:
        counts = (
            tuple(len(lines) for lines in plan.frame_lines)
            if plan.frame_lines is not None
            else (len(plan.lines),) * frames
        )
        return cls(
            round=plan.round,
            lines_per_frame=counts,
            final=plan.final,
            degraded=plan.degraded,
            reason=plan.reason,
            served_by=plan.served_by,
            elapsed_ms=elapsed_ms,
            deadline_met=elapsed_ms <= deadline_ms,
        )


@dataclass
class ScanOutcome:
    scan_id: str
    plan: PlanResponse
    plan_ms: float
    plan_rtt_ms: float
    mask: NDArray[np.bool_]
    images: NDArray[np.float32]
    final: ScanPublic
    scan_seconds: float
    recon_seconds: float
    rounds: tuple[PlanRound, ...] = ()


def _raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": response.text}
    raise ServiceUnavailableError(
        f"{response.request.method} {response.request.url.path} -> {response.status_code}: "
        f"{problem.get('type', '')} {problem.get('detail', '')}".strip()
    )


def _cells(slices: int, frames: int, columns_per_frame: list[list[int]]) -> NDArray[np.int64]:
    """(n, 3) rows (slice, frame, column), slice-major like a 2D multi-slice sequence loop."""
    rows = [(s, f, c) for s in range(slices) for f in range(frames) for c in columns_per_frame[f]]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


async def _send_lines(
    client: httpx.AsyncClient,
    scan_id: str,
    scan: ReplayScan,
    cells: NDArray[np.int64],
    acs: frozenset[int],
    shot_lines: int,
    tr_ms: float,
    *,
    wait_plan: bool = False,
) -> tuple[float, PlanResponse | None]:
    """Post ``cells`` in shots, each after the ``tr_ms`` its readouts take to acquire; returns the
    ``perf_counter`` time at which the last shot was sent (after its acquisition) and, with
    ``wait_plan``, the plan the last shot's answer carried (None from a gateway without ``wait_plan``)."""
    sent = time.perf_counter()
    plan: PlanResponse | None = None
    path = f"/v1/scans/{scan_id}/acquisitions" + ("?wait_plan=true" if wait_plan else "")
    for start in range(0, len(cells), shot_lines):
        shot = cells[start : start + shot_lines]
        if tr_ms > 0:
            await asyncio.sleep(tr_ms * len(shot) / 1000.0)
        payload = scan.encode_lines(shot, acs)
        sent = time.perf_counter()
        response = await client.post(path, content=payload, headers={"content-type": MRD_STREAM})
        _raise_for_problem(response)
        if wait_plan:
            # Read only ``plan``: the report may carry fields this client does not know.
            inline = response.json().get("plan")
            plan = PlanResponse.model_validate(inline, strict=False) if inline is not None else None
    return sent, plan


@dataclass
class AcquiredScan:
    """A scan whose acquisition is over and whose reconstruction is queued (``complete`` answered at
    ``completed_at``, a ``perf_counter`` time); :func:`collect_scan` waits for its images."""

    scan_id: str
    plan: PlanResponse
    plan_ms: float
    plan_rtt_ms: float
    scan_seconds: float
    completed_at: float
    rounds: tuple[PlanRound, ...] = ()


async def acquire_scan(
    client: httpx.AsyncClient,
    scan: ReplayScan,
    policy: ScanPolicy,
    *,
    shot_lines: int = 32,
    tr_ms: float = 0.0,
) -> AcquiredScan:
    """The scanner's part of ``scan``: create, ACS block, plan, planned lines, complete. The session is
    deleted again if anything fails; otherwise :func:`collect_scan` (or the caller) deletes it."""
    started = time.perf_counter()
    info = scan.info
    response = await client.post(
        "/v1/scans", json=ScanCreate(header_xml=scan.header_xml, policy=policy).model_dump(mode="json")
    )
    _raise_for_problem(response)
    scan_id = ScanPublic.model_validate_json(response.content).scan_id
    try:
        if scan.preamble:  # noise readouts, before any imaging line
            response = await client.post(
                f"/v1/scans/{scan_id}/acquisitions",
                content=scan.preamble,
                headers={"content-type": MRD_STREAM},
            )
            _raise_for_problem(response)
        width, frames, slices = info.width, info.frames, info.slices
        acs_start = width // 2 - policy.num_acs // 2
        acs = frozenset(range(acs_start, acs_start + policy.num_acs))
        acs_sorted = sorted(acs)
        acs_cells = _cells(slices, frames, [acs_sorted] * frames)
        # The scanner's wait for a plan: from sending its last ACS shot (once acquired, i.e. after its
        # TR pacing) until the plan is in hand (the gateway starts planning when the ACS block is complete).
        # The last ACS shot's answer carries the plan (``wait_plan``); a gateway that does not know the
        # flag answers without it, and the plan is fetched with GET .../plan.
        last_acs_sent, plan = await _send_lines(
            client, scan_id, scan, acs_cells, acs, shot_lines, tr_ms, wait_plan=True
        )
        asked = last_acs_sent
        if plan is None:
            asked = time.perf_counter()
            response = await client.get(f"/v1/scans/{scan_id}/plan")
            _raise_for_problem(response)
            plan = PlanResponse.model_validate_json(response.content)
        received = time.perf_counter()
        plan_ms, plan_rtt_ms = (received - last_acs_sent) * 1000.0, (received - asked) * 1000.0
        rounds = [PlanRound.of(plan, frames, plan_ms, policy.plan_deadline_ms)]
        acquired: list[set[int]] = [set(acs) for _ in range(frames)]
        while True:
            remaining = [
                sorted(set(lines) - done)
                for lines, done in zip(_per_frame(plan, frames), acquired, strict=True)
            ]
            for done, lines in zip(acquired, remaining, strict=True):
                done.update(lines)
            if plan.final:
                break
            # A non-final (ADS) round: its lines' last shot starts the next round, whose plan it answers.
            last_sent, plan = await _next_round(
                client, scan_id, scan, remaining, acs, plan, shot_lines, tr_ms
            )
            elapsed_ms = (time.perf_counter() - last_sent) * 1000.0
            rounds.append(PlanRound.of(plan, frames, elapsed_ms, policy.plan_deadline_ms))
        await _send_lines(client, scan_id, scan, _cells(slices, frames, remaining), acs, shot_lines, tr_ms)
        scan_seconds = time.perf_counter() - started
        response = await client.post(f"/v1/scans/{scan_id}/complete")
        _raise_for_problem(response)
        return AcquiredScan(
            scan_id, plan, plan_ms, plan_rtt_ms, scan_seconds, time.perf_counter(), tuple(rounds)
        )
    except BaseException:
        await client.delete(f"/v1/scans/{scan_id}")
        raise


def _per_frame(plan: PlanResponse, frames: int) -> list[list[int]]:
    if plan.frame_lines is not None:
        return [list(lines) for lines in plan.frame_lines]
    return [list(plan.lines)] * frames


async def _next_round(
    client: httpx.AsyncClient,
    scan_id: str,
    scan: ReplayScan,
    new_lines: list[list[int]],
    acs: frozenset[int],
    plan: PlanResponse,
    shot_lines: int,
    tr_ms: float,
) -> tuple[float, PlanResponse]:
    """Acquire ``new_lines`` (per frame) of non-final ``plan`` and return when the last shot was sent
    and the next round's plan (from that shot's answer, else ``GET .../plan``).
    :class:`ServiceUnavailableError` when the gateway does not move on to round ``plan.round + 1``."""
    info = scan.info
    cells = _cells(info.slices, info.frames, new_lines)
    last_sent, answered = await _send_lines(
        client, scan_id, scan, cells, acs, shot_lines, tr_ms, wait_plan=True
    )
    if answered is None or answered.round != plan.round + 1:
        response = await client.get(f"/v1/scans/{scan_id}/plan")
        _raise_for_problem(response)
        answered = PlanResponse.model_validate_json(response.content)
    if answered.round != plan.round + 1:
        raise ServiceUnavailableError(
            f"scan {scan_id}: round {plan.round}'s lines are in, but the gateway answers round "
            f"{answered.round}, not round {plan.round + 1}"
        )
    return last_sent, answered


async def collect_scan(
    client: httpx.AsyncClient,
    acquired: AcquiredScan,
    *,
    timeout_s: float = 600.0,
    poll_first_s: float = 0.02,
    poll_max_s: float = 0.5,
) -> ScanOutcome:
    """Wait for the reconstruction of ``acquired`` (polling ``poll_first_s`` apart at first, then 1.5x
    longer each time up to ``poll_max_s``), fetch the images and the mask, delete the session;
    ``recon_seconds`` counts from the ``complete`` answer to the poll that saw the scan done."""
    scan_id = acquired.scan_id
    try:
        final = await _wait_done(client, scan_id, timeout_s, poll_first_s, poll_max_s)
        recon_seconds = time.perf_counter() - acquired.completed_at
        images = await _get_npy(client, f"/v1/scans/{scan_id}/images?format=npy")
        mask = await _get_npy(client, f"/v1/scans/{scan_id}/mask")
        return ScanOutcome(
            scan_id,
            acquired.plan,
            acquired.plan_ms,
            acquired.plan_rtt_ms,
            mask.astype(bool),
            images.astype(np.float32),
            final,
            acquired.scan_seconds,
            recon_seconds,
            acquired.rounds,
        )
    finally:
        await client.delete(f"/v1/scans/{scan_id}")


async def replay_scan(
    client: httpx.AsyncClient,
    scan: ReplayScan,
    policy: ScanPolicy,
    *,
    shot_lines: int = 32,
    tr_ms: float = 0.0,
    timeout_s: float = 600.0,
) -> ScanOutcome:
    """Play ``scan`` into the gateway behind ``client`` and return the plan, mask and images."""
    acquired = await acquire_scan(client, scan, policy, shot_lines=shot_lines, tr_ms=tr_ms)
    return await collect_scan(client, acquired, timeout_s=timeout_s)


async def _wait_done(
    client: httpx.AsyncClient, scan_id: str, timeout_s: float, poll_first_s: float, poll_max_s: float
) -> ScanPublic:
    deadline = time.monotonic() + timeout_s
    delay = poll_first_s
    while True:
        response = await client.get(f"/v1/scans/{scan_id}")
        _raise_for_problem(response)
        scan = ScanPublic.model_validate_json(response.content)
        if scan.state == ScanState.done:
            return scan
        if scan.state == ScanState.failed:
            raise JobFailedError(f"scan {scan_id} failed: {scan.error}")
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(f"scan {scan_id} still {scan.state.value} after {timeout_s:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, poll_max_s)


async def _get_npy(client: httpx.AsyncClient, path: str) -> NDArray[np.generic]:
    response = await client.get(path)
    _raise_for_problem(response)
    try:
        return np.load(io.BytesIO(response.content), allow_pickle=False)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise KadaptError(f"{path}: not an .npy payload ({exc})") from exc
