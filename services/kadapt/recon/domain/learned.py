"""Learned reconstructions served from ONNX model bundles (onnxruntime + numpy only; no torch at serve time).

A bundle (``<repository>/<name>/<version>/manifest.json`` + ``model.onnx``, architecture section 6) of kind
``unet`` / ``modl`` / ``vsharp`` is loaded with :func:`kadapt.bundles.load_bundle` (sha256 of every file
verified), opened as an ``onnxruntime.InferenceSession`` with the configured providers, checked for the
providers actually in use (``session.get_providers()``: a requested GPU provider that silently fell back
is a readiness problem in strict mode) and warmed up with one zero input of the manifest's shapes.

The graph contract (the trainer exports exactly this), per (slice, frame) of k-space ``(C, H, W)``:

- ``masked_kspace`` float32 ``(1, C, H, W, 2)``: the masked k-space divided by ``s = acs_scale(k, num_acs)``
  (99.5th percentile of |ACS|, seed 004 eq. B1), real/imag last;
- ``mask`` float32 ``(1, 1, 1, W, 1)``: the sampled ky lines;
- ``sens`` float32 ``(1, C, H, W, 2)``: ``acs_sensitivities(k, num_acs)`` as real/imag;
- output ``image`` float32 ``(1, H, W, 2)`` on the normalised scale: the served magnitude is ``|image| * s``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime
from numpy.typing import NDArray

from kadapt.bundles import Bundle, Manifest, list_bundle_refs, load_bundle, natural_version_key
from kadapt.errors import BundleError, GeometryMismatchError, KadaptError
from kadapt.kspace.coils import acs_sensitivities
from kadapt.kspace.preprocess import acs_scale

logger = logging.getLogger(__name__)

#: Bundle kinds the recon service serves (samplers and ``smp`` are other services' business).
RECON_KINDS = frozenset({"unet", "modl", "vsharp"})
INPUT_NAMES = ("masked_kspace", "mask", "sens")
OUTPUT_NAME = "image"
MODEL_FILE = "model.onnx"
#: An effective R (W / acquired lines) within this relative distance of a manifest R is that R: line
#: budgets are rounded to whole lines (R 6 at W = 64 acquires 11 lines, R_eff = 5.82).
ACCELERATION_TOLERANCE = 0.1

#: ``(bundle ref, seconds)`` of one (slice, frame) inference; the app feeds a Prometheus histogram.
InferenceObserver = Callable[[str, float], None]


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
        return f"{self.height}x{self.width}x{self.coils} at R {self.acceleration:.3g}"


def scan_shape(kspace: NDArray[Any], mask: NDArray[Any]) -> ScanShape:
    """The :class:`ScanShape` of k-space ``(slice, frame, coil, H, W)`` sampled by mask
    ``(slice, frame, W)``."""
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


def _describe_manifest(manifest: Manifest) -> str:
    geometry = manifest.geometry
    rates = ", ".join(f"{r:g}" for r in manifest.accelerations)
    return f"{geometry.kx}x{geometry.ky}x{geometry.coils} at R {rates}"


@dataclass
class LearnedModel:
    """A loaded, verified and warmed-up bundle; :meth:`reconstruct` is thread-safe (ORT ``run`` is)."""

    bundle: Bundle
    session: onnxruntime.InferenceSession
    providers: tuple[str, ...]
    warmup_ms: float
    observer: InferenceObserver | None = None

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def ref(self) -> str:
        return self.manifest.ref

    def rejection(self, shape: ScanShape) -> str | None:
        """Why this bundle cannot reconstruct a scan of ``shape`` (None: it can)."""
        geometry = self.manifest.geometry
        fits = (geometry.kx, geometry.ky, geometry.coils) == (shape.height, shape.width, shape.coils) and (
            geometry.frames is None or geometry.frames == shape.frames
        )
        rate_fits = any(
            abs(shape.acceleration - rate) <= ACCELERATION_TOLERANCE * rate
            for rate in self.manifest.accelerations
        )
        if fits and rate_fits:
            return None
        return f"bundle {self.ref!r} accepts {_describe_manifest(self.manifest)}; scan is {shape.describe()}"

    def ssim(self) -> float | None:
        """The validation SSIM the manifest records (``validation.ssim`` or ``validation.metrics.ssim``)."""
        validation = self.manifest.validation
        metrics = validation.get("metrics")
        candidates = [validation.get("ssim"), metrics.get("ssim") if isinstance(metrics, dict) else None]
        for value in candidates:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        return None

    def infer_slice(
        self, kspace: NDArray[np.complex64], mask: NDArray[np.bool_], num_acs: int
    ) -> NDArray[np.float32]:
        """One (slice, frame): k-space ``(C, H, W)`` complex (zero off the mask), mask ``(W,)`` bool ->
        magnitude ``(H, W)`` float32 on the input's scale (``|image| * s``, the bundle contract)."""
        scale = acs_scale(kspace, num_acs)
        sens = acs_sensitivities(kspace, num_acs)
        normalised = kspace / np.complex64(scale)
        feeds = {
            "masked_kspace": _to_channels(normalised)[None],
            "mask": mask.astype(np.float32).reshape(1, 1, 1, -1, 1),
            "sens": _to_channels(sens)[None],
        }
        started = time.perf_counter()
        (image,) = self.session.run([OUTPUT_NAME], feeds)
        if self.observer is not None:
            self.observer(self.ref, time.perf_counter() - started)
        out = np.asarray(image, dtype=np.float32)[0]
        magnitude: NDArray[np.float32] = (np.hypot(out[..., 0], out[..., 1]) * np.float32(scale)).astype(
            np.float32
        )
        return magnitude

    def reconstruct(self, kspace: NDArray[Any], mask: NDArray[Any], num_acs: int) -> NDArray[np.float32]:
        """k-space ``(slice, frame, C, H, W)`` complex64 (zero off the mask), mask ``(slice, frame, W)`` bool
        -> magnitude ``(slice, frame, H, W)`` float32, one inference per (slice, frame)."""
        slices, frames, _coils, height, width = kspace.shape
        images = np.empty((slices, frames, height, width), dtype=np.float32)
        for s in range(slices):
            for f in range(frames):
                images[s, f] = self.infer_slice(kspace[s, f], mask[s, f], num_acs)
        return images


