"""Serving ``ads`` bundles: seed 004's adaptive dynamic sampler, planned in rounds (one per cascade).

The gateway asks for round ``r`` (``PlanRequest.round``) with ``acquired_per_frame`` (the lines of the
rounds before, per frame) and, as the ``.npy`` payload with ``payload: "sense-image"``, the SENSE image of
the centre slice's data so far, complex64 ``(frames, H, W)`` (:func:`kadapt.kspace.dynamic.
sense_image_so_far`, frame-averaged ACS maps: what the cascade saw in training). The policy runs
``cascade-r.onnx`` through :class:`kadapt.bundles.ads_runtime.AdsRuntime` -- the same code the benchmark
uses -- and answers ``frame_lines``: per frame the acquired lines plus the top-scored free ones, exactly
``round_budget(r)`` lines (``round(W / R)`` in the last round), ``final = (r == N - 1)``. The sampler stays
stateless: everything a round needs is in its request.

Whenever the model cannot answer, the plan is the **fallback** (degraded, a complete final plan that keeps
every acquired line of every frame), with the reason slugs of ``domain/mnet.py``:

``geometry-mismatch``       the scan's W, H, frames or ACS size differ from the bundle's;
``acceleration-untrained``  R is not among the manifest's ``accelerations``;
``image-missing``           the request carries no SENSE image (no payload, or ``payload`` "acs");
``image-invalid``           undecodable ``.npy`` or NaN / Inf in the image;
``model-late``              too close to the deadline to run, or inference ended within ``margin_ms`` of it
                            (the planner also serves it when the model is still running then);
``model-error``             ONNX Runtime failed or returned a wrong shape or non-finite scores.

A payload whose shape is not the request's ``(frames, height, width)`` is the client's error, not a reason
to degrade: 422 ``geometry-mismatch`` (:meth:`~kadapt.schemas.PlanRequest.check_payload`). The fallback
is the kt mask family named by ``training.fallback``, else ``kt-equispaced`` (deterministic, the
family's ``seed`` rule); it completes the plan around the lines every frame already holds.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from kadapt.bundles import Bundle
from kadapt.bundles.ads_runtime import ADS_KIND, AdsRuntime
from kadapt.errors import (
    BundleError,
    InvalidInputError,
    KadaptError,
    NonFiniteDataError,
)
from kadapt.masks import acs_mask
from kadapt.sampler.domain.mnet import decode_acs, wall_clock_ms
from kadapt.sampler.domain.model_policy import ModelPolicy
from kadapt.sampler.domain.policies import PlannedLines, Policy, PolicyInfo, fixed_lines
from kadapt.schemas import PlanRequest

logger = logging.getLogger("kadapt.sampler")

DEFAULT_ADS_FALLBACK = "kt-equispaced"
SENSE_IMAGE: Final[Literal["sense-image"]] = "sense-image"


@dataclass(frozen=True)
class AdsServing:
    """How the sampler runs ``ads`` bundles: ``threads`` intra-op threads per cascade session,
    ``margin_ms`` kept before the deadline for the fallback, ``default_fallback`` the kt family used when
    a manifest names none (and for scans the named one refuses); ``open_runtime(bundle, threads)`` opens
    the cascades (tests inject slow or failing ones)."""

    threads: int = 1
    margin_ms: float = 2.0
    default_fallback: str = DEFAULT_ADS_FALLBACK
    open_runtime: Callable[[Bundle, int], AdsRuntime] = AdsRuntime.open


class AdsBundlePolicy(ModelPolicy):
    """One ``ads`` bundle served under its name (see the module docstring for rounds and fallbacks)."""

    def __init__(
        self,
        runtime: AdsRuntime,
        fallback: Policy,
        *,
        last_resort: Policy,
        margin_ms: float = 2.0,
        clock_ms: Callable[[], float] = wall_clock_ms,
    ) -> None:
        manifest = runtime.manifest
        super().__init__(fallback, last_resort=last_resort, margin_ms=margin_ms, clock_ms=clock_ms)
        self.runtime = runtime
        self._num_acs = manifest.num_acs
        self._info = PolicyInfo(
            name=manifest.name,
            kind=manifest.kind,
            dims="kt",
            population=False,
            description=str(
                manifest.training.get(
                    "description", f"ads bundle {manifest.ref} ({runtime.pattern}, {runtime.cascades} rounds)"
                )
            ),
            served_by=manifest.ref,
            width=runtime.width,
            accelerations=manifest.accelerations,
            cascades=runtime.cascades,
        )

    def plan(self, request: PlanRequest, now_ms: float) -> PlannedLines:
        """Round ``request.round``'s plan (per frame, exactly that round's budget) from the cascade's
        scores, or the fallback (degraded, final) when the model cannot answer in time. Raises
        :class:`InvalidInputError` for a round outside ``[0, N)``, :class:`GeometryMismatchError` for a
        payload of the wrong shape, :class:`InvalidAccelerationError` / ``EncodeOutOfRangeError`` for a
        request no policy could serve and ``DeadlineExceededError`` (stage ``inference``) when late."""
        runtime = self.runtime
        if not 0 <= request.round < runtime.cascades:
            raise InvalidInputError(
                f"policy {self.name!r} plans rounds 0..{runtime.cascades - 1}, not round {request.round}"
            )
        request.check_payload()
        refusal = self._refusal(request)
        if refusal is not None:
            return self.fallback_plan(request, *refusal)
        budget = runtime.round_budget(request.acceleration, request.num_acs, request.round)
        fixed = fixed_lines(request, budget, per_frame=True)
        try:
            image = self._image(request)
        except ValueError as err:
            return self.fallback_plan(request, "image-invalid", str(err))
        late = self.late_to_start(request)
        if late is not None:
            return late
        started = self._clock_ms()
        try:
            mask = runtime.plan_round(image, fixed, request.round, request.acceleration, request.num_acs)
        except NonFiniteDataError as err:
            return self.fallback_plan(request, "image-invalid", err.detail)
        except BundleError as err:
            logger.warning("ads %s: inference failed: %s", self._info.served_by, err.detail)
            return self.fallback_plan(request, "model-error", err.detail)
        late = self.late_after(request, started)
        if late is not None:
            return late
        frame_lines = tuple(tuple(int(ky) for ky in np.flatnonzero(row)) for row in mask)
        return PlannedLines(
            lines=frame_lines[0], frame_lines=frame_lines, final=request.round == runtime.cascades - 1
        )

    def warmup_request(self, now_ms: float) -> PlanRequest:
        """Round 0 at the bundle's geometry and first R with a synthetic SENSE image (deterministic)."""
        runtime = self.runtime
        rng = np.random.default_rng(0)
        shape = (runtime.frames, runtime.height, runtime.width)
        image = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        buffer = io.BytesIO()
        np.save(buffer, image, allow_pickle=False)
        acs = tuple(int(ky) for ky in np.flatnonzero(acs_mask(runtime.width, self._num_acs)))
        return PlanRequest(
            scan_id="warmup",
            policy=self.name,
            width=runtime.width,
            height=runtime.height,
            coils=1,
            frames=runtime.frames,
            acceleration=self._info.accelerations[0],
            num_acs=self._num_acs,
            acquired=acs,
            round=0,
            deadline_unix_ms=now_ms + 60_000.0,
            acs_npy_b64=base64.b64encode(buffer.getvalue()).decode("ascii"),
            payload=SENSE_IMAGE,
        )

    def _refusal(self, request: PlanRequest) -> tuple[str, str] | None:
        runtime = self.runtime
        wanted = {"W": runtime.width, "H": runtime.height, "frames": runtime.frames, "num_acs": self._num_acs}
        refusal = self.scan_refusal(request, wanted)
        if refusal is not None:
            return refusal
        if request.payload != SENSE_IMAGE or not request.has_acs:
            return "image-missing", "the request carries no SENSE image (payload 'sense-image')"
        return None

    def _image(self, request: PlanRequest) -> NDArray[np.complex64]:
        npy = request.acs_npy()
        if npy is None:  # checked by _refusal; kept for the type checker
            raise ValueError("no SENSE image")
        try:
            image = decode_acs(npy)
        except ValueError as err:
            raise ValueError(f"SENSE image: {err}") from err
        if not np.isfinite(image.view(np.float32)).all():
            raise ValueError("the SENSE image holds NaN or Inf")
        return image


