"""The runtime contract of ONNX reconstruction bundles (``unet`` / ``modl`` / ``vsharp``): onnxruntime, numpy.

One implementation of what the trainer exports and every consumer runs -- the recon service
(:mod:`kadapt.recon.domain.learned` adds readiness, metrics and model choice on top) and the trainer's
benchmark. Per (slice, frame) of k-space ``(C, H, W)`` the graph takes, in order:

- ``masked_kspace`` float32 ``(1, C, H, W, 2)``: the masked k-space divided by ``s = acs_scale(k, num_acs)``
  (99.5th percentile of |ACS|, seed 004 eq. B1), real/imag last;
- ``mask`` float32 ``(1, 1, 1, W, 1)``: the sampled ky lines;
- ``sens`` float32 ``(1, C, H, W, 2)``: ``acs_sensitivities(k, num_acs)`` as real/imag;

and returns ``image`` float32 ``(1, H, W, 2)`` on the normalised scale: the magnitude is ``|image| * s``.

Dynamic (cine) bundles -- ``training.dynamic`` true, ``geometry.frames`` T set (dynamic.md C3) --
reconstruct all frames of a SLICE in one inference: ``masked_kspace`` ``(1, T, C, H, W, 2)`` divided by
``s = acs_scale`` of the frame-averaged ACS, ``mask`` ``(1, T, W)``, ``sens`` ``(1, C, H, W, 2)`` from
:func:`kadapt.kspace.dynamic.frame_averaged_acs_sensitivities` (static coils; seed 004 sec. 2.4, eq. B1
on the frame-averaged ACS), output ``image`` ``(1, T, H, W, 2)``, magnitude ``|image| * s``.

This module imports onnxruntime; :mod:`kadapt.bundles` itself does not import it, so services that only
read manifests (sampler, gateway) never load the runtime.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime
from numpy.typing import NDArray

from kadapt.bundles.manifest import Manifest
from kadapt.bundles.repository import Bundle
from kadapt.errors import BundleError, GeometryMismatchError
from kadapt.kspace.coils import acs_sensitivities
from kadapt.kspace.dynamic import frame_averaged_acs, frame_averaged_acs_sensitivities
from kadapt.kspace.preprocess import acs_scale

logger = logging.getLogger(__name__)

#: Bundle kinds that reconstruct images (samplers and ``smp`` follow other contracts).
RECON_KINDS = frozenset({"unet", "modl", "vsharp"})
INPUT_NAMES = ("masked_kspace", "mask", "sens")
OUTPUT_NAME = "image"
MODEL_FILE = "model.onnx"
#: An effective R (W / acquired lines) within this relative distance of a manifest R is that R: line
#: budgets are rounded to whole lines (R 6 at W = 64 acquires 11 lines, R_eff = 5.82).
ACCELERATION_TOLERANCE = 0.1

#: Called with the seconds of one ``session.run`` (the recon service feeds a Prometheus histogram).
RunObserver = Callable[[float], None]


@dataclass(frozen=True)
class ScanShape:
    """What a bundle must accept: ``coils`` C, readout ``height`` H (kx), ``width`` W (ky), ``frames`` and
    the effective ``acceleration`` W / (mean acquired lines per slice and frame), ACS included."""

    coils: int
    height: int
    width: int
    frames: int
    acceleration: float

    def describe(self) -> str:
        frames = f" x {self.frames} frames" if self.frames > 1 else ""
        return f"{self.height}x{self.width}x{self.coils}{frames} at R {self.acceleration:.3g}"


def scan_shape(kspace: NDArray[Any], mask: NDArray[Any]) -> ScanShape:
    """The :class:`ScanShape` of k-space ``(slice, frame, coil, H, W)`` sampled by mask
    ``(slice, frame, W)``; :class:`GeometryMismatchError` when the two do not fit together."""
    if (
        kspace.ndim != 5
        or mask.ndim != 3
        or mask.shape != (kspace.shape[0], kspace.shape[1], kspace.shape[4])
    ):
        raise GeometryMismatchError(
            f"k-space {kspace.shape} and mask {mask.shape} are not (slice, frame, coil, H, W) "
            "and (slice, frame, W)"
        )
    lines = float(np.count_nonzero(mask)) / max(mask.shape[0] * mask.shape[1], 1)
    acceleration = float(mask.shape[2]) / lines if lines > 0 else float("inf")
    return ScanShape(
        coils=kspace.shape[2],
        height=kspace.shape[3],
        width=kspace.shape[4],
        frames=kspace.shape[1],
        acceleration=acceleration,
    )


def is_dynamic(manifest: Manifest) -> bool:
    """Does the bundle reconstruct all frames of a slice at once (``training.dynamic``, dynamic.md C3)?"""
    return manifest.training.get("dynamic") is True


def describe_manifest(manifest: Manifest) -> str:
    """``"<kx>x<ky>x<coils> at R <rates>"``: what a bundle accepts, for rejection messages."""
    geometry = manifest.geometry
    rates = ", ".join(f"{r:g}" for r in manifest.accelerations)
    frames = f" x {geometry.frames} frames" if geometry.frames is not None else ""
    return f"{geometry.kx}x{geometry.ky}x{geometry.coils}{frames} at R {rates}"


def rejection(manifest: Manifest, shape: ScanShape) -> str | None:
    """Why the bundle of ``manifest`` cannot reconstruct a scan of ``shape`` (None: it can).

    It accepts a scan when ``(kx, ky, coils)`` equal ``(H, W, C)`` (and ``frames`` when the manifest fixes
    it) and the effective R lies within :data:`ACCELERATION_TOLERANCE` of one of its accelerations."""
    geometry = manifest.geometry
    fits = (geometry.kx, geometry.ky, geometry.coils) == (shape.height, shape.width, shape.coils) and (
        geometry.frames is None or geometry.frames == shape.frames
    )
    rate_fits = any(
        abs(shape.acceleration - rate) <= ACCELERATION_TOLERANCE * rate for rate in manifest.accelerations
    )
    if fits and rate_fits:
        return None
    return f"bundle {manifest.ref!r} accepts {describe_manifest(manifest)}; scan is {shape.describe()}"


def open_session(
    bundle: Bundle, providers: Sequence[str], *, intra_op_threads: int = 0
) -> tuple[onnxruntime.InferenceSession, tuple[str, ...]]:
    """An ORT session on ``bundle``'s ``model.onnx`` with ``providers``; returns it and the providers it
    actually uses. ORT only *warns* about unavailable providers (and runs on the rest): the caller
    compares. ``intra_op_threads`` 0 is ORT's default (all cores). :class:`BundleError` when the graph's
    inputs / output are not the contract's."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = onnxruntime.InferenceSession(
            str(bundle.file(MODEL_FILE)), sess_options=options, providers=list(providers)
        )
    for warning in caught:
        logger.warning("bundle %s: onnxruntime: %s", bundle.manifest.ref, warning.message)
    names = tuple(spec.name for spec in session.get_inputs())
    outputs = tuple(spec.name for spec in session.get_outputs())
    if names != INPUT_NAMES or OUTPUT_NAME not in outputs:
        raise BundleError(
            f"bundle {bundle.manifest.ref}: graph inputs {names} / outputs {outputs}, "
            f"expected inputs {INPUT_NAMES} and output {OUTPUT_NAME!r}"
        )
    return session, tuple(session.get_providers())


