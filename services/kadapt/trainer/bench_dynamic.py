"""``kadapt bench dynamic``: cine samplers with their reconstructions on the held-out test split (issue 5).

For every R and every sampler given by its bundles (:mod:`kadapt.trainer.bench_dynamic_samplers`: ADS
cascades planned retrospectively through :class:`kadapt.bundles.ads_runtime.AdsRuntime`, the learned
non-adaptive ``opt`` pattern, mask families), each test slice gets one ``(T, W)`` mask (checked: exactly
``round(W / R)`` lines and the ACS block in every frame) and THAT sampler's dynamic vSHARP bundle
reconstructs all its frames in one ONNX Runtime inference (:meth:`kadapt.bundles.onnx_recon.OnnxRecon.
infer_frames`, the recon service's code). For context, zero-filled and CG-SENSE per frame
(:mod:`kadapt.classic`, coil maps from the frame-averaged k-space) run on the kt-equispaced masks -- the
same draws a kt-equispaced baseline bundle sees. Ground truth is the dataset's ``reconstruction_rss``
(RSS of the fully sampled coil images). Metrics, statistics and tables: :mod:`kadapt.trainer.
bench_dynamic_report`. Timings are medians per slice, planning (all cascade rounds for ADS) and
reconstruction separately, under one thread budget. The JSON layout is documented in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from kadapt.bundles import utc_now
from kadapt.bundles.onnx_recon import ScanShape, rejection
from kadapt.classic import DEFAULT_PARAMETERS, reconstruct
from kadapt.data.build import code_version
from kadapt.data.cine import list_cine, read_cine
from kadapt.data.manifest import Split
from kadapt.errors import InvalidInputError
from kadapt.masks import line_budget
from kadapt.trainer.bench_dynamic_report import (
    DynamicRecords,
    RowInfo,
    evaluate_cine,
    summarise_dynamic,
)
from kadapt.trainer.bench_dynamic_samplers import (
    DynamicRequest,
    DynamicSampler,
    check_dynamic_mask,
    family_mask,
    resolve_samplers,
)
from kadapt.trainer.bench_methods import classic_parameters_record
from kadapt.trainer.bench_recon import _machine, test_split_record
from kadapt.trainer.bench_report import json_safe

RESULT_KIND = "kadapt-bench-dynamic"
RESULT_VERSION = 1
DEFAULT_ACCELERATIONS = (4.0, 6.0, 8.0)
QUICK_ACCELERATIONS = (8.0,)
#: ``--quick`` (CI): test volumes and slices per volume.
QUICK_LIMITS = (2, 1)
CONTEXT_FAMILY = "kt-equispaced"
CONTEXT_METHODS = ("zero-filled", "cg-sense")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DynamicBenchSettings:
    """What to run. ``bundles``: ``REPOSITORY/NAME/VERSION`` of ADS sampler bundles and of dynamic vsharp
    baseline bundles; ``accelerations`` None: R 4, 6, 8 (quick: 8); ``num_acs`` None: the dataset
    manifest's; ``threads`` None: every core; ``context``: also the classic rows."""

    data: Path
    bundles: tuple[Path, ...] = ()
    accelerations: tuple[float, ...] | None = None
    num_acs: int | None = None
    quick: bool = False
    threads: int | None = None
    seed: int = 0
    bootstrap: int = 1000
    context: bool = True


@dataclass(frozen=True)
class CineTestVolume:
    """One held-out cine volume: ``kspace (S, T, C, H, W)`` complex64, ``reference (S, T, H, W)``."""

    name: str
    kspace: NDArray[np.complex64]
    reference: NDArray[np.float32]
    source: str


def load_cine_split(data: Path, split: Split, limits: tuple[int, int] | None) -> list[CineTestVolume]:
    """The cine volumes of ``split`` (``limits``: at most (volumes, slices per volume)); one geometry."""
    paths = list_cine(Path(data), split)
    if not paths:
        raise InvalidInputError(f"cine dataset {data} has no volume in split {split!r}")
    if limits is not None:
        paths = paths[: limits[0]]
    volumes = []
    for path in paths:
        cine = read_cine(path)
        stop = limits[1] if limits is not None else None
        volumes.append(
            CineTestVolume(
                name=Path(path).stem,
                kspace=np.asarray(cine.kspace[:stop], dtype=np.complex64),
                reference=np.asarray(cine.rss[:stop], dtype=np.float32),
                source=str(cine.source),
            )
        )
    shapes = {volume.kspace.shape[1:] for volume in volumes}
    if len(shapes) != 1:
        raise InvalidInputError(f"split {split!r} of {data} mixes geometries (T, C, H, W) {sorted(shapes)}")
    return volumes


