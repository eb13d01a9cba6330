"""``kadapt bench recon``: classic, BART and learned reconstructions on the held-out test split (issue 3).

Per test volume, mask family, R and slice one mask is drawn (:func:`kadapt.trainer.bench_stats.bench_mask`)
and every method reconstructs that same masked slice, one method after the other, so the comparison is
paired and the methods share the machine's state at that moment. Ground truth is fastMRI's: the RSS of
the fully sampled coil images (as the replay client and ``kadapt demo`` score). Metrics are
:func:`kadapt.metrics.evaluate_volume` per volume (volume-level PSNR / NMSE, mean-over-slices SSIM), then
the mean and 95 % Student-t interval over volumes per (method, mask, R), and each method's paired
difference to ``bart-pics``. ``s_per_slice`` is the median wall time of one slice, measured in this run
under one thread budget (``threads``: ORT intra-op threads, ``OMP_NUM_THREADS`` of BART, numpy / OpenMP
pools via threadpoolctl). BART's ``lamda`` is tuned per R on the validation split (vd-random masks). The
JSON layout is documented in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from kadapt.bundles import utc_now
from kadapt.bundles.onnx_recon import ScanShape
from kadapt.classic import CLASSIC_METHODS, DEFAULT_PARAMETERS
from kadapt.classic.bart import ESPIRIT_KERNEL, bart_pics, find_bart
from kadapt.data.build import code_version
from kadapt.data.manifest import Split, load_manifest
from kadapt.errors import DependencyUnavailableError, InvalidInputError
from kadapt.fastmri.files import read_fastmri
from kadapt.kspace.coils import rss
from kadapt.kspace.fft import ifft2c
from kadapt.masks import line_budget
from kadapt.metrics import evaluate_volume
from kadapt.trainer.bench_methods import (
    BART_METHOD,
    BenchMethod,
    bart_method,
    bundle_method,
    classic_method,
    classic_parameters_record,
    name_methods,
)
from kadapt.trainer.bench_report import METRICS, CellKey, Records, json_safe, summarise
from kadapt.trainer.bench_stats import bench_mask
from kadapt.trainer.data import default_num_acs

RESULT_KIND = "kadapt-bench-recon"
RESULT_VERSION = 1
DEFAULT_ACCELERATIONS = (4.0, 8.0)
QUICK_ACCELERATIONS = (4.0,)
DEFAULT_MASKS = ("equispaced", "vd-random")
LAMDA_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
QUICK_LAMDA_GRID = (3e-4, 1e-3)
TUNING_MASK = "vd-random"
#: ``--quick`` (CI): volumes and slices per volume of the test and validation splits.
QUICK_LIMITS = (1, 2)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    """What to run. ``accelerations`` / ``lamda_grid`` None: the defaults (quick: R 4 and two lamdas);
    ``threads`` None: every core; ``bundles``: ``REPOSITORY/NAME/VERSION`` directories."""

    data: Path
    bundles: tuple[Path, ...] = ()
    accelerations: tuple[float, ...] | None = None
    masks: tuple[str, ...] = DEFAULT_MASKS
    num_acs: int | None = None
    quick: bool = False
    threads: int | None = None
    seed: int = 0
    lamda_grid: tuple[float, ...] | None = None
    bart_iterations: int = 100


@dataclass(frozen=True)
class Volume:
    """One held-out volume: fully sampled ``kspace (S, C, H, W)`` complex64, RSS ``reference (S, H, W)``,
    and the ``source`` it was simulated from (the manifest record's, for per-source breakdowns)."""

    name: str
    kspace: NDArray[np.complex64]
    reference: NDArray[np.float32]
    source: str = ""


def load_split(data: Path, split: Split, limits: tuple[int, int] | None) -> list[Volume]:
    """The volumes of ``split`` (``limits`` = at most (volumes, slices per volume)) with RSS references."""
    records = load_manifest(data).volumes_in(split)
    if not records:
        raise InvalidInputError(f"dataset {data} has no volume in split {split!r}")
    if limits is not None:
        records = records[: limits[0]]
    volumes = []
    for record in records:
        kspace = read_fastmri(Path(data) / record.file).kspace
        if limits is not None:
            kspace = kspace[: limits[1]]
        reference = rss(ifft2c(kspace), axis=-3).astype(np.float32)
        volumes.append(Volume(record.name, kspace, reference, record.source))
    shapes = {volume.kspace.shape[1:] for volume in volumes}
    if len(shapes) != 1:
        raise InvalidInputError(f"split {split!r} of {data} mixes geometries (C, H, W) {sorted(shapes)}")
    return volumes


class ScoredVolume(Protocol):
    """What :func:`test_split_record` reads of a test volume (static :class:`Volume` or a cine one)."""

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def kspace(self) -> NDArray[np.complex64]: ...


def test_split_record(data: Path, test: Sequence[ScoredVolume]) -> dict[str, Any]:
    """The ``data`` block of a bench result: folder, split, reference, volumes (with their sources),
    slices and geometry of the scored test volumes (k-space ``(slices, [frames,] coils, H, W)``)."""
    sizes = [int(size) for size in test[0].kspace.shape[1:]]
    return {
        "dir": str(data),
        "split": "test",
        "reference": "rss of the fully sampled coil images",
        "volumes": [volume.name for volume in test],
        "sources": {volume.name: volume.source for volume in test},
        "slices": sum(volume.kspace.shape[0] for volume in test),
        "geometry": dict(zip(("frames", "coils", "height", "width")[-len(sizes) :], sizes, strict=True)),
    }


def masked_slice(kspace: NDArray[np.complex64], mask: NDArray[np.bool_]) -> NDArray[np.complex64]:
    """``kspace (C, H, W)`` with the columns off ``mask (W,)`` set to +0.0 (no sign of unacquired data)."""
    return np.where(mask[None, None, :], kspace, 0).astype(np.complex64)


def _mean_metrics(per_volume: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([entry[name] for entry in per_volume])) for name in METRICS}


