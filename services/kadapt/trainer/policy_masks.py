"""``kadapt train recon --policy BUNDLE``: train a reconstruction on the masks a sampler bundle serves.

Issue 4's post-training step: after MNet is trained, the reconstruction is fine-tuned on MNet's masks
(seed 000 section 3.2 and seed 001 train the reconstructor on the sampler's masks). Each policy is an
``mnet`` or ``fixed-mask`` bundle, opened with :class:`kadapt.bundles.SamplerMasks`, which reproduces
the sampler service's first-round plan (ACS kept, exact budget, top-k among the free lines).

Plans are computed once, at the start, for every training slice and every R -- and, with the flips
augmentation, for every flip of the slice, since a mirrored scan has another ACS block and so another
MNet plan -- and for every validation slice (unflipped). MNet reads each slice's own ACS block as the
scanner sends it (:meth:`PreparedSlice.raw_acs`: the fully sampled k-space as read, restricted to the
ACS); one ONNX Runtime call per slice (and flip) serves every R, since the scores do not depend on R.
A ``fixed-mask`` policy has one plan per R for every slice.

One difference from serving: the gateway plans a multi-slice scan once, from its centre slice's ACS
(``gateway.domain.rounds``); here every slice gets the plan of its own ACS block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import JsonValue

from kadapt.bundles import read_manifest
from kadapt.bundles.sampler_masks import SAMPLER_BUNDLE_KINDS, SamplerMasks
from kadapt.errors import InvalidAccelerationError, InvalidInputError, NotFoundError
from kadapt.kspace.preprocess import acs_block
from kadapt.masks import mask_families
from kadapt.trainer.data import (
    ALL_FLIPS,
    NO_FLIPS,
    Flips,
    PreparedSlice,
    SliceDataset,
    SliceKey,
    flip_kspace,
)

__all__ = ["PolicyPlans", "PolicySet", "check_policy_paths", "prepare_policies", "same_policies"]


def check_policy_paths(
    paths: Sequence[Path], accelerations: Sequence[float], families: Sequence[str]
) -> None:
    """Before any data is loaded: every path is a ``REPO/NAME/VERSION`` bundle directory of kind ``mnet``
    or ``fixed-mask``, trained for every R of the run, with a name that is unique and not one of the
    run's mask ``families`` (names key the validation metrics). :class:`NotFoundError`,
    :class:`InvalidInputError`, :class:`InvalidAccelerationError` naming the bundle and value."""
    seen: dict[str, Path] = {}
    for path in paths:
        if not Path(path).is_dir():
            raise NotFoundError(f"--policy {path}: no bundle directory there (REPOSITORY/NAME/VERSION)")
        manifest = read_manifest(Path(path))
        if manifest.kind not in SAMPLER_BUNDLE_KINDS:
            raise InvalidInputError(
                f"--policy {path}: a {manifest.kind!r} bundle, not a sampler "
                f"({' or '.join(SAMPLER_BUNDLE_KINDS)})"
            )
        untrained = [
            r for r in accelerations if not any(np.isclose(r, t, rtol=1e-6) for t in manifest.accelerations)
        ]
        if untrained:
            raise InvalidAccelerationError(
                f"--policy {manifest.ref} was trained for R in {list(manifest.accelerations)}, "
                f"not R={untrained}"
            )
        if manifest.name in seen or manifest.name in families or manifest.name in mask_families():
            other = seen.get(manifest.name)
            raise InvalidInputError(
                f"--policy {path}: name {manifest.name!r} is already "
                + (f"used by --policy {other}" if other else "a mask family")
            )
        seen[manifest.name] = Path(path)


class PolicyPlans:
    """The plans of one sampler bundle for every slice of a dataset, every R and (``flips``) every flip.

    ``plans[(index, flips)]`` is ``(len(accelerations), W)`` bool, rows in the order of
    ``accelerations``. Implements the trainer's ``SlicePlans`` protocol (:meth:`masks`).
    """

    def __init__(
        self,
        sampler: SamplerMasks,
        dataset: SliceDataset,
        accelerations: Sequence[float],
        *,
        flips: bool,
    ) -> None:
        coils, height, width = dataset.geometry
        num_acs = dataset.num_acs
        sampler.check_scan(coils, height, width, num_acs)
        for acceleration in accelerations:
            sampler.check_acceleration(acceleration)
        self.name = sampler.name
        self.accelerations = tuple(float(r) for r in accelerations)
        self.plans: dict[SliceKey, NDArray[np.bool_]] = {}
        variants = ALL_FLIPS if flips else (NO_FLIPS,)
        for index, item in enumerate(dataset.slices):
            for flip in variants:
                self.plans[(index, flip)] = self._plan(sampler, _acs(item, flip, num_acs), num_acs)

    def _plan(self, sampler: SamplerMasks, acs: NDArray[np.complex64], num_acs: int) -> NDArray[np.bool_]:
        by_rate = sampler.masks_for(acs, self.accelerations, num_acs)
        return np.stack([by_rate[r] for r in self.accelerations])

    def _row(self, acceleration: float) -> int:
        for row, rate in enumerate(self.accelerations):
            if np.isclose(acceleration, rate, rtol=1e-6):
                return row
        raise InvalidAccelerationError(f"policy {self.name!r} has no plans at R={acceleration}")

    def masks(self, keys: Sequence[SliceKey], acceleration: float) -> NDArray[np.bool_]:
        """``(len(keys), W)`` bool: the plan of each (slice index, flips) at R."""
        row = self._row(acceleration)
        try:
            return np.stack([self.plans[key][row] for key in keys])
        except KeyError as error:
            raise InvalidInputError(f"policy {self.name!r} has no plan for slice {error.args[0]}") from None

    def slice_masks(self, acceleration: float) -> NDArray[np.bool_]:
        """``(slices, W)`` bool: every slice's unflipped plan at R (validation masks)."""
        count = 1 + max(index for index, _ in self.plans)
        return self.masks([(index, NO_FLIPS) for index in range(count)], acceleration)