def warm_up(session: onnxruntime.InferenceSession, manifest: Manifest) -> float:
    """Run ``session`` once on zero inputs of the manifest geometry; returns the milliseconds it took.
    :class:`BundleError` when the manifest leaves ``kx`` or ``coils`` open (serving needs both), or
    ``frames`` for a dynamic bundle."""
    geometry = manifest.geometry
    if geometry.kx is None or geometry.coils is None:
        raise BundleError(
            f"bundle {manifest.ref}: geometry {geometry.model_dump()} must fix kx and coils for serving"
        )
    coil_shape = (1, geometry.coils, geometry.kx, geometry.ky, 2)
    feeds = {
        "masked_kspace": np.zeros(coil_shape, dtype=np.float32),
        "mask": np.zeros((1, 1, 1, geometry.ky, 1), dtype=np.float32),
        "sens": np.zeros(coil_shape, dtype=np.float32),
    }
    if is_dynamic(manifest):
        if geometry.frames is None:
            raise BundleError(f"bundle {manifest.ref}: a dynamic bundle must fix geometry.frames")
        feeds["masked_kspace"] = np.zeros((1, geometry.frames, *coil_shape[1:]), dtype=np.float32)
        feeds["mask"] = np.zeros((1, geometry.frames, geometry.ky), dtype=np.float32)
    started = time.perf_counter()
    session.run([OUTPUT_NAME], feeds)
    return (time.perf_counter() - started) * 1000.0