def tune_bart(
    volumes: list[Volume],
    accelerations: tuple[float, ...],
    grid: tuple[float, ...],
    *,
    num_acs: int,
    seed: int,
    iterations: int,
    workdir: Path,
    threads: int,
    progress: Progress,
) -> tuple[dict[float, float], dict[str, Any]]:
    """BART's ``lamda`` per R: best mean validation PSNR (tie-break SSIM) over ``grid`` on vd-random masks
    (one per volume and slice, the same for every lamda). Returns ``{R: lamda}`` and the JSON record."""
    chosen: dict[float, float] = {}
    record: dict[str, Any] = {}
    for acceleration in accelerations:
        entries = []
        for lamda in grid:
            per_volume = []
            for index, volume in enumerate(volumes):
                images = []
                for slice_index, kspace in enumerate(volume.kspace):
                    mask = bench_mask(
                        TUNING_MASK, width=kspace.shape[-1], acceleration=acceleration, num_acs=num_acs,
                        seed=seed, split="val", volume=index, slice_index=slice_index,
                    )  # fmt: skip
                    result = bart_pics(
                        masked_slice(kspace, mask), num_acs, lamda, iterations=iterations, workdir=workdir,
                        threads=threads,
                    )  # fmt: skip
                    images.append(result.image)
                    progress(f"tune bart R{acceleration:g} lamda {lamda:g}")
                per_volume.append(evaluate_volume(volume.reference, np.stack(images)))
            entries.append({"lamda": lamda, **_mean_metrics(per_volume)})
        best = max(entries, key=lambda entry: (entry["psnr"], entry["ssim"]))
        chosen[acceleration] = float(best["lamda"])
        record[f"{acceleration:g}"] = {"lamda": best["lamda"], "grid": entries}
    return chosen, record


def _machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
    }


def _bart_setup(
    settings: BenchSettings,
    accelerations: tuple[float, ...],
    grid: tuple[float, ...],
    *,
    num_acs: int,
    height: int,
    workdir: Path,
    threads: int,
    progress: Progress,
) -> tuple[BenchMethod | None, dict[str, Any]]:
    """The tuned ``bart-pics`` method and its JSON record, or None and the reason BART is unavailable."""
    try:
        executable = find_bart()
    except DependencyUnavailableError as error:
        return None, {"available": False, "reason": f"{error.slug}: {error}"}
    started = time.perf_counter()
    val = load_split(settings.data, "val", QUICK_LIMITS if settings.quick else None)
    lamdas, tuning = tune_bart(
        val, accelerations, grid, num_acs=num_acs, seed=settings.seed, iterations=settings.bart_iterations,
        workdir=workdir, threads=threads, progress=progress,
    )  # fmt: skip
    method = bart_method(
        num_acs, lamdas, iterations=settings.bart_iterations, workdir=workdir, threads=threads
    )
    return method, {
        "available": True,
        "executable": executable,
        "iterations": settings.bart_iterations,
        "commands": [
            f"bart ecalib -m1 -k{ESPIRIT_KERNEL} -r {height}:{num_acs} ksp sens",
            f"bart pics -S -R W:3:0:<lamda> -i {settings.bart_iterations} ksp sens img",
        ],
        "normalisation": "k-space / acs_scale (99.5th percentile of |ACS|), image * acs_scale",
        "tuning": {
            "split": "val",
            "mask": TUNING_MASK,
            "criterion": "mean volume PSNR, tie-break SSIM",
            "volumes": [volume.name for volume in val],
            "slices": sum(volume.kspace.shape[0] for volume in val),
            "seconds": time.perf_counter() - started,
            "by_R": tuning,
        },
    }


