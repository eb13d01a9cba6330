"""Serving ``mnet`` bundles: the scan-adaptive single-pass sampler (seeds 000 / 001) in ONNX Runtime.

A bundle (``kadapt.nn.mnet_bundle``) holds ``model.onnx`` with input ``acs`` float32
``(1, C, H, num_acs, 2)`` -- the scan's ACS k-space, real / imaginary last, normalised inside the graph
-- and output ``scores`` ``(1, W)``, one logit per ky line. A plan is the ACS and acquired lines plus the
top-scored free lines up to exactly ``round(W / R)`` (:func:`kadapt.masks.mechanics.topk_plan`: exact
ties go to the lower ky index), deterministic for a given ACS.

Whenever the model cannot answer, the plan is the policy's **fallback**, marked degraded, with a reason
whose slug labels ``kadapt_sampler_fallback_total{policy,reason}``:

``geometry-mismatch``       the scan's W, H, coils or ACS size differ from the bundle's (a static graph);
``acceleration-untrained``  R is not among the manifest's ``accelerations``;
``acs-missing``             the request carries no ACS (``acs_npy_b64`` or a binary body's);
``acs-invalid``             undecodable ``.npy``, a shape other than ``(coils, H, num_acs)``, NaN / Inf,
                            or no signal;
``model-late``              too close to the deadline to run, or inference ended within ``margin_ms`` of
                            the deadline (the planner also serves it when the model is still running
                            then, see ``planner.Planner``);
``model-error``             ONNX Runtime failed or returned a wrong shape or non-finite scores.

The fallback is the policy named by the manifest's ``training.fallback`` (a fixed-mask bundle or a 1d
mask family), else the sampler's default family; when that one refuses the scan (a fixed-mask bundle of
another width), the default family serves it. Fallbacks are deterministic (the family's ``seed`` rule).

This module imports onnxruntime and numpy, never torch (the graph is the contract).
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnxruntime
from numpy.typing import NDArray

from kadapt.bundles import Bundle
from kadapt.bundles.sampler_masks import MNET_INPUT_NAME as INPUT_NAME
from kadapt.bundles.sampler_masks import MNET_OUTPUT_NAME as OUTPUT_NAME
from kadapt.bundles.sampler_masks import open_sampler_session
from kadapt.errors import BundleError, KadaptError
from kadapt.masks import line_budget
from kadapt.masks.mechanics import topk_plan
from kadapt.sampler.domain.model_policy import ModelPolicy
from kadapt.sampler.domain.policies import PlannedLines, Policy, PolicyInfo, fixed_lines
from kadapt.schemas import PlanRequest

logger = logging.getLogger("kadapt.sampler")

DEFAULT_FALLBACK = "vd-random"
FALLBACK_KINDS = ("mask-family", "fixed-mask")

FloatArray = NDArray[np.float32]
# np.save writes a header of at most a few hundred bytes (format 1.0: under 64 KiB by definition).
_NPY_HEADER_PEEK = 1 << 16


class ScoreSession(Protocol):
    """The part of ``onnxruntime.InferenceSession`` a policy uses (tests inject slow or failing ones)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]: ...


def wall_clock_ms() -> float:
    return time.time() * 1000.0


def open_mnet_session(bundle: Bundle, threads: int) -> onnxruntime.InferenceSession:
    """An ORT CPU session on the bundle's ``model.onnx`` (``threads`` intra-op, sequential execution);
    :class:`BundleError` when ORT cannot load it or its I/O is not ``acs`` -> ``scores``. The core's
    :func:`kadapt.bundles.sampler_masks.open_sampler_session`, so offline plans (bench, trainer) run the
    graph exactly as the service does."""
    return open_sampler_session(bundle, threads)


@dataclass(frozen=True)
class MNetServing:
    """How the sampler runs ``mnet`` bundles: ``threads`` intra-op threads per ORT session (1: a small
    network gains nothing from a pool and keeps its tail on a busy machine), ``margin_ms`` kept before
    the deadline for the fallback, ``default_fallback`` the 1d family used when a manifest names none
    (and for scans the named fallback refuses); ``open_session(bundle, threads)`` makes the session
    (tests inject slow or failing ones)."""

    threads: int = 1
    margin_ms: float = 2.0
    default_fallback: str = DEFAULT_FALLBACK
    open_session: Callable[[Bundle, int], ScoreSession] = open_mnet_session


