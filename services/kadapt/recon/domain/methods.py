"""The registry of reconstruction methods the recon worker can run, and the fallback rule.

A job names its method:

- a registered (classic) name runs as is;
- ``learned`` / ``auto``: the best loaded bundle accepting the scan (:meth:`LearnedCatalogue.best`);
- a bundle ``name`` or ``name/version`` that is loaded: that bundle, if it accepts the scan;
- a bundle this worker does not serve (not loaded: refused, not requested, or only in the repository) ->
  the fallback method (``cg-sense``).

Whenever the learned choice cannot be served -- nothing loaded, the bundle refuses the scan's geometry or
R -- the job runs the fallback and its result records ``method_used`` and ``fallback_reason``, as the
gateway does for plans (architecture section 4). Any other name is an :class:`UnknownReconMethodError`.

Whether a loaded bundle accepts a scan depends on its k-space and mask: the worker first checks the
name (:meth:`MethodRegistry.validate`, so an unknown method fails the job before any blob is read), then
loads the data and chooses with the scan's shape (:meth:`MethodRegistry.choose`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from kadapt.classic import (
    CLASSIC_METHODS,
    DEFAULT_PARAMETERS,
    ClassicParameters,
    reconstruct,
)
from kadapt.errors import InvalidInputError, UnknownReconMethodError
from kadapt.recon.domain.learned import LearnedCatalogue, LearnedModel, ScanShape

#: ``(kspace (slice, frame, coil, H, W), mask (slice, frame, W), num_acs) -> magnitude (slice, frame, H, W)``
Reconstructor = Callable[[NDArray[Any], NDArray[Any], int], NDArray[Any]]
#: Does a method name name a model bundle? (Learned recon methods register later.)
BundleLookup = Callable[[str], bool]

FALLBACK_METHOD = "cg-sense"
#: Method names asking for the best loaded bundle that accepts the scan.
AUTO_METHODS = ("learned", "auto")

_DESCRIPTIONS = {
    "zero-filled": "RSS of the zero-filled coil images (no reconstruction; the baseline)",
    "sense": "SENSE combination of the zero-filled coil images with ACS coil maps (fast, aliased)",
    "cg-sense": "CG-SENSE: Tikhonov least squares by conjugate gradients with ESPIRiT maps (sigpy)",
    "l1-wavelet": "compressed sensing: L1-wavelet regularised SENSE with ESPIRiT maps (sigpy)",
}

# A bundle name, optionally with its version: letters, digits, '.', '_', '-' (no path tricks).
_BUNDLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class ReconMethod:
    """A named reconstruction: ``kind`` is ``classic`` or ``learned``."""

    name: str
    description: str
    kind: str
    run: Reconstructor


@dataclass(frozen=True)
class MethodChoice:
    """What a job asked for and what will run; ``fallback_reason`` is set when they differ.

    Learned choices are made with the scan's shape (:meth:`MethodRegistry.choose`), once its data is
    loaded, so a choice is final when made."""

    requested: str
    method: ReconMethod
    fallback_reason: str | None = None


def repository_bundle_lookup(repository: Path) -> BundleLookup:
    """A :data:`BundleLookup` over a model repository ``<repository>/<name>/<version>/manifest.json``;
    ``name`` or ``name/version`` match."""

    def names_a_bundle(name: str) -> bool:
        if not _BUNDLE_NAME.match(name):
            return False
        candidate = repository / name
        if (candidate / "manifest.json").is_file():
            return True
        return candidate.is_dir() and any(
            (version / "manifest.json").is_file() for version in candidate.iterdir()
        )

    return names_a_bundle


def _no_bundles(name: str) -> bool:
    return False


class MethodRegistry:
    """Methods by name, each registered once; :meth:`choose` applies the fallback rule."""

    def __init__(
        self,
        methods: Iterable[ReconMethod] = (),
        *,
        fallback: str = FALLBACK_METHOD,
        names_a_bundle: BundleLookup = _no_bundles,
    ) -> None:
        self._methods: dict[str, ReconMethod] = {}
        for method in methods:
            self.register(method)
        self.fallback = fallback
        self.names_a_bundle = names_a_bundle
        self.learned: LearnedCatalogue | None = None

    def register(self, method: ReconMethod) -> None:
        """Add ``method``; :class:`InvalidInputError` if its name is taken."""
        if method.name in self._methods:
            raise InvalidInputError(f"recon method {method.name!r} is already registered")
        self._methods[method.name] = method

    def names(self) -> list[str]:
        return list(self._methods)

    def methods(self) -> list[ReconMethod]:
        return list(self._methods.values())

    def get(self, name: str) -> ReconMethod:
        """The method registered as ``name``; :class:`UnknownReconMethodError` otherwise."""
        method = self._methods.get(name)
        if method is None:
            raise UnknownReconMethodError(
                f"unknown recon method {name!r}; known: {', '.join(self._methods)}", method=name
            )
        return method

    def attach_learned(self, catalogue: LearnedCatalogue) -> None:
        """Serve the loaded models of ``catalogue`` (the app does this after loading, before ready)."""
        self.learned = catalogue

    def learned_methods(self) -> list[ReconMethod]:
        """One entry per loaded bundle (``name/version``), for listings."""
        if self.learned is None:
            return []
        return [
            ReconMethod(
                name=model.ref,
                description=f"learned {model.manifest.kind} ({_describe_model(model)})",
                kind="learned",
                run=model.reconstruct,
            )
            for model in self.learned.models
        ]

    def choose(self, requested: str, shape: ScanShape | None = None) -> MethodChoice:
        """The method to run for a job asking for ``requested`` (see the module docstring); ``shape``
        (the scan's, :func:`kadapt.recon.domain.learned.scan_shape`) makes a learned choice final."""
        if requested in self._methods:
            return MethodChoice(requested=requested, method=self._methods[requested])
        learned = self.learned
        wants_best = requested in AUTO_METHODS
        model = learned.find(requested) if learned is not None and not wants_best else None
        if wants_best and (learned is None or not learned.models):
            return self._fall_back(requested, "no learned bundle is loaded by this worker")
        if model is not None or wants_best:
            if shape is None:
                # Whether a bundle accepts a scan depends on its data: the worker chooses after loading.
                raise InvalidInputError(f"choosing the learned method {requested!r} needs the scan's shape")
            return self._resolve(requested, shape)
        if (learned is not None and learned.knows(requested)) or self.names_a_bundle(requested):
            return self._fall_back(
                requested,
                f"{requested!r} names a model bundle, but no learned reconstruction for it is served "
                "by this worker (not loaded)",
            )
        known = ", ".join(self._methods)
        raise UnknownReconMethodError(
            f"unknown recon method {requested!r}: neither registered ({known}), "
            f"{' / '.join(AUTO_METHODS)}, nor a model bundle",
            method=requested,
        )

    def validate(self, requested: str) -> None:
        """Raise :class:`UnknownReconMethodError` unless ``requested`` can be chosen for some scan."""
        if requested in self._methods or requested in AUTO_METHODS:
            return
        learned = self.learned
        if (learned is not None and learned.knows(requested)) or self.names_a_bundle(requested):
            return
        known = ", ".join(self._methods)
        raise UnknownReconMethodError(
            f"unknown recon method {requested!r}: neither registered ({known}), "
            f"{' / '.join(AUTO_METHODS)}, nor a model bundle",
            method=requested,
        )

    def _fall_back(self, requested: str, why: str) -> MethodChoice:
        reason = f"{why}; ran {self.fallback!r} instead"
        return MethodChoice(requested=requested, method=self.get(self.fallback), fallback_reason=reason)

    def _resolve(self, requested: str, shape: ScanShape) -> MethodChoice:
        """The final choice for ``requested`` (a loaded bundle or ``learned`` / ``auto``) on ``shape``."""
        learned = self.learned
        if learned is None:
            return self._fall_back(requested, "no learned bundle is loaded by this worker")
        if requested in AUTO_METHODS:
            best, reasons = learned.best(shape)
            if best is None:
                return self._fall_back(
                    requested, f"no loaded bundle accepts the scan: {'; '.join(reasons) or 'none loaded'}"
                )
            model = best
        else:
            found = learned.find(requested)
            if found is None:
                return self._fall_back(requested, f"bundle {requested!r} is not loaded by this worker")
            model = found
            reason = model.rejection(shape)
            if reason is not None:
                return self._fall_back(requested, reason)
        return MethodChoice(
            requested=requested,
            method=ReconMethod(
                name=model.ref, description=_describe_model(model), kind="learned", run=model.reconstruct
            ),
        )


def _describe_model(model: LearnedModel) -> str:
    geometry = model.manifest.geometry
    rates = ", ".join(f"{r:g}" for r in model.manifest.accelerations)
    return f"bundle {model.ref}, {geometry.kx}x{geometry.ky}x{geometry.coils} at R {rates}"


def classic_methods(parameters: ClassicParameters = DEFAULT_PARAMETERS) -> list[ReconMethod]:
    """The four classic methods of :mod:`kadapt.classic.sigpy_recon` as registry entries."""
    return [
        ReconMethod(
            name=name,
            description=_DESCRIPTIONS[name],
            kind="classic",
            run=functools.partial(reconstruct, name, parameters=parameters),
        )
        for name in CLASSIC_METHODS
    ]


def default_registry(
    model_repository: Path | None = None, parameters: ClassicParameters = DEFAULT_PARAMETERS
) -> MethodRegistry:
    """The classic methods, falling back to ``cg-sense`` for bundle names found in ``model_repository``."""
    lookup = repository_bundle_lookup(model_repository) if model_repository is not None else _no_bundles
    return MethodRegistry(classic_methods(parameters), names_a_bundle=lookup)