def run_methods(
    test: list[Volume],
    methods: list[BenchMethod],
    cells: list[tuple[str, float]],
    *,
    num_acs: int,
    seed: int,
    progress: Progress,
) -> tuple[Records, list[dict[str, Any]]]:
    """Every method on every (volume, mask, R, slice) of ``test`` it accepts, all on the same mask; returns
    the records and the refusals (one per method and cell, with the bundle's reason). Each method runs
    once untimed before its first timed slice (imports, JIT, caches: its warm-up)."""
    records = Records()
    refused: dict[CellKey, dict[str, Any]] = {}
    warm: set[str] = set()
    for index, volume in enumerate(test):
        coils, height, width = volume.kspace.shape[1:]
        for family, acceleration in cells:
            masks = [
                bench_mask(
                    family, width=width, acceleration=acceleration, num_acs=num_acs, seed=seed, split="test",
                    volume=index, slice_index=slice_index,
                )
                for slice_index in range(volume.kspace.shape[0])
            ]  # fmt: skip
            lines = float(np.mean([mask.sum() for mask in masks]))
            shape = ScanShape(coils, height, width, frames=1, acceleration=width / lines)
            active = []
            for method in methods:
                reason = method.rejection(shape)
                if reason is None:
                    active.append(method)
                else:
                    refused.setdefault(
                        (method.name, family, acceleration),
                        {"method": method.name, "ref": method.ref, "mask": family, "R": acceleration,
                         "reason": reason},
                    )  # fmt: skip
            images: dict[str, list[NDArray[np.float32]]] = {method.name: [] for method in active}
            for kspace, mask in zip(volume.kspace, masks, strict=True):
                sample = masked_slice(kspace, mask)
                # Methods take turns on each slice, so a load change on the machine hits them all alike.
                for method in active:
                    if method.name not in warm:
                        method.reconstruct(sample, mask, acceleration)
                        warm.add(method.name)
                    started = time.perf_counter()
                    image, parts = method.reconstruct(sample, mask, acceleration)
                    records.add_slice(
                        (method.name, family, acceleration), time.perf_counter() - started, parts
                    )
                    images[method.name].append(image)
                    progress(f"{volume.name} {family} R{acceleration:g} {method.name}")
            for method in active:
                metrics = evaluate_volume(volume.reference, np.stack(images[method.name]))
                records.add_volume((method.name, family, acceleration), volume.name, metrics)
    return records, list(refused.values())


def run_recon_benchmark(settings: BenchSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark and return its JSON-ready result (see the module docstring and
    docs/benchmarks.md). ``progress`` is called once per reconstructed slice with a description.

    Raises :class:`InvalidInputError` (no test / val volumes, mixed geometries, bad threads, a bundle given
    twice), :class:`InvalidAccelerationError` (an R the ACS block cannot meet), bundle errors
    (:class:`BundleNotFoundError`, :class:`ChecksumMismatchError`, :class:`BundleError`) and BART's
    :class:`ExternalToolError`."""
    tick = progress or (lambda _description: None)
    quick = settings.quick
    accelerations = settings.accelerations or (QUICK_ACCELERATIONS if quick else DEFAULT_ACCELERATIONS)
    grid = settings.lamda_grid or (QUICK_LAMDA_GRID if quick else LAMDA_GRID)
    threads = settings.threads or os.cpu_count() or 1
    if threads < 1:
        raise InvalidInputError(f"threads must be >= 1, got {threads}")
    machine = _machine()
    test = load_split(settings.data, "test", QUICK_LIMITS if quick else None)
    _, height, width = (int(size) for size in test[0].kspace.shape[1:])
    num_acs = settings.num_acs or default_num_acs(width)
    for acceleration in accelerations:
        line_budget(width, acceleration, num_acs)  # InvalidAccelerationError before any work
    cells = [(family, acceleration) for family in settings.masks for acceleration in accelerations]
    shm = Path("/dev/shm")
    with (
        threadpool_limits(limits=threads),
        tempfile.TemporaryDirectory(prefix="kadapt-bench-", dir=shm if shm.is_dir() else None) as scratch,
    ):
        classic = [classic_method(name, num_acs) for name in CLASSIC_METHODS]
        # Bundles first: a missing or duplicated bundle fails before minutes of BART tuning.
        learned = name_methods(
            [bundle_method(path, num_acs, threads=threads) for path in settings.bundles],
            reserved=(*CLASSIC_METHODS, BART_METHOD),
        )
        bart, bart_record = _bart_setup(
            settings, accelerations, grid, num_acs=num_acs, height=height, workdir=Path(scratch),
            threads=threads, progress=tick,
        )  # fmt: skip
        skipped: list[dict[str, Any]] = []
        if bart is None:
            skipped.append({"method": BART_METHOD, "ref": None, "mask": None, "R": None,
                            "reason": bart_record["reason"]})  # fmt: skip
        methods = [*classic, *([bart] if bart is not None else []), *learned]
        records, refused = run_methods(
            test, methods, cells, num_acs=num_acs, seed=settings.seed, progress=tick
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
        "settings": {
            "masks": list(settings.masks),
            "accelerations": list(accelerations),
            "quick": quick,
            "threads": threads,
            "seed": settings.seed,
            "lamda_grid": list(grid),
            "methods": {m.name: {"kind": m.kind, "ref": m.ref, **m.details} for m in methods},
            "classic": classic_parameters_record(DEFAULT_PARAMETERS, num_acs),
        },
        "bart": bart_record,
        "rows": summarise(records, methods, cells),
        "skipped": skipped + refused,
    }
    safe: dict[str, Any] = json_safe(result)
    return safe