def _to_channels(array: NDArray[np.complexfloating[Any, Any]]) -> NDArray[np.float32]:
    """Complex ``(...)`` -> float32 ``(..., 2)`` (real, imag), as kadapt.kspace.torch_fft's converter."""
    return np.stack([array.real, array.imag], axis=-1).astype(np.float32)


@dataclass(frozen=True)
class BundleStatus:
    """One bundle the service tried to load: ``explicit`` when ``settings.bundles`` asked for it."""

    ref: str
    state: Literal["loaded", "failed"]
    explicit: bool
    reason: str | None = None
    manifest: Manifest | None = None
    providers: tuple[str, ...] = ()
    warmup_ms: float | None = None


@dataclass
class LearnedCatalogue:
    """The learned models of one recon process, with what failed and the provider problem, if any."""

    models: list[LearnedModel] = field(default_factory=list)
    statuses: list[BundleStatus] = field(default_factory=list)
    provider_problems: list[str] = field(default_factory=list)
    requested_providers: tuple[str, ...] = ()

    def readiness_problem(self) -> str | None:
        """Why learned serving blocks readiness: a requested provider missing (strict mode) or a bundle
        named in ``settings.bundles`` refused; implicitly discovered bundles that fail do not block."""
        failed = [f"{s.ref} ({s.reason})" for s in self.statuses if s.state == "failed" and s.explicit]
        problems = list(self.provider_problems)
        if failed:
            problems.append(f"requested bundle(s) failed to load: {'; '.join(failed)}")
        return "; ".join(problems) if problems else None

    def set_observer(self, observer: InferenceObserver | None) -> None:
        for model in self.models:
            model.observer = observer

    def find(self, requested: str) -> LearnedModel | None:
        """The loaded model named ``name/version``, or the newest loaded version of ``name``."""
        if "/" in requested:
            return next((m for m in self.models if m.ref == requested), None)
        versions = [m for m in self.models if m.manifest.name == requested]
        return max(versions, key=lambda m: natural_version_key(m.manifest.version)) if versions else None

    def knows(self, requested: str) -> bool:
        """Did this process try to load (loaded or failed) any version of the bundle ``requested``
        (``name`` or ``name/version``) names? An unknown version of a known bundle is a missing bundle."""
        name = requested.split("/", 1)[0]
        return any(s.ref.split("/", 1)[0] == name for s in self.statuses)

    def best(self, shape: ScanShape) -> tuple[LearnedModel | None, list[str]]:
        """The best model accepting ``shape`` (highest validation SSIM, else the newest ``created``), and
        the rejection reasons of the others."""
        reasons: list[str] = []
        fitting: list[LearnedModel] = []
        for model in self.models:
            reason = model.rejection(shape)
            if reason is None:
                fitting.append(model)
            else:
                reasons.append(reason)
        if not fitting:
            return None, reasons

        def rank(model: LearnedModel) -> tuple[int, float, float]:
            ssim = model.ssim()
            return (ssim is not None, ssim if ssim is not None else 0.0, model.manifest.created.timestamp())

        return max(fitting, key=rank), reasons