def to_channels(array: NDArray[np.complexfloating[Any, Any]]) -> NDArray[np.float32]:
    """Complex ``(...)`` -> float32 ``(..., 2)`` (real, imag), as kadapt.kspace.torch_fft's converter."""
    return np.stack([array.real, array.imag], axis=-1).astype(np.float32)


class OnnxRecon:
    """Per-slice inference of one opened bundle session; thread-safe (ORT ``run`` is).

    Static bundles run once per (slice, frame), dynamic ones (:func:`is_dynamic`) once per slice over all
    its frames. ``on_run``, if given, is called with the seconds of every ``session.run``."""

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        manifest: Manifest,
        *,
        on_run: RunObserver | None = None,
    ) -> None:
        self.session = session
        self.manifest = manifest
        self.on_run = on_run
        self.dynamic = is_dynamic(manifest)

    def _run(self, feeds: dict[str, NDArray[np.float32]]) -> NDArray[np.float32]:
        started = time.perf_counter()
        (image,) = self.session.run([OUTPUT_NAME], feeds)
        if self.on_run is not None:
            self.on_run(time.perf_counter() - started)
        out: NDArray[np.float32] = np.asarray(image, dtype=np.float32)[0]
        return out

    def infer_slice(
        self, kspace: NDArray[np.complexfloating[Any, Any]], mask: NDArray[np.bool_], num_acs: int
    ) -> NDArray[np.float32]:
        """One (slice, frame): k-space ``(C, H, W)`` complex (zero off the mask), mask ``(W,)`` bool ->
        magnitude ``(H, W)`` float32 on the input's scale (``|image| * s``, the bundle contract).
        :class:`BundleError` for a dynamic bundle (it needs every frame: :meth:`infer_frames`)."""
        if self.dynamic:
            raise BundleError(f"bundle {self.manifest.ref} is dynamic: it reconstructs whole frame series")
        scale = acs_scale(kspace, num_acs)
        sens = acs_sensitivities(kspace, num_acs)
        normalised = kspace / np.complex64(scale)
        feeds = {
            "masked_kspace": to_channels(normalised)[None],
            "mask": mask.astype(np.float32).reshape(1, 1, 1, -1, 1),
            "sens": to_channels(sens)[None],
        }
        return _magnitude(self._run(feeds), scale)

    def infer_frames(
        self, kspace: NDArray[np.complexfloating[Any, Any]], mask: NDArray[np.bool_], num_acs: int
    ) -> NDArray[np.float32]:
        """One slice of a dynamic bundle: k-space ``(T, C, H, W)`` complex (zero off the mask), mask
        ``(T, W)`` bool -> magnitude ``(T, H, W)`` float32 on the input's scale. Scale and coil maps come
        from the frame-averaged ACS (dynamic.md C3). :class:`BundleError` for a static bundle."""
        if not self.dynamic:
            raise BundleError(f"bundle {self.manifest.ref} is static: it reconstructs one frame at a time")
        calibration = frame_averaged_acs(kspace, num_acs)
        scale = acs_scale(calibration, num_acs)
        sens = frame_averaged_acs_sensitivities(kspace, num_acs)
        feeds = {
            "masked_kspace": to_channels(kspace / np.complex64(scale))[None],
            "mask": mask.astype(np.float32)[None],
            "sens": to_channels(sens)[None],
        }
        return _magnitude(self._run(feeds), scale)

    def reconstruct(self, kspace: NDArray[Any], mask: NDArray[Any], num_acs: int) -> NDArray[np.float32]:
        """k-space ``(slice, frame, C, H, W)`` complex64 (zero off the mask), mask ``(slice, frame, W)`` bool
        -> magnitude ``(slice, frame, H, W)`` float32, one inference per (slice, frame) (dynamic bundles:
        per slice)."""
        slices, frames, _coils, height, width = kspace.shape
        images = np.empty((slices, frames, height, width), dtype=np.float32)
        for s in range(slices):
            if self.dynamic:
                images[s] = self.infer_frames(kspace[s], mask[s], num_acs)
                continue
            for f in range(frames):
                images[s, f] = self.infer_slice(kspace[s, f], mask[s, f], num_acs)
        return images


def _magnitude(image: NDArray[np.float32], scale: float) -> NDArray[np.float32]:
    """``|image| * scale`` of a real/imag-last graph output ``(..., 2)`` -> ``(...)`` float32."""
    magnitude: NDArray[np.float32] = (np.hypot(image[..., 0], image[..., 1]) * np.float32(scale)).astype(
        np.float32
    )
    return magnitude
