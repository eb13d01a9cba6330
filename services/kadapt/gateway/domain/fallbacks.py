"""A scan's fallback policy: a mask family of :mod:`kadapt.masks`, or a learned ``fixed-mask`` bundle.

``ScanPolicy.fallback`` names what the gateway serves (marked degraded) when the sampler is late, down
or failing (architecture.md section 4). Besides the 1d / kt mask families it may name a ``fixed-mask``
bundle of the gateway's model repository (``KADAPT_GATEWAY_MODEL_REPOSITORY``), ``name`` (its latest
version) or ``name/version``: a population pattern learned offline (LOUPE, energy-pop, IGS, diffusion;
docs/sampler.md), the same line scores the sampler serves as a fixed policy.

The bundle is read once, when the scan is created: :class:`FallbackBundles` loads only ``fixed-mask``
bundles (``mask.npy`` through :mod:`kadapt.bundles`, every checksum verified; no ONNX Runtime, no torch)
and caches them by ``name/version`` (versions are immutable). What the scan keeps is a
:class:`FallbackPattern`: the resolved ref and the sampler's line order for those scores
(:func:`~kadapt.bundles.fixed_masks.served_fixed_order`). It lives in the session document, so a
restarted gateway or another replica serves the same fallback without the repository, and the scan
keeps its fallback if the bundle is deleted later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from kadapt.bundles import MANIFEST_FILENAME, Manifest, load_bundle, natural_version_key, read_manifest
from kadapt.bundles.fixed_masks import (
    ACCELERATION_RTOL,
    fixed_mask_scores,
    mismatched_axes,
    served_fixed_order,
)
from kadapt.errors import (
    BundleKindError,
    BundleNotFoundError,
    GeometryMismatchError,
    InvalidAccelerationError,
    UnknownMaskFamilyError,
)
from kadapt.masks import mask_families
from kadapt.schemas import ScanGeometry, ScanPolicy

FIXED_MASK_KIND = "fixed-mask"


class FallbackPattern(BaseModel):
    """A ``fixed-mask`` bundle fallback as a scan stores it.

    ``ref`` is the bundle's ``name/version`` (the plan's ``served_by``); ``order`` every ky line ``(W,)``,
    best first, in the order the sampler fills that bundle's plans (scores plus its centre tie-break).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str
    order: tuple[int, ...]

    def lines(self, acquired: Sequence[int], budget: int) -> tuple[int, ...]:
        """``acquired`` plus the first other lines of :attr:`order`, ``budget`` lines in all, sorted: the
        sampler's plan for this bundle (with only the ACS block acquired: its served plan at R)."""
        chosen = {int(line) for line in acquired}
        missing = budget - len(chosen)
        for line in self.order:
            if missing <= 0:
                break
            if line not in chosen:
                chosen.add(line)
                missing -= 1
        return tuple(sorted(chosen))


@dataclass(frozen=True)
class FixedMaskBundle:
    """A loaded, verified ``fixed-mask`` bundle: its manifest and its served line order ``(W,)``."""

    manifest: Manifest
    order: tuple[int, ...]

    def pattern(self) -> FallbackPattern:
        return FallbackPattern(ref=self.manifest.ref, order=self.order)


