"""The sampling policies ``kadapt bench sampling`` compares: each makes the line mask of one test slice.

- ``family``: a registered 1D mask family (:func:`kadapt.masks.make_mask`), one seeded mask per (family,
  R, volume, slice) (:func:`kadapt.trainer.bench_stats.bench_mask`), shared by every reconstruction.
- ``fixed-mask`` / ``mnet``: a sampler bundle planning exactly as the sampler service serves it
  (:class:`kadapt.bundles.sampler_masks.SamplerMasks`): a fixed-mask bundle's top-scored free lines, or
  an MNet's ONNX Runtime scores on the slice's raw ACS block ``(1, C, H, num_acs, 2)`` (normalised inside
  the graph), then the top-k free lines; the ACS block kept.
- ``greedy-population`` / ``oracle``: a greedy line order (:mod:`kadapt.trainer.greedy`), one for all
  slices or one per slice.

Every mask is checked (:func:`check_mask`): exactly ``line_budget(W, R, num_acs)`` lines, ACS included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from kadapt.bundles import load_bundle
from kadapt.bundles.sampler_masks import SAMPLER_BUNDLE_KINDS, SamplerMasks
from kadapt.errors import BundleError, GeometryMismatchError, InvalidAccelerationError, InvalidStateError
from kadapt.masks import acs_lines, line_budget
from kadapt.trainer.bench_stats import bench_mask
from kadapt.trainer.greedy import mask_from_order

PolicyKind = Literal["family", "fixed-mask", "greedy-population", "mnet", "oracle"]
#: Kinds that plan from the scan itself (excluded from the best fixed mask).
ADAPTIVE_KINDS = frozenset({"mnet", "oracle"})


@dataclass(frozen=True)
class SliceRequest:
    """One mask to make: test ``volume`` / ``slice_index`` (indices), the slice's fully sampled
    ``kspace (C, H, W)`` (adaptive policies read its ACS block only) and R."""

    volume: int
    slice_index: int
    kspace: NDArray[np.complex64]
    acceleration: float


@dataclass
class SamplingPolicy:
    """A compared policy: ``plan(request) -> mask (W,)``; ``refusal(R)`` says why it cannot serve R (a
    bundle's geometry or trained R) or None; ``ref`` the bundle ``name/version``."""

    name: str
    kind: PolicyKind
    plan: Callable[[SliceRequest], NDArray[np.bool_]]
    refusal: Callable[[float], str | None] = lambda _acceleration: None
    ref: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def adaptive(self) -> bool:
        return self.kind in ADAPTIVE_KINDS


def check_mask(mask: NDArray[np.bool_], width: int, acceleration: float, num_acs: int, policy: str) -> None:
    """:class:`InvalidStateError` unless ``mask`` is ``(W,)`` bool with exactly the R budget of lines and
    the whole centred ACS block: every compared policy spends the same lines."""
    budget = line_budget(width, acceleration, num_acs)
    if mask.shape != (width,) or mask.dtype != np.bool_:
        raise InvalidStateError(
            f"policy {policy!r} made a mask of shape {mask.shape} {mask.dtype}, not ({width},)"
        )
    if int(mask.sum()) != budget or not mask[acs_lines(width, num_acs)].all():
        raise InvalidStateError(
            f"policy {policy!r} at R {acceleration:g} made a mask of {int(mask.sum())} lines "
            f"(budget {budget}) {'with' if mask[acs_lines(width, num_acs)].all() else 'without'} "
            f"the {num_acs} ACS lines"
        )


def family_policy(family: str, *, num_acs: int, seed: int, **params: Any) -> SamplingPolicy:
    """The seeded mask family ``family`` (``params``: its keyword parameters, e.g. a profile)."""

    def plan(request: SliceRequest) -> NDArray[np.bool_]:
        return bench_mask(
            family, width=request.kspace.shape[-1], acceleration=request.acceleration, num_acs=num_acs,
            seed=seed, split="test", volume=request.volume, slice_index=request.slice_index, **params,
        )  # fmt: skip

    return SamplingPolicy(name=family, kind="family", plan=plan)


def order_policy(
    name: str, kind: PolicyKind, orders: Mapping[tuple[int, int], Sequence[int]] | Sequence[int], num_acs: int
) -> SamplingPolicy:
    """A greedy order: one for every slice (a sequence) or one per ``(volume, slice)`` (a mapping)."""

    def plan(request: SliceRequest) -> NDArray[np.bool_]:
        order = orders[(request.volume, request.slice_index)] if isinstance(orders, Mapping) else orders
        width = request.kspace.shape[-1]
        return mask_from_order(order, width, num_acs, line_budget(width, request.acceleration, num_acs))

    return SamplingPolicy(name=name, kind=kind, plan=plan)


def sampler_policy(
    bundle_dir: Path, *, shape: tuple[int, int, int], num_acs: int, threads: int
) -> SamplingPolicy:
    """The sampler bundle at ``REPOSITORY/NAME/VERSION`` (checksums verified) on test scans of ``shape (C,
    H, W)``, planning exactly as the sampler service (:class:`kadapt.bundles.sampler_masks.SamplerMasks`,
    ``threads`` ORT intra-op threads). :class:`BundleNotFoundError` when it is not there,
    :class:`BundleError` for a kind other than ``fixed-mask`` / ``mnet``. A geometry or R the bundle does
    not serve is a refusal (the cell is skipped with the reason), not an error."""
    path = Path(bundle_dir)
    bundle = load_bundle(path.parent.parent, path.parent.name, path.name)
    manifest = bundle.manifest
    if manifest.kind not in SAMPLER_BUNDLE_KINDS:
        raise BundleError(
            f"bundle {manifest.ref} at {path} is of kind {manifest.kind!r}; --samplers takes "
            f"{' or '.join(SAMPLER_BUNDLE_KINDS)}"
        )
    masks = SamplerMasks(bundle, threads=threads)
    coils, height, width = shape

    def refusal(acceleration: float) -> str | None:
        try:
            masks.check_scan(coils, height, width, num_acs)
            masks.check_acceleration(acceleration)
        except (GeometryMismatchError, InvalidAccelerationError) as err:
            return str(err)
        return None

    def plan(request: SliceRequest) -> NDArray[np.bool_]:
        return masks.mask_for(request.kspace, request.acceleration, num_acs)

    kind: PolicyKind = "mnet" if manifest.kind == "mnet" else "fixed-mask"
    details = {key: value for key, value in masks.record().items() if key != "path"}
    if manifest.kind == "mnet":
        details["architecture"] = manifest.training.get("architecture")
    return SamplingPolicy(
        name=manifest.name, kind=kind, plan=plan, refusal=refusal, ref=manifest.ref, details=details
    )