def _acs(item: PreparedSlice, flips: Flips, num_acs: int) -> NDArray[np.complex64]:
    """The ACS block ``(C, H, num_acs)`` a scanner would send for ``item`` mirrored by ``flips``."""
    if flips == NO_FLIPS:
        return item.raw_acs(num_acs)
    flipped = acs_block(flip_kspace(item.kspace, flips), num_acs)
    return (flipped * np.float32(item.scale)).astype(np.complex64)


@dataclass(frozen=True)
class PolicySet:
    """A run's sampler policies: ``train`` name -> plans of the training slices (flips included when
    augmenting), ``validation`` ``(name, R)`` -> ``(val slices, W)`` masks, ``records`` what the
    manifest and ``last.pt`` record of each bundle (:meth:`SamplerMasks.record`)."""

    train: dict[str, PolicyPlans]
    validation: dict[tuple[str, float], NDArray[np.bool_]]
    records: list[dict[str, JsonValue]]


def prepare_policies(
    paths: Sequence[Path],
    train_set: SliceDataset,
    val_set: SliceDataset,
    accelerations: Sequence[float],
    *,
    augment: bool,
) -> PolicySet:
    """Open every policy bundle (checksums verified, ORT on one thread) and precompute its plans."""
    train: dict[str, PolicyPlans] = {}
    validation: dict[tuple[str, float], NDArray[np.bool_]] = {}
    records: list[dict[str, JsonValue]] = []
    for path in paths:
        sampler = SamplerMasks.open(Path(path), threads=1)
        train[sampler.name] = PolicyPlans(sampler, train_set, accelerations, flips=augment)
        val_plans = PolicyPlans(sampler, val_set, accelerations, flips=False)
        for acceleration in accelerations:
            validation[(sampler.name, float(acceleration))] = val_plans.slice_masks(acceleration)
        records.append(sampler.record())
    return PolicySet(train, validation, records)


def same_policies(saved: object, records: Sequence[dict[str, JsonValue]]) -> bool:
    """Whether a checkpoint's ``policies`` (absent in older ones: none) name the same bundles, by
    reference and manifest sha256."""

    def key(entries: Sequence[object]) -> list[tuple[object, object, object]]:
        return [
            (entry.get("name"), entry.get("version"), entry.get("manifest_sha256"))
            for entry in entries
            if isinstance(entry, dict)
        ]

    previous = saved if isinstance(saved, list) else []
    return key(previous) == key(list(records))
