"""Learned reconstructions served from ONNX model bundles (onnxruntime + numpy only; no torch at serve time).

A bundle (``<repository>/<name>/<version>/manifest.json`` + ``model.onnx``, architecture section 6) of kind
``unet`` / ``modl`` / ``vsharp`` is loaded with :func:`kadapt.bundles.load_bundle` (sha256 of every file
verified), opened as an ``onnxruntime.InferenceSession`` with the configured providers, checked for the
providers actually in use (``session.get_providers()``: a requested GPU provider that silently fell back
is a readiness problem in strict mode) and warmed up with one zero input of the manifest's shapes.

The graph contract (the trainer exports exactly this) and the per-slice inference live in the core,
:mod:`kadapt.bundles.onnx_recon` (the trainer's benchmark runs the same code); this module adds what is
the service's: readiness (provider check, refused bundles), the inference observer, model choice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

import numpy as np
import onnxruntime
from numpy.typing import NDArray

from kadapt.bundles import Bundle, Manifest, list_bundle_refs, load_bundle, natural_version_key
from kadapt.bundles.onnx_recon import (
    ACCELERATION_TOLERANCE,
    INPUT_NAMES,
    MODEL_FILE,
    OUTPUT_NAME,
    RECON_KINDS,
    OnnxRecon,
    ScanShape,
    open_session,
    rejection,
    scan_shape,
    warm_up,
)
from kadapt.errors import BundleError, KadaptError

logger = logging.getLogger(__name__)

__all__ = [
    "ACCELERATION_TOLERANCE",
    "INPUT_NAMES",
    "MODEL_FILE",
    "OUTPUT_NAME",
    "RECON_KINDS",
    "BundleStatus",
    "InferenceObserver",
    "LearnedCatalogue",
    "LearnedModel",
    "ScanShape",
    "load_learned",
    "open_session",
    "scan_shape",
    "warm_up",
]

#: ``(bundle ref, seconds)`` of one (slice, frame) inference; the app feeds a Prometheus histogram.
InferenceObserver = Callable[[str, float], None]


@dataclass
class LearnedModel:
    """A loaded, verified and warmed-up bundle; :meth:`reconstruct` is thread-safe (ORT ``run`` is).
    Inference is the core's :class:`kadapt.bundles.onnx_recon.OnnxRecon`; this adds the observer."""

    bundle: Bundle
    session: onnxruntime.InferenceSession
    providers: tuple[str, ...]
    warmup_ms: float
    observer: InferenceObserver | None = None

    def __post_init__(self) -> None:
        self._runtime = OnnxRecon(self.session, self.bundle.manifest, on_run=self._observe)

    def _observe(self, seconds: float) -> None:
        if self.observer is not None:
            self.observer(self.ref, seconds)

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def ref(self) -> str:
        return self.manifest.ref

    def rejection(self, shape: ScanShape) -> str | None:
        """Why this bundle cannot reconstruct a scan of ``shape`` (None: it can)."""
        return rejection(self.manifest, shape)

    def ssim(self) -> float | None:
        """The validation SSIM the manifest records: ``validation.ssim`` or ``validation.metrics.ssim``,
        else the mean ``ssim`` of the trainer's per-(mask, R) entries (``validation["vd-random/R4"]``...,
        docs/trainer.md)."""
        validation = self.manifest.validation
        metrics = validation.get("metrics")
        candidates = [validation.get("ssim"), metrics.get("ssim") if isinstance(metrics, dict) else None]
        for value in candidates:
            if _is_number(value):
                return float(value)
        per_mask = [
            float(value)
            for entry in validation.values()
            if isinstance(entry, dict) and _is_number(value := entry.get("ssim"))
        ]
        return sum(per_mask) / len(per_mask) if per_mask else None

    def infer_slice(
        self, kspace: NDArray[np.complex64], mask: NDArray[np.bool_], num_acs: int
    ) -> NDArray[np.float32]:
        """One (slice, frame): k-space ``(C, H, W)`` complex (zero off the mask), mask ``(W,)`` bool ->
        magnitude ``(H, W)`` float32 on the input's scale (``|image| * s``, the bundle contract)."""
        return self._runtime.infer_slice(kspace, mask, num_acs)

    def reconstruct(self, kspace: NDArray[Any], mask: NDArray[Any], num_acs: int) -> NDArray[np.float32]:
        """k-space ``(slice, frame, C, H, W)`` complex64 (zero off the mask), mask ``(slice, frame, W)`` bool
        -> magnitude ``(slice, frame, H, W)`` float32, one inference per (slice, frame)."""
        return self._runtime.reconstruct(kspace, mask, num_acs)


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
        """The best model accepting ``shape``, and the rejection reasons of the others. A bundle whose
        geometry fixes the scan's frame count (a dynamic cine bundle on a cine scan) ranks above
        frame-agnostic ones; then the highest validation SSIM, else the newest ``created``."""
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

        def rank(model: LearnedModel) -> tuple[bool, bool, float, float]:
            ssim = model.ssim()
            return (
                model.manifest.geometry.frames == shape.frames,
                ssim is not None,
                ssim if ssim is not None else 0.0,
                model.manifest.created.timestamp(),
            )

        return max(fitting, key=rank), reasons


def _parse_request(entry: str) -> tuple[str, str | None]:
    name, _, version = entry.partition("/")
    return name, version or None


def _targets(repository: Path, requested: Sequence[str]) -> list[tuple[str, str | None, bool]]:
    """``(name, version or None, explicit)`` to load: ``requested`` as given, else every version found."""
    if requested:
        return [(*_parse_request(entry), True) for entry in requested]
    return [(ref.name, ref.version, False) for ref in list_bundle_refs(repository)]


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


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