def dataset_num_acs(data: Path) -> int | None:
    """``num_acs`` of the cine dataset's ``manifest.json`` (docs/dynamic.md C1), None when it has none."""
    path = Path(data) / "manifest.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("num_acs")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _masked(kspace: NDArray[np.complex64], mask: NDArray[np.bool_]) -> NDArray[np.complex64]:
    """``kspace (T, C, H, W)`` with the lines off ``mask (T, W)`` set to zero."""
    return np.where(mask[:, None, None, :], kspace, 0).astype(np.complex64)


def _fits(rates: tuple[float, ...], acceleration: float) -> bool:
    return any(abs(acceleration - rate) <= 0.1 * rate for rate in rates)


def run_samplers(
    test: list[CineTestVolume],
    samplers: list[DynamicSampler],
    accelerations: tuple[float, ...],
    *,
    num_acs: int,
    progress: Progress,
) -> tuple[DynamicRecords, list[dict[str, Any]]]:
    """Every sampler with its recon bundle on every test slice at every R it and its recon accept;
    returns the records and the skipped (sampler, R) cells with the reason. Each sampler plans and
    reconstructs once untimed before its first timed slice."""
    records, skipped = DynamicRecords(), []
    frames, coils, height, width = test[0].kspace.shape[1:]
    warm: set[str] = set()
    for acceleration in accelerations:
        budget = line_budget(width, acceleration, num_acs)
        shape = ScanShape(coils, height, width, frames, acceleration=width / budget)
        for sampler in samplers:
            reason = rejection(sampler.recon.manifest, shape)
            if reason is None and not _fits(sampler.accelerations, acceleration):
                reason = f"sampler {sampler.ref} is trained for R {list(sampler.accelerations)}"
            if reason is not None:
                skipped.append({"bundle": sampler.ref, "R": acceleration, "reason": reason})
                continue
            key = (sampler.name, acceleration)
            for index, volume in enumerate(test):
                images = []
                for slice_index, kspace in enumerate(volume.kspace):
                    request = DynamicRequest(index, slice_index, kspace, acceleration)
                    if sampler.name not in warm:
                        first = sampler.plan(request)
                        sampler.recon.infer_frames(_masked(kspace, first), first, num_acs)
                        warm.add(sampler.name)
                    started = time.perf_counter()
                    mask = sampler.plan(request)
                    planned = time.perf_counter()
                    check_dynamic_mask(mask, frames, width, acceleration, num_acs, sampler.name)
                    recon_started = time.perf_counter()
                    images.append(sampler.recon.infer_frames(_masked(kspace, mask), mask, num_acs))
                    recon_s = time.perf_counter() - recon_started
                    records.add_slice(key, mask, planned - started, recon_s)
                    progress(f"{volume.name} R{acceleration:g} {sampler.name}")
                records.add_volume(
                    key, volume.name, volume.source, evaluate_cine(volume.reference, np.stack(images))
                )
    return records, skipped


def run_context(
    test: list[CineTestVolume],
    records: DynamicRecords,
    accelerations: tuple[float, ...],
    *,
    num_acs: int,
    seed: int,
    progress: Progress,
) -> list[RowInfo]:
    """Zero-filled and CG-SENSE per frame on the kt-equispaced masks (the classic context rows)."""
    infos = [
        RowInfo(
            f"{method} ({CONTEXT_FAMILY})", CONTEXT_FAMILY, "classic", "frame-specific", "1d", None, method
        )
        for method in CONTEXT_METHODS
    ]
    for acceleration in accelerations:
        for index, volume in enumerate(test):
            images: dict[str, list[NDArray[np.float32]]] = {info.name: [] for info in infos}
            for slice_index, kspace in enumerate(volume.kspace):
                frames, _coils, _height, width = kspace.shape
                started = time.perf_counter()
                mask = family_mask(
                    CONTEXT_FAMILY, frames=frames, width=width, acceleration=acceleration, num_acs=num_acs,
                    seed=seed, volume=index, slice_index=slice_index,
                )  # fmt: skip
                plan_s = time.perf_counter() - started
                masked = _masked(kspace, mask)
                for info in infos:
                    recon_started = time.perf_counter()
                    image = reconstruct(info.recon, masked[None], mask[None], num_acs, DEFAULT_PARAMETERS)[0]
                    records.add_slice(
                        (info.name, acceleration), mask, plan_s, time.perf_counter() - recon_started
                    )
                    images[info.name].append(image)
                    progress(f"{volume.name} R{acceleration:g} {info.name}")
            for info in infos:
                metrics = evaluate_cine(volume.reference, np.stack(images[info.name]))
                records.add_volume((info.name, acceleration), volume.name, volume.source, metrics)
    return infos