def _parse_request(entry: str) -> tuple[str, str | None]:
    name, _, version = entry.partition("/")
    return name, version or None


def _targets(repository: Path, requested: Sequence[str]) -> list[tuple[str, str | None, bool]]:
    """``(name, version or None, explicit)`` to load: ``requested`` as given, else every version found."""
    if requested:
        return [(*_parse_request(entry), True) for entry in requested]
    return [(ref.name, ref.version, False) for ref in list_bundle_refs(repository)]


def open_session(
    bundle: Bundle, providers: Sequence[str], *, intra_op_threads: int = 0
) -> tuple[onnxruntime.InferenceSession, tuple[str, ...]]:
    """An ORT session on ``bundle``'s ``model.onnx`` with ``providers``; returns it and the providers it
    actually uses. ORT only *warns* about unavailable providers (and runs on the rest): the caller
    compares. :class:`BundleError` when the graph's inputs / output are not the bundle contract's."""
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
    """Run ``session`` once on zero inputs of the manifest geometry; returns the milliseconds it took."""
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
    started = time.perf_counter()
    session.run([OUTPUT_NAME], feeds)
    return (time.perf_counter() - started) * 1000.0


def load_learned(
    repository: Path,
    requested: Sequence[str] = (),
    providers: Sequence[str] = ("CPUExecutionProvider",),
    *,
    strict_providers: bool = True,
    intra_op_threads: int = 0,
) -> LearnedCatalogue:
    """Load, verify, open and warm up bundles (blocking; the app runs it in a thread before readiness).

    ``requested``: ``name`` (latest version) or ``name/version`` entries; empty = every bundle of kind
    unet / modl / vsharp in ``repository`` (other kinds are skipped, failures listed but not blocking).
    A bundle failing any step is refused and recorded with the reason; with ``strict_providers`` a
    requested provider missing from ``session.get_providers()`` is a readiness problem naming it.
    """
    catalogue = LearnedCatalogue(requested_providers=tuple(providers))
    # Unavailable in this build counts as missing even when no bundle is there to reveal the fallback.
    missing_providers = {p for p in providers if p not in onnxruntime.get_available_providers()}
    for name, version, explicit in _targets(repository, requested):
        ref = f"{name}/{version}" if version is not None else name
        try:
            bundle = load_bundle(repository, name, version)
            ref = bundle.manifest.ref
            if bundle.manifest.kind not in RECON_KINDS:
                if not explicit:
                    continue  # a sampler bundle in a shared repository: not ours to serve
                raise BundleError(
                    f"bundle {ref} is of kind {bundle.manifest.kind!r}, not one of {sorted(RECON_KINDS)}"
                )
            session, used = open_session(bundle, providers, intra_op_threads=intra_op_threads)
            warmup_ms = warm_up(session, bundle.manifest)
        except KadaptError as err:
            logger.warning("bundle %s refused: %s: %s", ref, err.slug, err)
            catalogue.statuses.append(BundleStatus(ref, "failed", explicit, reason=f"{err.slug}: {err}"))
            continue
        except Exception as err:  # ORT raises its own (pybind) types for a corrupt graph
            logger.warning("bundle %s refused: %s", ref, err)
            catalogue.statuses.append(BundleStatus(ref, "failed", explicit, reason=f"bundle-invalid: {err}"))
            continue
        missing = [p for p in providers if p not in used]
        if missing:
            missing_providers.update(missing)
            logger.warning(
                "bundle %s: requested providers %s not in use (using %s)", ref, missing, list(used)
            )
        model = LearnedModel(bundle=bundle, session=session, providers=used, warmup_ms=warmup_ms)
        catalogue.models.append(model)
        catalogue.statuses.append(
            BundleStatus(
                ref, "loaded", explicit, manifest=bundle.manifest, providers=used, warmup_ms=warmup_ms
            )
        )
    if strict_providers and missing_providers:
        names = ", ".join(p for p in providers if p in missing_providers)
        catalogue.provider_problems.append(
            f"requested execution provider(s) {names} not in use (silent fallback; onnxruntime offers "
            f"{', '.join(onnxruntime.get_available_providers())}); strict_providers is set"
        )
    return catalogue