def decode_acs(npy: bytes) -> NDArray[np.complex64]:
    """``.npy`` bytes -> complex64 array (any shape), without copying the data when it is already
    little-endian complex64 in C order (the gateway's). ``ValueError`` naming what is wrong."""
    shape, fortran_order, dtype, offset = _npy_header(bytes(npy[: _npy_header_end(npy)]))
    count = int(np.prod(shape))
    if len(npy) - offset != count * dtype.itemsize:
        raise ValueError(
            f"the ACS .npy holds {len(npy) - offset} data bytes, its header {shape} {dtype} needs "
            f"{count * dtype.itemsize}"
        )
    array = np.frombuffer(npy, dtype=dtype, count=count, offset=offset)
    array = array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)
    return np.ascontiguousarray(array, dtype=np.complex64)


def _npy_header_end(npy: bytes) -> int:
    """Where the ``.npy`` header ends (magic, version, length field, header), bounded by the data."""
    if len(npy) >= 10 and npy[6:7] == b"\x01":
        return min(len(npy), 10 + int.from_bytes(npy[8:10], "little"))
    if len(npy) >= 12 and npy[6:7] in (b"\x02", b"\x03"):
        return min(len(npy), 12 + int.from_bytes(npy[8:12], "little"))
    return min(len(npy), _NPY_HEADER_PEEK)  # not .npy: the parser below says what is wrong


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """``(shape, fortran_order, dtype, data offset)`` of a ``.npy`` header; cached, because numpy parses
    the header's dict with ``ast.literal_eval`` (about 0.1 ms) and a scan's blocks all share one header."""
    stream = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    except ValueError as err:
        raise ValueError(f"the ACS is not .npy data: {err}") from err
    if dtype.kind != "c" or dtype.hasobject:
        raise ValueError(f"ACS must be complex (coil, H, num_acs), got dtype {dtype}")
    return tuple(shape), bool(fortran_order), dtype, stream.tell()


class MNetBundlePolicy(ModelPolicy):
    """One ``mnet`` bundle served under its name (see the module docstring for plans and fallbacks).

    ``session`` runs the graph; ``fallback`` serves degraded plans, ``last_resort`` (a mask family) those
    the fallback refuses; ``clock_ms`` is the deadline clock (unix ms).
    """

    def __init__(
        self,
        bundle: Bundle,
        session: ScoreSession,
        fallback: Policy,
        *,
        last_resort: Policy,
        margin_ms: float = 2.0,
        clock_ms: Callable[[], float] = wall_clock_ms,
    ) -> None:
        manifest = bundle.manifest
        if manifest.kind != "mnet":
            raise BundleError(f"bundle {manifest.ref} is of kind {manifest.kind!r}, not 'mnet'")
        geometry = manifest.geometry
        if geometry.kx is None or geometry.coils is None:
            raise BundleError(f"bundle {manifest.ref}: an mnet geometry needs kx and coils, got {geometry}")
        super().__init__(fallback, last_resort=last_resort, margin_ms=margin_ms, clock_ms=clock_ms)
        self.bundle = bundle
        self.session = session
        self._width, self._height, self._coils = geometry.ky, geometry.kx, geometry.coils
        self._num_acs = manifest.num_acs
        self._info = PolicyInfo(
            name=manifest.name,
            kind=manifest.kind,
            dims="1d",
            population=False,
            description=str(manifest.training.get("description", f"mnet bundle {manifest.ref}")),
            served_by=manifest.ref,
            width=geometry.ky,
            accelerations=manifest.accelerations,
        )

    def plan(self, request: PlanRequest, now_ms: float) -> PlannedLines:
        """The top-``round(W / R)`` plan from the model's scores, or the fallback (degraded) when the
        model cannot answer in time; ``InvalidAccelerationError`` / ``EncodeOutOfRangeError`` for a
        request no policy could serve, ``DeadlineExceededError`` (stage ``inference``) when already late."""
        budget = line_budget(request.width, request.acceleration, request.num_acs)
        fixed = fixed_lines(request, budget, per_frame=False)
        refusal = self._refusal(request)
        if refusal is not None:
            return self.fallback_plan(request, *refusal)
        try:
            acs = self._model_input(request)
        except ValueError as err:
            return self.fallback_plan(request, "acs-invalid", str(err))
        late = self.late_to_start(request)
        if late is not None:
            return late
        started = self._clock_ms()
        try:
            scores = self._scores(acs)
        except ValueError as err:
            return self.fallback_plan(request, "model-error", str(err))
        late = self.late_after(request, started)
        if late is not None:
            return late
        mask = topk_plan(scores[None, :], fixed, budget)[0]
        return PlannedLines(lines=tuple(int(ky) for ky in np.flatnonzero(mask)))

    def warmup_request(self, now_ms: float) -> PlanRequest:
        """A request at the bundle's geometry and first R with a synthetic ACS block (deterministic)."""
        rng = np.random.default_rng(0)
        shape = (self._coils, self._height, self._num_acs)
        acs = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        buffer = io.BytesIO()
        np.save(buffer, acs, allow_pickle=False)
        return PlanRequest(
            scan_id="warmup",
            policy=self.name,
            width=self._width,
            height=self._height,
            coils=self._coils,
            acceleration=self._info.accelerations[0],
            num_acs=self._num_acs,
            deadline_unix_ms=now_ms + 60_000.0,
            acs_npy_b64=base64.b64encode(buffer.getvalue()).decode("ascii"),
        )

    def _refusal(self, request: PlanRequest) -> tuple[str, str] | None:
        wanted = {"W": self._width, "H": self._height, "coils": self._coils, "num_acs": self._num_acs}
        refusal = self.scan_refusal(request, wanted)
        if refusal is not None:
            return refusal
        if not request.has_acs:
            return "acs-missing", "the request carries no ACS k-space (acs_npy_b64 or a binary body)"
        return None

    def _model_input(self, request: PlanRequest) -> FloatArray:
        npy = request.acs_npy()
        if npy is None:  # checked by _refusal; kept for the type checker
            raise ValueError("no ACS k-space")
        acs = decode_acs(npy)
        expected = (self._coils, self._height, self._num_acs)
        if acs.shape != expected:
            raise ValueError(f"ACS has shape {acs.shape}, the scan needs (coil, H, num_acs) = {expected}")
        # complex64 is interleaved (real, imag) float32: the graph's (..., 2) layout is a view of it.
        channels = acs.view(np.float32).reshape(*expected, 2)
        if not np.isfinite(channels).all():
            raise ValueError("ACS holds NaN or Inf")
        if not channels.any():
            raise ValueError("ACS holds no signal (all zeros)")
        return channels[None]

    def _scores(self, acs: FloatArray) -> NDArray[np.float64]:
        try:
            outputs = self.session.run([OUTPUT_NAME], {INPUT_NAME: acs})
        except Exception as err:  # ORT raises its own types; a failing model means the fallback, not a 500
            logger.warning("mnet %s: inference failed: %s", self._info.served_by, err)
            raise ValueError(f"inference failed: {type(err).__name__}: {err}") from err
        scores = np.asarray(outputs[0], dtype=np.float64)
        if scores.shape != (1, self._width):
            raise ValueError(f"model returned scores of shape {scores.shape}, expected (1, {self._width})")
        if not np.all(np.isfinite(scores)):
            raise ValueError("model returned NaN or Inf scores")
        row: NDArray[np.float64] = scores[0]
        return row


