"""Planning under a deadline: ask the sampler, and serve the policy's fallback mask when it fails.

The scanner must get an answer within the session's deadline, always (architecture.md section 4). The
gateway sends the sampler a :class:`PlanRequest` with the absolute deadline and gives the HTTP call the
remaining time minus a safety margin; whatever goes wrong (late, refused, an error status, a plan that
breaks the budget or drops acquired lines) the answer becomes the fallback mask computed here, marked
``degraded`` with the reason. The fallback is deterministic (``default_rng(policy.seed)``, the same rule
as the sampler's fixed policies; a fixed-mask bundle's line order stored in the session), so every
replica that computes it agrees.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np
import pybase64
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from kadapt.gateway.domain.fallbacks import FallbackPattern
from kadapt.masks import get_family, line_budget, make_mask
from kadapt.schemas import PlanRequest, PlanResponse, ScanGeometry, ScanPolicy
from kadapt.schemas.plan_binary import PLAN_BINARY_MEDIA_TYPE, encode_plan_body
from kadapt.schemas.plans import PlanPayload

# Seconds. Dense from 1 to 100 ms so that a histogram_quantile near the usual plan deadlines (5, 10,
# 20, 50, 100 ms each fall on a boundary) is resolved, with 40 / 75 ms to see a plan closing in on them.
PLAN_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip


class PlanMetrics:
    """``kadapt_gateway_plans_total{outcome}``, ``kadapt_gateway_plan_seconds``,
    ``kadapt_gateway_fallback_total{reason}`` (the fallback plans; one counter, the reason without the
    detail after ``:``) and ``kadapt_gateway_deadline_miss_total`` (plans recorded, i.e. answerable to
    the scanner, after the round's deadline), on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.plans = Counter(
            "kadapt_gateway_plans",
            "Plans recorded for a round (one per round), by outcome",
            ["outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "kadapt_gateway_plan_seconds",
            "Time from a round's start (its ACS block in) to the plan recorded for it",
            buckets=PLAN_BUCKETS,
            registry=registry,
        )
        self.fallbacks = Counter(
            "kadapt_gateway_fallback", "Fallback (degraded) plans, by reason", ["reason"], registry=registry
        )
        self.deadline_misses = Counter(
            "kadapt_gateway_deadline_miss",
            "Plans that became the scanner's answer after the round's deadline",
            registry=registry,
        )

    def observe(self, plan: PlanResponse, seconds: float) -> None:
        self.plans.labels(outcome="fallback" if plan.degraded else "sampler").inc()
        self.seconds.observe(seconds)
        if plan.degraded:
            # Keep the label set small: the detail after ':' stays in the response and the logs.
            self.fallbacks.labels(reason=(plan.reason or "unknown").split(":", 1)[0]).inc()

    def deadline_missed(self) -> None:
        self.deadline_misses.inc()


@dataclass(frozen=True)
class PlanContext:
    """What a plan is computed from: one scan's policy and geometry, the round and its deadline.

    ``acquired`` are the ky columns every plan of this round must keep in every frame (the ACS block and
    the lines of earlier rounds), sorted; ``acquired_per_frame`` (multi-round ``ads`` plans, one sorted
    tuple per frame) adds the lines earlier rounds planned for each frame. ``acs_npy`` is the ``.npy``
    payload a model policy looks at, named by ``payload``: the centre slice's ACS block, or for ``ads``
    policies its SENSE image so far (:mod:`kadapt.gateway.domain.dynamic_plans`).
    """

    scan_id: str
    policy: ScanPolicy
    geometry: ScanGeometry
    acquired: tuple[int, ...]
    round: int
    deadline_unix_ms: float
    acs_npy: bytes | None = None  # the scan's ACS block as ``.npy`` bytes (centre slice), for model policies
    fallback_pattern: FallbackPattern | None = None  # a fixed-mask bundle fallback (the session's)
    acquired_per_frame: tuple[tuple[int, ...], ...] | None = None
    payload: PlanPayload = "acs"

    def frame_acquired(self, frame: int) -> tuple[int, ...]:
        """The lines frame ``frame`` must keep: ``acquired`` plus its ``acquired_per_frame`` entry."""
        if self.acquired_per_frame is None:
            return self.acquired
        return tuple(sorted({*self.acquired, *self.acquired_per_frame[frame]}))

    def request(self, *, inline_acs: bool = True) -> PlanRequest:
        """The wire request; ``inline_acs=False`` leaves ``acs_npy_b64`` out (binary transport)."""
        return PlanRequest(
            scan_id=self.scan_id,
            policy=self.policy.sampler,
            width=self.geometry.width,
            height=self.geometry.height,
            coils=self.geometry.coils,
            frames=self.geometry.frames,
            acceleration=self.policy.acceleration,
            num_acs=self.policy.num_acs,
            acquired=self.acquired,
            acquired_per_frame=self.acquired_per_frame,
            round=self.round,
            seed=self.policy.seed,
            deadline_unix_ms=self.deadline_unix_ms,
            payload=self.payload,
            acs_npy_b64=(
                pybase64.b64encode(self.acs_npy).decode("ascii")
                if inline_acs and self.acs_npy is not None
                else None
            ),
        )

    def body(self, *, binary_acs: bool) -> tuple[bytes, str]:
        """The ``POST /v1/plan`` body and its content type: with ACS and ``binary_acs``, the
        ``application/x-kadapt-plan`` framing (JSON header + raw ``.npy``: 25 % smaller than base64 and
        no 437k-character JSON string for the sampler to parse at 320 x 320 x 8), else JSON."""
        if binary_acs and self.acs_npy is not None:
            return encode_plan_body(self.request(inline_acs=False), self.acs_npy), PLAN_BINARY_MEDIA_TYPE
        return self.request().model_dump_json().encode(), "application/json"


def fallback_rng(policy: ScanPolicy) -> np.random.Generator:
    """The fallback's generator: seeded by the policy's explicit seed, identical on every replica."""
    return np.random.default_rng(policy.seed)


def _complete_lines(
    mask_lines: NDArray[np.int64], acquired: Sequence[int], budget: int, width: int
) -> tuple[int, ...]:
    """``acquired`` plus the mask's other lines nearest the centre, ``budget`` lines in all, sorted."""
    chosen = set(int(line) for line in acquired)
    others = [int(line) for line in mask_lines if int(line) not in chosen]
    others.sort(key=lambda line: (abs(line - width // 2), line))
    chosen.update(others[: max(0, budget - len(chosen))])
    return tuple(sorted(chosen))


def fallback_plan(context: PlanContext, reason: str, *, elapsed_ms: float = 0.0) -> PlanResponse:
    """The policy's fallback mask as a final, degraded plan.

    A mask family: in round 0 (``acquired`` = the ACS block, which every mask family keeps) this is the
    family's mask itself; in later rounds the lines already acquired are kept and the mask's remaining
    lines nearest the centre fill the budget. Dynamic (``kt``) families give one line set per frame in
    ``frame_lines``; ``lines`` is then frame 0's (as the sampler's dynamic policies answer).

    A fixed-mask bundle (``context.fallback_pattern``, resolved when the scan was created): the acquired
    lines plus the bundle's best-scored other lines, i.e. in round 0 exactly the plan the sampler serves
    for that bundle at R, later the sampler's rule for it too; ``served_by`` is its ``name/version``.

    With ``acquired_per_frame`` (a later round of a multi-round ``ads`` plan, whose frames hold different
    lines) the plan is per frame whatever the fallback: each frame keeps its own acquired lines and is
    completed from the fallback's mask (frame f's for a kt family) to exactly the budget.
    """
    policy, geometry = context.policy, context.geometry
    budget = line_budget(geometry.width, policy.acceleration, policy.num_acs)
    per_frame = context.acquired_per_frame is not None
    if context.fallback_pattern is not None:
        pattern = context.fallback_pattern
        pattern_lines = (
            tuple(pattern.lines(context.frame_acquired(f), budget) for f in range(geometry.frames))
            if per_frame
            else None
        )
        return PlanResponse(
            scan_id=context.scan_id,
            policy=policy.sampler,
            lines=pattern_lines[0] if pattern_lines else pattern.lines(context.acquired, budget),
            frame_lines=pattern_lines,
            round=context.round,
            final=True,
            degraded=True,
            reason=reason,
            served_by=context.fallback_pattern.ref,
            elapsed_ms=elapsed_ms,
        )
    family = get_family(policy.fallback)
    rng = fallback_rng(policy)
    frame_lines: tuple[tuple[int, ...], ...] | None = None
    if family.dims == "kt":
        masks = np.asarray(
            make_mask(
                policy.fallback,
                width=geometry.width,
                acceleration=policy.acceleration,
                num_acs=policy.num_acs,
                rng=rng,
                frames=geometry.frames,
            )
        ).reshape(geometry.frames, geometry.width)
        frame_lines = tuple(
            _complete_lines(np.flatnonzero(mask), context.frame_acquired(f), budget, geometry.width)
            for f, mask in enumerate(masks)
        )
        lines = frame_lines[0]
    else:
        mask = np.asarray(
            make_mask(
                policy.fallback,
                width=geometry.width,
                acceleration=policy.acceleration,
                num_acs=policy.num_acs,
                rng=rng,
            )
        ).reshape(geometry.width)
        lines = _complete_lines(np.flatnonzero(mask), context.acquired, budget, geometry.width)
        if per_frame:
            frame_lines = tuple(
                _complete_lines(np.flatnonzero(mask), context.frame_acquired(f), budget, geometry.width)
                for f in range(geometry.frames)
            )
            lines = frame_lines[0]
    return PlanResponse(
        scan_id=context.scan_id,
        policy=policy.sampler,
        lines=lines,
        frame_lines=frame_lines,
        round=context.round,
        final=True,
        degraded=True,
        reason=reason,
        served_by=policy.fallback,
        elapsed_ms=elapsed_ms,
    )


def _check_line_set(
    lines: Sequence[int], context: PlanContext, budget: int, what: str, *, final: bool, frame: int | None
) -> str | None:
    width = context.geometry.width
    if list(lines) != sorted(set(lines)):
        return f"{what} are not sorted and unique"
    if lines and (lines[0] < 0 or lines[-1] >= width):
        return f"{what} leave [0, {width})"
    # A final plan is the whole mask: exactly the budget. An intermediate round (ADS) may hold fewer.
    if (final and len(lines) != budget) or len(lines) > budget:
        return f"{what} have {len(lines)} entries, the budget is {budget}"
    kept = context.acquired if frame is None else context.frame_acquired(frame)
    missing = sorted(set(kept) - set(lines))
    if missing:
        return f"{what} drop acquired lines {missing[:8]}"
    return None


def check_plan(plan: PlanResponse, context: PlanContext) -> str | None:
    """Why ``plan`` is unusable for ``context`` (None when it is fine): wrong scan or round, line
    count other than the budget (more than it for an intermediate round), lines out of range, ACS or
    already acquired lines missing."""
    if plan.scan_id != context.scan_id:
        return f"plan for scan {plan.scan_id!r}, asked for {context.scan_id!r}"
    if plan.round != context.round:
        return f"plan for round {plan.round}, asked for round {context.round}"
    budget = line_budget(context.geometry.width, context.policy.acceleration, context.policy.num_acs)
    if plan.frame_lines is None:
        if context.acquired_per_frame is not None:
            return "a plan for frames holding different lines must give frame_lines"
        return _check_line_set(plan.lines, context, budget, "lines", final=plan.final, frame=None)
    if len(plan.frame_lines) != context.geometry.frames:
        return f"frame_lines has {len(plan.frame_lines)} frames, the scan has {context.geometry.frames}"
    for frame, lines in enumerate(plan.frame_lines):
        problem = _check_line_set(
            lines, context, budget, f"frame_lines[{frame}]", final=plan.final, frame=frame
        )
        if problem is not None:
            return problem
    return None


class SamplerReply(Protocol):
    """What the planner reads of an HTTP answer (``httpx.Response`` and ``kadapt.http_client.HTTPReply``)."""

    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...

    def json(self) -> Any: ...


class SamplerClient(Protocol):
    """The HTTP calls the planner makes: production uses :class:`kadapt.http_client.LeanHTTPClient` (about
    2 ms less per plan than ``httpx.AsyncClient``, docs/benchmarks.md); tests inject an
    ``httpx.AsyncClient`` over an ``ASGITransport`` / ``MockTransport``. Failures raise ``OSError``
    (connection), ``TimeoutError`` or ``httpx.HTTPError`` (the test seam's)."""

    async def post(
        self, url: str, *, content: bytes, headers: Mapping[str, str], timeout: float
    ) -> SamplerReply: ...

    async def get(self, url: str, *, timeout: float) -> SamplerReply: ...


def _problem_type(response: SamplerReply) -> str:
    """The problem+json type slug of an error response, else ``http-<status>``."""
    try:
        body = response.json()
    except ValueError:
        return f"http-{response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        return str(body["type"]).rstrip("/").rsplit("/", 1)[-1]
    return f"http-{response.status_code}"


class Planner:
    """Plans for scans: the sampler over HTTP (an injected :class:`SamplerClient`, the test seam) with the
    fallback mask as the answer of last resort. :meth:`plan` never raises for sampler trouble.

    ``binary_acs`` (default) sends requests that carry ACS k-space as ``application/x-kadapt-plan``;
    ``False`` keeps them JSON with ``acs_npy_b64`` (the documented fallback, any sampler version)."""

    def __init__(
        self,
        client: SamplerClient,
        *,
        sampler_url: str,
        margin_ms: float = 2.0,
        margin_fraction: float = 0.3,
        metrics: PlanMetrics | None = None,
        binary_acs: bool = True,
        token: str | None = None,
    ) -> None:
        self.client = client
        self.binary_acs = binary_acs
        # The sampler's bearer token (``sampler_token``), sent on every plan call when set.
        self.auth_headers = {"authorization": f"Bearer {token}"} if token else {}
        self.plan_url = sampler_url.rstrip("/") + "/v1/plan"
        self.readyz_url = sampler_url.rstrip("/") + "/readyz"
        self.margin_ms = margin_ms
        self.margin_fraction = margin_fraction
        self.metrics = metrics

    async def sampler_status(self, timeout_s: float = 0.25) -> str:
        """The sampler's readiness as seen from here, for the gateway's ``/readyz`` body: ``ready``,
        ``unready: http-<status>`` or ``down: <error>``. Informational only: a sampler that is down
        never makes the gateway unready, the fallback mask answers every plan meanwhile. The short
        ``timeout_s`` keeps a hung sampler from timing out the gateway's own readiness probe."""
        try:
            response = await asyncio.wait_for(
                self.client.get(self.readyz_url, timeout=timeout_s), timeout=timeout_s
            )
        except asyncio.TimeoutError:
            return "down: no answer within the timeout"
        except Exception as error:  # whatever the sampler (or an in-process transport) does, report it
            return f"down: {type(error).__name__}"
        return "ready" if response.status_code == 200 else f"unready: http-{response.status_code}"

    def margin_for(self, policy: ScanPolicy) -> float:
        """Milliseconds kept back from the deadline for what follows the decision: recording it (one
        compare-and-set), the answer's way back, and the request's way in, which the gateway's clock
        (started when the request reached the app) does not see but the scanner's does. Under
        ``kadapt bench load`` the two HTTP legs took up to 7.6 and 8.1 ms (p99) of a scanner's wait
        (docs/benchmarks.md), hence 30 % by default: 15 ms of a 50 ms deadline."""
        return max(self.margin_ms, self.margin_fraction * policy.plan_deadline_ms)

    async def plan(self, context: PlanContext) -> PlanResponse:
        """The plan for ``context``: the sampler's if it answers validly in time, else the fallback."""
        # Not observed here: the metrics count the answer a round records (``PlanRounds.record``), so a
        # sampler answer that loses to the deadline's fallback is not counted twice.
        return await self._ask_sampler(context, time.perf_counter())

    async def _ask_sampler(self, context: PlanContext, started: float) -> PlanResponse:
        def fallback(reason: str) -> PlanResponse:
            return fallback_plan(context, reason, elapsed_ms=(time.perf_counter() - started) * 1000.0)

        # The sampler is asked to answer by the time the gateway needs its answer: the round's deadline
        # less the margin (its own deadline checks and fallback then aim at that moment).
        answer_by = context.deadline_unix_ms - self.margin_for(context.policy)
        budget_s = (answer_by - time.time() * 1000.0) / 1000.0
        if budget_s <= 0.0:
            return fallback("sampler-timeout")
        asked = dataclasses.replace(context, deadline_unix_ms=answer_by)
        body, content_type = asked.body(binary_acs=self.binary_acs)
        try:
            # wait_for bounds the whole exchange (httpx's own timeouts apply per operation only).
            response = await asyncio.wait_for(
                self.client.post(
                    self.plan_url,
                    content=body,
                    headers={"content-type": content_type, **self.auth_headers},
                    timeout=budget_s,
                ),
                timeout=budget_s,
            )
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return fallback("sampler-timeout")
        except (httpx.HTTPError, OSError):
            return fallback("sampler-unavailable")
        if response.status_code == 504:
            return fallback("sampler-timeout")
        if response.status_code != 200:
            return fallback(f"sampler-error: {_problem_type(response)}")
        try:
            plan = PlanResponse.model_validate_json(response.content)
        except ValidationError as error:
            return fallback(f"sampler-invalid-plan: not a PlanResponse ({error.error_count()} errors)")
        problem = check_plan(plan, context)
        if problem is not None:
            return fallback(f"sampler-invalid-plan: {problem}")
        return plan
