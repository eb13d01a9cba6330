"""The samplers ``kadapt bench dynamic`` compares, each with the reconstruction bundle trained for it.

A sampler is given by bundles (docs/dynamic.md C3, docs/benchmarks.md):

- an ``ads`` bundle: the adaptive dynamic sampler of seed 004 (sec. 2.3, Alg. A1-A5), planned
  retrospectively on each test slice with :meth:`kadapt.bundles.ads_runtime.AdsRuntime.plan_all` (every
  cascade round on the SENSE image of the data so far, exact top-k per frame); reconstructed with its
  own recon bundle ``training.ads.recon`` (``name/version`` in the same repository);
- a dynamic ``vsharp`` bundle with ``training.sampler = "opt"``: the learned non-adaptive ("Opt",
  LOUPE-style) pattern, ``pattern.npy`` ``(T, W)`` scores -> the top ``budget`` lines per frame with the
  ACS block kept (:func:`kadapt.masks.mechanics.topk_plan`); reconstructed by that bundle;
- a dynamic ``vsharp`` bundle with ``training.sampler`` a mask family, or the trainer's comma list of
  families (one row per family): :func:`kadapt.masks.make_mask` seeded per (volume, slice) by
  :func:`kadapt.trainer.bench_stats.mask_seed` (the same draw for every method using that family, so the
  classic context rows see the kt-equispaced baseline's masks). kt families make ``(T, W)`` at once; a 1D
  family draws one mask for all frames (``unified``, the default: ``kadapt train ads`` trains 1D families
  broadcast over the frames) or one per frame when ``training.pattern`` is ``frame-specific`` (seed 004
  appendix B.2's two settings).

Every mask is ``(T, W)`` bool with exactly ``round(W / R)`` lines in every frame, the ACS block included
(:func:`check_dynamic_mask`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kadapt.bundles import Bundle, Manifest, load_bundle
from kadapt.bundles.ads_runtime import AdsRuntime
from kadapt.bundles.onnx_recon import OnnxRecon, is_dynamic, open_session, warm_up
from kadapt.errors import BundleError, InvalidInputError, InvalidStateError
from kadapt.masks import acs_lines, get_family, line_budget, make_mask
from kadapt.masks.mechanics import topk_plan
from kadapt.trainer.bench_stats import mask_seed

CPU_PROVIDERS = ("CPUExecutionProvider",)
PATTERN_FILE = "pattern.npy"
OPT_SAMPLER = "opt"
ADS_SAMPLER = "ads"
PATTERNS = ("frame-specific", "unified")


@dataclass(frozen=True)
class DynamicRequest:
    """One test slice to plan: its volume index, slice index and fully sampled ``kspace (T, C, H, W)``."""

    volume: int
    slice_index: int
    kspace: NDArray[np.complex64]
    acceleration: float


#: ``request -> mask (T, W) bool``
Planner = Callable[[DynamicRequest], NDArray[np.bool_]]


@dataclass
class DynamicSampler:
    """A compared sampler: ``sampler`` ``ads`` / ``opt`` / a family name, its ``pattern``
    (``frame-specific`` / ``unified``) and ``dim``; ``recon`` reconstructs its masks (its own bundle);
    ``name`` is unique per run (the bundle name, or ``name/version`` on a clash)."""

    name: str
    sampler: str
    pattern: str
    dim: str
    plan: Planner
    recon: OnnxRecon
    ref: str
    recon_ref: str
    accelerations: tuple[float, ...]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def adaptive(self) -> bool:
        return self.sampler == ADS_SAMPLER


def open_bundle(path: Path) -> Bundle:
    """The bundle at ``REPOSITORY/NAME/VERSION`` (checksums verified)."""
    path = Path(path)
    return load_bundle(path.parent.parent, path.parent.name, path.name)


def open_dynamic_recon(bundle: Bundle, threads: int) -> OnnxRecon:
    """An ORT runtime (CPU, ``threads`` intra-op threads, warmed up) of a dynamic ``vsharp`` bundle;
    :class:`BundleError` for any other bundle."""
    manifest = bundle.manifest
    if manifest.kind != "vsharp" or not is_dynamic(manifest):
        raise BundleError(
            f"bundle {manifest.ref} is not a dynamic vsharp bundle (kind {manifest.kind!r}, "
            f"training.dynamic {manifest.training.get('dynamic')!r})"
        )
    session, _providers = open_session(bundle, CPU_PROVIDERS, intra_op_threads=threads)
    warm_up(session, manifest)
    return OnnxRecon(session, manifest)


def check_dynamic_mask(
    mask: NDArray[np.bool_], frames: int, width: int, acceleration: float, num_acs: int, sampler: str
) -> None:
    """:class:`InvalidStateError` unless ``mask`` is ``(T, W)`` bool with exactly the R budget of lines
    and the whole ACS block in every frame: every compared sampler spends the same lines."""
    budget = line_budget(width, acceleration, num_acs)
    if mask.shape != (frames, width) or mask.dtype != np.bool_:
        raise InvalidStateError(
            f"sampler {sampler!r} made a mask of shape {mask.shape} {mask.dtype}, not ({frames}, {width})"
        )
    lines = mask.sum(axis=-1)
    acs = mask[:, acs_lines(width, num_acs)].all(axis=-1)
    if np.any(lines != budget) or not acs.all():
        raise InvalidStateError(
            f"sampler {sampler!r} at R {acceleration:g} made masks of {lines.tolist()} lines per frame "
            f"(budget {budget}); ACS kept per frame: {acs.tolist()}"
        )


def family_mask(
    family: str,
    *,
    frames: int,
    width: int,
    acceleration: float,
    num_acs: int,
    seed: int,
    volume: int,
    slice_index: int,
    pattern: str = "unified",
) -> NDArray[np.bool_]:
    """The ``(T, W)`` mask of ``family`` for one test (volume, slice), drawn from a Generator seeded by
    :func:`mask_seed`: kt families per frame at once, 1D families per frame (frame-specific) or one
    draw repeated (unified). :class:`InvalidInputError` for a 2D family (the recon takes line masks)."""
    dims = get_family(family).dims
    rng = np.random.default_rng(mask_seed(seed, "test", family, acceleration, volume, slice_index))
    common: dict[str, Any] = {"width": width, "acceleration": acceleration, "num_acs": num_acs, "rng": rng}
    if dims == "kt":
        mask = make_mask(family, frames=frames, **common)
    elif dims == "1d" and pattern == "unified":
        mask = np.broadcast_to(make_mask(family, **common), (frames, width))
    elif dims == "1d":
        mask = make_mask(family, batch=frames, **common)
    else:
        raise InvalidInputError(f"mask family {family!r} is {dims}: kadapt bench dynamic compares line masks")
    return np.ascontiguousarray(mask, dtype=np.bool_)


def opt_mask(scores: NDArray[np.floating[Any]], acceleration: float, num_acs: int) -> NDArray[np.bool_]:
    """The learned non-adaptive pattern at R: the ACS block plus the top-scoring lines of every frame,
    ``round(W / R)`` in all (``scores`` ``(T, W)``)."""
    frames, width = scores.shape
    acquired = np.zeros((frames, width), dtype=np.bool_)
    acquired[:, acs_lines(width, num_acs)] = True
    return topk_plan(scores, acquired, line_budget(width, acceleration, num_acs))


def _ads_sampler(bundle: Bundle, path: Path, threads: int, num_acs: int) -> DynamicSampler:
    manifest = bundle.manifest
    block = manifest.training.get("ads")
    if not isinstance(block, dict) or not isinstance(block.get("recon"), str):
        raise BundleError(f"ads bundle {manifest.ref} has no training.ads.recon (docs/dynamic.md C3)")
    recon_ref = str(block["recon"])
    name, _, version = recon_ref.partition("/")
    recon_bundle = load_bundle(path.parent.parent, name, version or None)
    runtime = AdsRuntime.open(bundle, threads=threads)

    def plan(request: DynamicRequest) -> NDArray[np.bool_]:
        return np.asarray(runtime.plan_all(request.kspace, request.acceleration, num_acs), dtype=np.bool_)

    return DynamicSampler(
        name=manifest.name, sampler=ADS_SAMPLER, pattern=str(block.get("pattern", "frame-specific")),
        dim=str(block.get("dim", "1d")), plan=plan, recon=open_dynamic_recon(recon_bundle, threads),
        ref=manifest.ref, recon_ref=recon_bundle.manifest.ref, accelerations=manifest.accelerations,
        details={"ads": block, "cascades": runtime.cascades},
    )  # fmt: skip


def _pattern_label(training: dict[str, Any], default: str) -> str:
    """``training.pattern`` when it names one (``frame-specific`` / ``unified``), else ``default``."""
    value = training.get("pattern")
    return value if value in PATTERNS else default


def _baseline_samplers(bundle: Bundle, threads: int, num_acs: int, seed: int) -> list[DynamicSampler]:
    """The sampler(s) of a baseline recon bundle: ``opt`` (its ``pattern.npy``), or one per mask family of
    ``training.sampler`` (the trainer's comma list). 1D families default to ``unified`` (one draw for all
    frames: what ``kadapt train ads`` trains them on) unless ``training.pattern`` says otherwise."""
    manifest = bundle.manifest
    sampler = manifest.training.get("sampler")
    frames = manifest.geometry.frames
    if not isinstance(sampler, str) or frames is None:
        raise BundleError(f"bundle {manifest.ref} names no training.sampler (or no frames): not a baseline")
    recon = open_dynamic_recon(bundle, threads)
    common: dict[str, Any] = {
        "dim": "1d", "recon": recon, "ref": manifest.ref, "recon_ref": manifest.ref,
        "accelerations": manifest.accelerations,
    }  # fmt: skip
    if sampler == OPT_SAMPLER:
        scores = np.load(bundle.file(PATTERN_FILE), allow_pickle=False)
        if scores.shape != (frames, manifest.geometry.ky):
            raise BundleError(f"bundle {manifest.ref}: {PATTERN_FILE} {scores.shape} is not (T, W)")
        shared = bool(np.all(scores == scores[:1]))

        def plan_opt(request: DynamicRequest) -> NDArray[np.bool_]:
            return opt_mask(scores, request.acceleration, num_acs)

        pattern = "unified" if shared else "frame-specific"
        return [DynamicSampler(name=manifest.name, sampler=sampler, pattern=pattern, plan=plan_opt, **common)]
    families = [name.strip() for name in sampler.split(",") if name.strip()]
    samplers = []
    for family in families:
        dims = get_family(family).dims  # UnknownMaskFamilyError names it
        if dims not in ("1d", "kt"):
            raise BundleError(f"bundle {manifest.ref}: family {family!r} is {dims}, not a line family")
        pattern = "frame-specific" if dims == "kt" else _pattern_label(manifest.training, "unified")
        name = manifest.name if len(families) == 1 else f"{manifest.name}[{family}]"
        samplers.append(
            DynamicSampler(
                name=name,
                sampler=family,
                pattern=pattern,
                plan=_family_planner(family, pattern, num_acs, seed),
                **common,
            )
        )
    return samplers


def _family_planner(family: str, pattern: str, num_acs: int, seed: int) -> Planner:
    def plan(request: DynamicRequest) -> NDArray[np.bool_]:
        frames, _coils, _height, width = request.kspace.shape
        return family_mask(
            family, frames=frames, width=width, acceleration=request.acceleration, num_acs=num_acs,
            seed=seed, volume=request.volume, slice_index=request.slice_index, pattern=pattern,
        )  # fmt: skip

    return plan


def resolve_samplers(
    paths: tuple[Path, ...], *, threads: int, num_acs: int, seed: int
) -> tuple[list[DynamicSampler], list[dict[str, Any]]]:
    """The samplers of the given bundles and the bundles skipped with the reason (an ADS bundle of 2D
    points: its recon takes line masks; the recon bundle of an ADS sampler given on its own). Bundle
    errors (missing, checksums, wrong kind, a bundle twice) raise."""
    samplers: list[DynamicSampler] = []
    skipped: list[dict[str, Any]] = []
    for path in paths:
        bundle = open_bundle(path)
        manifest: Manifest = bundle.manifest
        if manifest.kind == ADS_SAMPLER:
            block = manifest.training.get("ads")
            if isinstance(block, dict) and block.get("dim", "1d") != "1d":
                reason = f"ADS dim {block.get('dim')!r}: only 1d line plans are served"
                skipped.append({"bundle": manifest.ref, "R": None, "reason": reason})
                continue
            samplers.append(_ads_sampler(bundle, path, threads, num_acs))
        elif manifest.kind == "vsharp" and manifest.training.get("sampler") in (None, ADS_SAMPLER):
            reason = "a recon bundle without its own sampler: pass its ads bundle"
            skipped.append({"bundle": manifest.ref, "R": None, "reason": reason})
        else:
            samplers.extend(_baseline_samplers(bundle, threads, num_acs, seed))
    return _unique_names(samplers), skipped


def _unique_names(samplers: list[DynamicSampler]) -> list[DynamicSampler]:
    """:class:`InvalidInputError` for a bundle given twice; rows whose names clash get the bundle's
    ``name/version`` instead (keeping a ``[family]`` suffix)."""
    keys = [(sampler.ref, sampler.sampler) for sampler in samplers]
    duplicates = sorted({ref for ref, family in keys if keys.count((ref, family)) > 1})
    if duplicates:
        raise InvalidInputError(f"bundle(s) {duplicates} given more than once")
    names = [sampler.name for sampler in samplers]
    for sampler in samplers:
        if names.count(sampler.name) > 1:
            suffix = f"[{sampler.sampler}]" if sampler.name.endswith("]") else ""
            sampler.name = f"{sampler.ref}{suffix}"
    return samplers
