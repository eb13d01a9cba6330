"""The registry of reconstruction methods the recon worker can run, and the fallback rule.

A job names its method. A registered name runs as is. A name that is not registered but names a model
bundle in the repository (``<repository>/<name>/<version>/manifest.json``) is a learned reconstruction this
worker cannot serve (yet, or its model failed to load): the job runs the fallback method (``cg-sense``)
and its result records ``method_used`` and ``fallback_reason``, as the gateway does for plans
(architecture section 4). Any other name is an :class:`UnknownReconMethodError`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from kadapt.errors import InvalidInputError, UnknownReconMethodError
from kadapt.recon.domain.classic import CLASSIC_METHODS, DEFAULT_PARAMETERS, ClassicParameters, reconstruct

#: ``(kspace (slice, frame, coil, H, W), mask (slice, frame, W), num_acs) -> magnitude (slice, frame, H, W)``
Reconstructor = Callable[[NDArray[Any], NDArray[Any], int], NDArray[Any]]
#: Does a method name name a model bundle? (Learned recon methods register later.)
BundleLookup = Callable[[str], bool]

FALLBACK_METHOD = "cg-sense"

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
    """What a job asked for and what will run; ``fallback_reason`` is set when they differ."""

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

    def choose(self, requested: str) -> MethodChoice:
        """The method to run for a job asking for ``requested`` (see the module docstring)."""
        if requested in self._methods:
            return MethodChoice(requested=requested, method=self._methods[requested])
        if self.names_a_bundle(requested):
            reason = (
                f"{requested!r} names a model bundle, but no learned reconstruction for it is served "
                f"by this worker; ran {self.fallback!r} instead"
            )
            return MethodChoice(requested=requested, method=self.get(self.fallback), fallback_reason=reason)
        known = ", ".join(self._methods)
        raise UnknownReconMethodError(
            f"unknown recon method {requested!r}: neither registered ({known}) nor a model bundle",
            method=requested,
        )


def classic_methods(parameters: ClassicParameters = DEFAULT_PARAMETERS) -> list[ReconMethod]:
    """The four classic methods of :mod:`kadapt.recon.domain.classic` as registry entries."""
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