def _info(sampler: DynamicSampler) -> RowInfo:
    kind = "ads" if sampler.adaptive else "baseline"
    return RowInfo(
        sampler.name, sampler.sampler, kind, sampler.pattern, sampler.dim, sampler.ref, sampler.recon_ref
    )


def run_dynamic_benchmark(settings: DynamicBenchSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark and return its JSON-ready result (module docstring, docs/benchmarks.md).

    Raises :class:`InvalidInputError` (no test volumes, mixed geometries, bad threads, no ACS size, a
    bundle twice), :class:`InvalidAccelerationError` (an R the ACS block cannot meet), bundle errors
    (:class:`BundleNotFoundError`, :class:`ChecksumMismatchError`, :class:`BundleError`: a wrong kind, no
    ``training.ads.recon``, a static recon bundle), :class:`InvalidStateError` (a sampler broke the line
    budget)."""
    tick = progress or (lambda _description: None)
    quick = settings.quick
    accelerations = settings.accelerations or (QUICK_ACCELERATIONS if quick else DEFAULT_ACCELERATIONS)
    threads = settings.threads or os.cpu_count() or 1
    if threads < 1:
        raise InvalidInputError(f"threads must be >= 1, got {threads}")
    machine = _machine()
    test = load_cine_split(settings.data, "test", QUICK_LIMITS if quick else None)
    height, width = (int(size) for size in test[0].kspace.shape[-2:])
    num_acs = settings.num_acs or dataset_num_acs(settings.data)
    if num_acs is None:
        raise InvalidInputError(f"no num_acs given and {settings.data}/manifest.json names none")
    budgets = {f"{r:g}": line_budget(width, r, num_acs) for r in accelerations}  # checks every R first
    timings: dict[str, float] = {}
    with threadpool_limits(limits=threads):
        samplers, skipped = resolve_samplers(
            settings.bundles, threads=threads, num_acs=num_acs, seed=settings.seed
        )
        started = time.perf_counter()
        records, refused = run_samplers(test, samplers, accelerations, num_acs=num_acs, progress=tick)
        timings["samplers_s"] = time.perf_counter() - started
        context: list[RowInfo] = []
        if settings.context:
            started = time.perf_counter()
            context = run_context(
                test, records, accelerations, num_acs=num_acs, seed=settings.seed, progress=tick
            )
            timings["context_s"] = time.perf_counter() - started
    rows, best_baseline = summarise_dynamic(
        records,
        [*map(_info, samplers), *context],
        accelerations,
        seed=settings.seed,
        resamples=settings.bootstrap,
    )
    machine["load_average_end"] = list(os.getloadavg())
    result = {
        "kind": RESULT_KIND,
        "version": RESULT_VERSION,
        "created": utc_now().isoformat(),
        "code_version": code_version(),
        "machine": machine,
        "data": test_split_record(settings.data, test),
        "num_acs": num_acs,
        "budgets": budgets,
        "settings": {
            "accelerations": list(accelerations),
            "quick": quick,
            "threads": threads,
            "seed": settings.seed,
            "bootstrap_resamples": settings.bootstrap,
            "crop": [2 * height // 3, 2 * width // 3],
            "samplers": [
                {
                    "name": s.name,
                    "sampler": s.sampler,
                    "pattern": s.pattern,
                    "dim": s.dim,
                    "ref": s.ref,
                    "recon": s.recon_ref,
                    "accelerations": list(s.accelerations),
                    **s.details,
                }
                for s in samplers
            ],
            "context": {
                "mask": CONTEXT_FAMILY,
                "methods": list(CONTEXT_METHODS) if settings.context else [],
                "classic": classic_parameters_record(DEFAULT_PARAMETERS, num_acs),
            },
        },
        "timings": timings,
        "best_baseline": best_baseline,
        "rows": rows,
        "skipped": skipped + refused,
    }
    safe: dict[str, Any] = json_safe(result)
    return safe
