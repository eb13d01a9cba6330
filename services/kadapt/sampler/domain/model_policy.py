"""What every model policy (``mnet``, ``ads``) shares: the deadline guard around inference and the
degraded fallback plan.

A model policy never makes the scanner wait past its deadline (architecture.md section 4): it starts
inference only with more than ``margin_ms`` left, and an answer that ends within ``margin_ms`` of the
deadline is dropped for the fallback -- the margin is the time the fallback and the way back need. The
fallback is a fixed policy (``fallback``), or ``last_resort`` (a mask family) for scans the fallback
refuses; its plan is complete and final, marked degraded with the reason slug.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kadapt.errors import GeometryMismatchError, InvalidAccelerationError
from kadapt.sampler.domain.policies import PlannedLines, Policy, PolicyInfo, check_deadline
from kadapt.schemas import PlanRequest


class ModelPolicy:
    """Base of the model policies: subclasses set ``_info`` and call :meth:`late_to_start`,
    :meth:`late_after` around their inference and :meth:`fallback_plan` whenever the model cannot answer.
    ``clock_ms`` is the deadline clock (unix ms)."""

    _info: PolicyInfo

    def __init__(
        self, fallback: Policy, *, last_resort: Policy, margin_ms: float, clock_ms: Callable[[], float]
    ) -> None:
        self.fallback = fallback
        self.last_resort = last_resort
        self.margin_ms = margin_ms
        self._clock_ms = clock_ms

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def info(self) -> PolicyInfo:
        return self._info

    @property
    def fallback_margin_ms(self) -> float:
        return self.margin_ms

    def scan_refusal(self, request: PlanRequest, wanted: dict[str, int]) -> tuple[str, str] | None:
        """Why the model cannot plan ``request`` -- ``(reason slug, detail)``, None when it can: a scan
        geometry other than the bundle's (``wanted``, axis -> the bundle's value, compared with the same
        axes of the request: ``W``, ``H``, ``coils``, ``frames``, ``num_acs``) or an R it was not trained
        for. The caller serves its fallback for it."""
        given = {
            "W": request.width,
            "H": request.height,
            "coils": request.coils,
            "frames": request.frames,
            "num_acs": request.num_acs,
        }
        wrong = [
            f"{axis}={given[axis]} (bundle: {value})"
            for axis, value in wanted.items()
            if given[axis] != value
        ]
        if wrong:
            detail = f"{self._info.served_by} serves another geometry: scan has {', '.join(wrong)}"
            return "geometry-mismatch", detail
        if not any(np.isclose(request.acceleration, r, rtol=1e-6) for r in self._info.accelerations):
            return (
                "acceleration-untrained",
                f"{self._info.served_by} was trained for R in {list(self._info.accelerations)}, "
                f"not R={request.acceleration}",
            )
        return None

    def late_to_start(self, request: PlanRequest) -> PlannedLines | None:
        """Before inference: ``DeadlineExceededError`` (stage ``inference``) when the deadline has passed,
        the ``model-late`` fallback when less than ``margin_ms`` is left, else None (go ahead)."""
        check_deadline(request, "inference", self._clock_ms())
        if self._clock_ms() >= request.deadline_unix_ms - self.margin_ms:
            return self.fallback_plan(
                request, "model-late", f"less than {self.margin_ms} ms left for inference"
            )
        return None

    def late_after(self, request: PlanRequest, started_ms: float) -> PlannedLines | None:
        """After inference that started at ``started_ms``: the ``model-late`` fallback when it ended within
        ``margin_ms`` of the deadline, else None (the model's answer stands)."""
        finished = self._clock_ms()
        if finished < request.deadline_unix_ms - self.margin_ms:
            return None
        return self.fallback_plan(
            request,
            "model-late",
            f"inference took {finished - started_ms:.1f} ms, ending past the deadline budget",
        )

    def fallback_plan(self, request: PlanRequest, reason: str, detail: str) -> PlannedLines:
        """The fallback's complete plan for ``request``, degraded with ``reason`` (a slug) and ``detail``;
        per frame (``frame_lines``, every frame's acquired lines kept) for a ``kt`` policy, final."""
        policy = self.fallback
        try:
            planned = policy.plan(request, self._clock_ms())
        except (GeometryMismatchError, InvalidAccelerationError) as err:
            if policy is self.last_resort:
                raise
            detail = f"{detail}; fallback {policy.name!r} refused the scan ({err.detail})"
            policy = self.last_resort
            planned = policy.plan(request, self._clock_ms())
        frame_lines = None
        if self._info.dims == "kt":
            frame_lines = planned.frame_lines or tuple(planned.lines for _ in range(request.frames))
        return PlannedLines(
            lines=frame_lines[0] if frame_lines else planned.lines,
            frame_lines=frame_lines,
            degraded=True,
            reason=f"{reason}: {detail}; served {policy.info.served_by}",
            fallback=reason,
            served_by=policy.info.served_by,
        )