def _fallback_policy(ref: str, name: str, resolve: Callable[[str], Policy]) -> Policy:
    try:
        policy = resolve(name)
    except KadaptError as err:
        raise BundleError(f"bundle {ref}: fallback policy {name!r} is not served ({err.detail})") from err
    if policy.info.dims != "kt" or policy.info.kind != "mask-family":
        raise BundleError(
            f"bundle {ref}: fallback {name!r} is a {policy.info.dims} {policy.info.kind} policy; an ads "
            "fallback must be a kt mask family (one line set per frame)"
        )
    return policy


def load_ads_policy(bundle: Bundle, resolve: Callable[[str], Policy], serving: AdsServing) -> AdsBundlePolicy:
    """The policy of a loaded (checksum-verified) ``ads`` bundle: its cascades opened and run once
    (:meth:`AdsRuntime.warm_up`), its fallback (``training.fallback`` or ``serving.default_fallback``) and
    last resort resolved through ``resolve``. :class:`BundleError` naming the bundle when any of it fails
    (an ``equispaced`` init or 2d bundle included)."""
    manifest = bundle.manifest
    if manifest.kind != ADS_KIND:
        raise BundleError(f"bundle {manifest.ref} is of kind {manifest.kind!r}, not {ADS_KIND!r}")
    named = manifest.training.get("fallback", serving.default_fallback)
    if not isinstance(named, str):
        raise BundleError(f"bundle {manifest.ref}: training.fallback must be a policy name, got {named!r}")
    fallback = _fallback_policy(manifest.ref, named, resolve)
    last_resort = _fallback_policy(manifest.ref, serving.default_fallback, resolve)
    runtime = serving.open_runtime(bundle, serving.threads)
    runtime.warm_up()
    return AdsBundlePolicy(runtime, fallback, last_resort=last_resort, margin_ms=serving.margin_ms)