def _fallback_policy(ref: str, name: str, resolve: Callable[[str], Policy]) -> Policy:
    try:
        policy = resolve(name)
    except KadaptError as err:
        raise BundleError(f"bundle {ref}: fallback policy {name!r} is not served ({err.detail})") from err
    if policy.info.dims != "1d" or policy.info.kind not in FALLBACK_KINDS:
        raise BundleError(
            f"bundle {ref}: fallback {name!r} is a {policy.info.dims} {policy.info.kind} policy; "
            f"a fallback must be a 1d {' or '.join(FALLBACK_KINDS)}"
        )
    return policy


def load_mnet_policy(
    bundle: Bundle, resolve: Callable[[str], Policy], serving: MNetServing
) -> MNetBundlePolicy:
    """The policy of a loaded (checksum-verified) ``mnet`` bundle: its fallback (``training.fallback`` or
    ``serving.default_fallback``) and last resort resolved by name through ``resolve`` (the registry),
    its ORT session opened. :class:`BundleError` naming the bundle when any of it fails."""
    manifest = bundle.manifest
    if manifest.kind != "mnet":
        raise BundleError(f"bundle {manifest.ref} is of kind {manifest.kind!r}, not 'mnet'")
    if manifest.geometry.kx is None or manifest.geometry.coils is None:
        raise BundleError(
            f"bundle {manifest.ref}: an mnet geometry needs kx and coils, got {manifest.geometry}"
        )
    named = manifest.training.get("fallback", serving.default_fallback)
    if not isinstance(named, str):
        raise BundleError(f"bundle {manifest.ref}: training.fallback must be a policy name, got {named!r}")
    fallback = _fallback_policy(manifest.ref, named, resolve)
    last_resort = _fallback_policy(manifest.ref, serving.default_fallback, resolve)
    session = serving.open_session(bundle, serving.threads)
    return MNetBundlePolicy(bundle, session, fallback, last_resort=last_resort, margin_ms=serving.margin_ms)
