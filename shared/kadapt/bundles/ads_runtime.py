"""The runtime contract of ``ads`` bundles (seed 004's adaptive dynamic sampler): onnxruntime, numpy.

One implementation of what the trainer exports and every consumer runs -- the sampler service's ``ads``
policy (``kadapt.sampler.domain.ads`` adds deadlines and the fallback on top) and the benchmark, which
replays the cascade retrospectively (:meth:`AdsRuntime.plan_all`). Seed 004 section 2.3, Alg. A1-A5.

An ``ads`` bundle (docs/bundles.md) holds one ONNX graph per cascade step, ``cascade-0.onnx`` ..
``cascade-{N-1}.onnx``, each mapping

- ``image`` float32 ``(1, T, H, W, 2)``: the zero-filled SENSE image of the data acquired so far
  (:func:`kadapt.kspace.dynamic.sense_image_so_far`, frame-averaged ACS maps), real / imaginary last;
  any scale (the graph normalises it by its mean magnitude);
- ``mask`` float32 ``(1, T, W)``: the lines acquired so far in each frame (ACS included),

to ``scores`` float32 ``(1, T, W)``: non-negative, zero on acquired lines, higher = acquire first.

Round ``r`` of a plan runs ``cascade-r.onnx`` and keeps, in every frame, the acquired lines plus the
top-scored free ones up to the round's budget (:meth:`AdsRuntime.round_budget`)::

    budget(r) = num_acs + sum(budget_split(round(W / R) - num_acs, N)[: r + 1])

so the last round (``r = N - 1``) ends with exactly ``round(W / R)`` lines per frame. Serving is
deterministic: :func:`kadapt.masks.mechanics.topk_plan` (exact ties to the lower ky), never the
stochastic binarisation of training. ``unified`` bundles pick one line set for every frame.

Only ``training.ads.init == "acs"`` and ``dim == "1d"`` are served (an ``equispaced`` start or 2d point
masks are refused with :class:`BundleError` at :meth:`AdsRuntime.open`). This module imports
onnxruntime; :mod:`kadapt.bundles` itself does not.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnxruntime
from numpy.typing import NDArray

from kadapt.bundles.manifest import Manifest
from kadapt.bundles.repository import Bundle
from kadapt.errors import BundleError, GeometryMismatchError, InvalidInputError, NonFiniteDataError
from kadapt.kspace.dynamic import frame_averaged_acs_sensitivities, sense_image_so_far
from kadapt.masks import acs_mask, line_budget
from kadapt.masks.mechanics import budget_split, topk_plan

__all__ = [
    "ADS_INPUT_NAMES",
    "ADS_KIND",
    "ADS_OUTPUT_NAME",
    "AdsRuntime",
    "AdsSettings",
    "ads_settings",
    "cascade_file",
    "round_budget",
]

ADS_KIND = "ads"
ADS_INPUT_NAMES = ("image", "mask")
ADS_OUTPUT_NAME = "scores"
PATTERNS = ("frame-specific", "unified")
SERVED_INIT = "acs"
SERVED_DIM = "1d"

BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]


class ScoreSession(Protocol):
    """The part of ``onnxruntime.InferenceSession`` used here (tests inject slow or failing ones)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]: ...


def cascade_file(step: int) -> str:
    """The bundle file of cascade step ``step``: ``cascade-<step>.onnx``."""
    return f"cascade-{step}.onnx"


@dataclass(frozen=True)
class AdsSettings:
    """The manifest's ``training.ads`` block: ``cascades`` N, ``pattern``, ``dim``, ``init`` and the
    ``recon`` bundle (``name/version``) it was trained with (``None`` if not recorded)."""

    cascades: int
    pattern: str
    dim: str
    init: str
    recon: str | None