class FallbackBundles:
    """The ``fixed-mask`` bundles of ``repository`` (None: none, mask families only), loaded on demand
    and cached by ``name/version``. Only the name's directory is listed to find its latest version."""

    def __init__(self, repository: Path | None) -> None:
        self.repository = repository
        self._cache: dict[tuple[str, str], FixedMaskBundle] = {}

    def get(self, ref: str) -> FixedMaskBundle:
        """The bundle ``name`` (latest version) or ``name/version``.

        Raises :class:`UnknownMaskFamilyError` for a bare name that is neither a family nor a bundle,
        :class:`BundleNotFoundError` for a missing ``name/version``, :class:`BundleKindError` for a bundle
        of another kind, :class:`~kadapt.errors.BundleError` (and its checksum subclass) for a broken one.
        """
        name, _, version = ref.partition("/")
        repository = self.repository
        if repository is None:
            raise UnknownMaskFamilyError(
                f"fallback {ref!r} is not a mask family (known: {', '.join(sorted(mask_families()))}) "
                "and the gateway has no model repository for fixed-mask bundles "
                "(KADAPT_GATEWAY_MODEL_REPOSITORY)",
                family=ref,
            )
        version = version or latest_version(repository, name)
        bundle_dir = repository / name / version
        if not (bundle_dir / MANIFEST_FILENAME).is_file():
            raise BundleNotFoundError(
                f"fallback: no bundle {name}/{version} in the gateway's model repository", bundle=ref
            )
        cached = self._cache.get((name, version))
        if cached is not None:
            return cached
        manifest = read_manifest(bundle_dir)  # the kind first: another kind's files are never read
        if manifest.kind != FIXED_MASK_KIND:
            raise BundleKindError(
                f"fallback bundle {manifest.ref} is of kind {manifest.kind!r}; a fallback must be a "
                f"{FIXED_MASK_KIND!r} bundle or a 1d / kt mask family",
                bundle=manifest.ref,
                kind=manifest.kind,
            )
        bundle = load_bundle(repository, name, version)
        order = served_fixed_order(fixed_mask_scores(bundle))
        loaded = FixedMaskBundle(manifest=bundle.manifest, order=tuple(int(line) for line in order))
        self._cache[(name, version)] = loaded
        return loaded


def latest_version(repository: Path, name: str) -> str:
    """The highest version (natural sort) of bundle ``name`` in ``repository``, listing that name's
    directory only; :class:`UnknownMaskFamilyError` when there is none (the name is neither a family nor
    a bundle)."""
    model_dir = repository / name
    versions = (
        [
            child.name
            for child in model_dir.iterdir()
            if not child.name.startswith(".") and (child / MANIFEST_FILENAME).is_file()
        ]
        if model_dir.is_dir()
        else []
    )
    if not versions:
        raise UnknownMaskFamilyError(
            f"fallback {name!r} is neither a mask family (known: {', '.join(sorted(mask_families()))}) "
            "nor a bundle in the gateway's model repository",
            family=name,
        )
    return max(versions, key=natural_version_key)


def check_bundle_fits(bundle: FixedMaskBundle, policy: ScanPolicy, geometry: ScanGeometry) -> None:
    """Refuse a fallback bundle the scan cannot use, as the sampler would refuse the policy:
    :class:`GeometryMismatchError` naming W (and H / coils / frames where the manifest fixes them) and
    :class:`InvalidAccelerationError` naming R unless it is one of the manifest's accelerations."""
    manifest = bundle.manifest
    accepted = manifest.geometry
    wanted = {"W": accepted.ky, "H": accepted.kx, "coils": accepted.coils, "frames": accepted.frames}
    given = {"W": geometry.width, "H": geometry.height, "coils": geometry.coils, "frames": geometry.frames}
    wrong = mismatched_axes(wanted, given)
    if wrong:
        raise GeometryMismatchError(
            f"fallback bundle {manifest.ref} does not fit this scan: {', '.join(wrong)}",
            bundle=manifest.ref,
        )
    if not any(np.isclose(policy.acceleration, r, rtol=ACCELERATION_RTOL) for r in manifest.accelerations):
        raise InvalidAccelerationError(
            f"fallback bundle {manifest.ref} serves R in {list(manifest.accelerations)}, "
            f"not R={policy.acceleration}",
            bundle=manifest.ref,
            acceleration=policy.acceleration,
        )


def resolve_fallback(
    policy: ScanPolicy, geometry: ScanGeometry, bundles: FallbackBundles | None
) -> FallbackPattern | None:
    """The scan's bundle fallback, resolved and checked against it; None when ``policy.fallback`` is a
    mask family (a family name wins over a bundle of the same name, as in the sampler). Raises as
    :meth:`FallbackBundles.get` and :func:`check_bundle_fits`."""
    name = policy.fallback
    if "/" not in name and name in mask_families():
        return None
    bundle = (bundles or FallbackBundles(None)).get(name)
    check_bundle_fits(bundle, policy, geometry)
    return bundle.pattern()