def ads_settings(manifest: Manifest) -> AdsSettings:
    """Parse and check ``manifest.training["ads"]`` of an ``ads`` bundle; :class:`BundleError` naming the
    bundle and the field when it is missing or malformed, or asks for what serving does not support
    (``init`` other than ``acs``, ``dim`` other than ``1d``)."""
    ref = manifest.ref
    if manifest.kind != ADS_KIND:
        raise BundleError(f"bundle {ref} is of kind {manifest.kind!r}, not {ADS_KIND!r}")
    block = manifest.training.get("ads")
    if not isinstance(block, dict):
        raise BundleError(f"bundle {ref}: training.ads must be an object, got {block!r}")
    cascades, pattern = block.get("cascades"), block.get("pattern")
    dim, init, recon = block.get("dim", SERVED_DIM), block.get("init", SERVED_INIT), block.get("recon")
    if not isinstance(cascades, int) or isinstance(cascades, bool) or cascades < 1:
        raise BundleError(f"bundle {ref}: training.ads.cascades must be an int >= 1, got {cascades!r}")
    if not isinstance(pattern, str) or pattern not in PATTERNS:
        raise BundleError(f"bundle {ref}: training.ads.pattern must be one of {PATTERNS}, got {pattern!r}")
    if dim != SERVED_DIM:
        raise BundleError(
            f"bundle {ref}: training.ads.dim is {dim!r}; serving plans whole ky lines (dim '1d') only"
        )
    if init != SERVED_INIT:
        raise BundleError(
            f"bundle {ref}: training.ads.init is {init!r}; serving starts from the ACS block only "
            "(init 'acs')"
        )
    if recon is not None and not isinstance(recon, str):
        raise BundleError(f"bundle {ref}: training.ads.recon must be a bundle ref, got {recon!r}")
    return AdsSettings(cascades=cascades, pattern=pattern, dim=SERVED_DIM, init=SERVED_INIT, recon=recon)


def round_budget(width: int, acceleration: float, num_acs: int, cascades: int, round_index: int) -> int:
    """Lines per frame after round ``round_index`` of an ``cascades``-step plan (ACS included):
    ``num_acs + sum(budget_split(round(W / R) - num_acs, N)[: r + 1])``; the last round gives exactly
    ``round(W / R)``. :class:`InvalidInputError` for a round outside ``[0, N)``,
    :class:`~kadapt.errors.InvalidAccelerationError` for an impossible R / ACS."""
    if not 0 <= round_index < cascades:
        raise InvalidInputError(f"round {round_index} outside [0, {cascades}) for {cascades} cascades")
    total = line_budget(width, acceleration, num_acs)
    return num_acs + sum(budget_split(total - num_acs, cascades)[: round_index + 1])


def _open_cascade(bundle: Bundle, filename: str, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return onnxruntime.InferenceSession(
                str(bundle.file(filename)), sess_options=options, providers=["CPUExecutionProvider"]
            )
    except BundleError:
        raise
    except Exception as err:  # ORT's own exception types (InvalidProtobuf, Fail, ...) name the problem
        raise BundleError(
            f"bundle {bundle.manifest.ref}: ONNX Runtime cannot load {filename}: {err}"
        ) from err


class AdsRuntime:
    """The cascade steps of one ``ads`` bundle, ready to plan rounds; thread-safe (ORT ``run`` is).

    Build it with :meth:`open`; ``sessions[r]`` runs ``cascade-r.onnx``."""

    def __init__(self, manifest: Manifest, sessions: Sequence[ScoreSession]) -> None:
        settings = ads_settings(manifest)
        geometry = manifest.geometry
        if geometry.kx is None or geometry.frames is None:
            raise BundleError(
                f"bundle {manifest.ref}: an ads geometry must fix kx and frames, got {geometry.model_dump()}"
            )
        if len(sessions) != settings.cascades:
            raise BundleError(
                f"bundle {manifest.ref}: {len(sessions)} cascade sessions for {settings.cascades} cascades"
            )
        self.manifest = manifest
        self.settings = settings
        self.sessions = tuple(sessions)
        self._frames, self._height, self._width = geometry.frames, geometry.kx, geometry.ky

    @classmethod
    def open(cls, bundle: Bundle, threads: int = 1) -> AdsRuntime:
        """Open every cascade file of a loaded (checksum-verified) ``ads`` bundle in ONNX Runtime (CPU,
        ``threads`` intra-op threads, sequential execution). :class:`BundleError` naming the bundle when
        the manifest is not a servable ``ads`` one, a cascade file is missing or unloadable, or a
        graph's inputs / output are not ``image (1, T, H, W, 2)``, ``mask (1, T, W)`` -> ``scores``."""
        manifest = bundle.manifest
        settings = ads_settings(manifest)
        geometry = manifest.geometry
        if geometry.kx is None or geometry.frames is None:
            raise BundleError(
                f"bundle {manifest.ref}: an ads geometry must fix kx and frames, got {geometry.model_dump()}"
            )
        expected = [
            ("image", (1, geometry.frames, geometry.kx, geometry.ky, 2)),
            ("mask", (1, geometry.frames, geometry.ky)),
        ]
        sessions = []
        for step in range(settings.cascades):
            filename = cascade_file(step)
            session = _open_cascade(bundle, filename, threads)
            inputs = [(node.name, tuple(node.shape)) for node in session.get_inputs()]
            outputs = [node.name for node in session.get_outputs()]
            if inputs != expected or ADS_OUTPUT_NAME not in outputs:
                raise BundleError(
                    f"bundle {manifest.ref}: {filename} has inputs {inputs} / outputs {outputs}, expected "
                    f"{expected} -> {ADS_OUTPUT_NAME!r}"
                )
            sessions.append(session)
        return cls(manifest, sessions)

    @property
    def ref(self) -> str:
        return self.manifest.ref

    @property
    def cascades(self) -> int:
        return self.settings.cascades

    @property
    def frames(self) -> int:
        return self._frames

    @property
    def width(self) -> int:
        return self._width

    @property
    def height(self) -> int:
        return self._height

    @property
    def pattern(self) -> str:
        return self.settings.pattern

    def round_budget(self, acceleration: float, num_acs: int, round_index: int) -> int:
        """Lines per frame after round ``round_index`` (see :func:`round_budget`)."""
        return round_budget(self._width, acceleration, num_acs, self.cascades, round_index)

    def warm_up(self) -> float:
        """Run every cascade once on a deterministic input; returns the milliseconds it took.
        :class:`BundleError` when a cascade fails or answers with wrong or non-finite scores."""
        rng = np.random.default_rng(0)
        shape = (self._frames, self._height, self._width)
        image = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        acquired = np.broadcast_to(acs_mask(self._width, 1), (self._frames, self._width))
        started = time.perf_counter()
        for step in range(self.cascades):
            self.scores(image, acquired, step)
        return (time.perf_counter() - started) * 1000.0

    def scores(self, image: NDArray[Any], acquired: NDArray[Any], round_index: int) -> FloatArray:
        """Cascade ``round_index``'s scores ``(T, W)`` float64 for the SENSE image so far ``image``
        ``(T, H, W)`` complex and the acquired lines ``acquired`` ``(T, W)`` bool.

        :class:`GeometryMismatchError` for other shapes, :class:`NonFiniteDataError` for NaN / Inf in the
        image, :class:`InvalidInputError` for a round outside ``[0, N)``; :class:`BundleError` when the
        graph fails or returns scores of another shape or non-finite ones."""
        if not 0 <= round_index < self.cascades:
            raise InvalidInputError(f"round {round_index} outside [0, {self.cascades}) for bundle {self.ref}")
        frames, height, width = self._frames, self._height, self._width
        if image.shape != (frames, height, width) or not np.iscomplexobj(image):
            raise GeometryMismatchError(
                f"bundle {self.ref} takes a complex (T, H, W) = {(frames, height, width)} image, "
                f"got {image.dtype} {image.shape}"
            )
        if acquired.shape != (frames, width):
            raise GeometryMismatchError(
                f"bundle {self.ref} takes acquired lines (T, W) = {(frames, width)}, got {acquired.shape}"
            )
        # complex64 is interleaved (real, imag) float32: the graph's (..., 2) layout is a view of it.
        channels = np.ascontiguousarray(image, dtype=np.complex64).view(np.float32)
        channels = channels.reshape(1, frames, height, width, 2)
        if not np.isfinite(channels).all():
            raise NonFiniteDataError(f"the SENSE image for bundle {self.ref} holds NaN or Inf")
        feeds = {"image": channels, "mask": np.asarray(acquired, dtype=np.float32).reshape(1, frames, width)}
        try:
            outputs = self.sessions[round_index].run([ADS_OUTPUT_NAME], feeds)
        except Exception as err:  # ORT raises its own types; the caller decides (fallback or error)
            raise BundleError(
                f"bundle {self.ref}: {cascade_file(round_index)} failed: {type(err).__name__}: {err}"
            ) from err
        scores = np.asarray(outputs[0], dtype=np.float64)
        if scores.shape != (1, frames, width) or not np.all(np.isfinite(scores)):
            raise BundleError(
                f"bundle {self.ref}: {cascade_file(round_index)} returned scores of shape {scores.shape} "
                f"(expected (1, {frames}, {width}), finite)"
            )
        result: FloatArray = scores[0]
        return result

    def plan_round(
        self,
        image: NDArray[Any],
        acquired: NDArray[Any],
        round_index: int,
        acceleration: float,
        num_acs: int,
    ) -> BoolArray:
        """Round ``round_index`` of a plan: ``(T, W)`` bool, the acquired lines (and the ACS block) kept
        plus the top-scored free lines of cascade ``round_index``, exactly
        :meth:`round_budget` lines in every frame; ``unified`` bundles give every frame the same lines
        (scores averaged over frames, acquired lines merged over frames).

        ``image`` ``(T, H, W)`` complex: the SENSE image of the data so far; ``acquired`` ``(T, W)`` bool.
        Raises as :meth:`scores`, and :class:`~kadapt.errors.InvalidAccelerationError` when a frame
        already holds more lines than the round's budget."""
        budget = self.round_budget(acceleration, num_acs, round_index)
        if acquired.shape != (self._frames, self._width):
            raise GeometryMismatchError(
                f"bundle {self.ref} takes acquired lines (T, W) = {(self._frames, self._width)}, "
                f"got {acquired.shape}"
            )
        taken = np.asarray(acquired, dtype=np.bool_) | acs_mask(self._width, num_acs)[None, :]
        scores = self.scores(image, taken, round_index)  # the graph sees the ACS as acquired, as in training
        if self.pattern == "unified":
            row = topk_plan(scores.mean(axis=0, keepdims=True), taken.any(axis=0, keepdims=True), budget)
            return np.repeat(np.asarray(row, dtype=np.bool_), self._frames, axis=0)
        return np.asarray(topk_plan(scores, taken, budget), dtype=np.bool_)

    def plan_all(self, kspace: NDArray[Any], acceleration: float, num_acs: int) -> BoolArray:
        """Every round retrospectively on fully sampled k-space ``(T, C, H, W)`` complex: starting from
        the ACS block, round r sees :func:`~kadapt.kspace.dynamic.sense_image_so_far` of the lines of
        rounds < r (frame-averaged ACS maps, computed once). Returns the final mask ``(T, W)`` bool with
        exactly ``round(W / R)`` lines per frame -- the plan the served rounds give the same scan."""
        if kspace.ndim != 4 or (kspace.shape[0], kspace.shape[2], kspace.shape[3]) != (
            self._frames,
            self._height,
            self._width,
        ):
            raise GeometryMismatchError(
                f"bundle {self.ref} takes k-space (T, C, H, W) with (T, H, W) = "
                f"{(self._frames, self._height, self._width)}, got {kspace.shape}"
            )
        maps = frame_averaged_acs_sensitivities(kspace, num_acs)
        mask = np.repeat(acs_mask(self._width, num_acs)[None, :], self._frames, axis=0)
        for step in range(self.cascades):
            image = sense_image_so_far(kspace, mask, num_acs, maps)
            mask = self.plan_round(image, mask, step, acceleration, num_acs)
        return mask
