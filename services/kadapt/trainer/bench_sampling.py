"""``kadapt bench sampling``: sampling policies under one reconstruction on the held-out test split (issue 4).

For each R, every policy (:mod:`kadapt.trainer.bench_samplers`: mask families, ``fixed-mask`` and ``mnet``
sampler bundles, the greedy population mask, the per-object greedy oracle) makes one mask per test slice,
each mask is checked (exact budget, ACS kept), and the same reconstruction ``recon`` -- a classic method
(:func:`kadapt.trainer.bench_methods.classic_method`) or a recon bundle through ONNX Runtime
(:func:`kadapt.trainer.bench_methods.bundle_method`) -- turns it into an image. Ground truth is the RSS of
the fully sampled coil images; metrics per volume with :func:`kadapt.metrics.evaluate_volume`; statistics
in :mod:`kadapt.trainer.bench_sampling_report`.

The greedy population mask is searched on training slices only (split by subject: never a test slice),
the oracle on each test slice with its own ground truth (:mod:`kadapt.trainer.greedy`), both under the
search reconstruction (:mod:`kadapt.trainer.search_recon`, default batched ``cg-sense``; ``same`` runs
``recon`` itself, slowly). The JSON layout is documented in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from kadapt.bundles import utc_now
from kadapt.bundles.onnx_recon import ScanShape
from kadapt.classic import CLASSIC_METHODS, DEFAULT_PARAMETERS
from kadapt.data.build import code_version
from kadapt.errors import InvalidInputError, UnknownReconMethodError
from kadapt.masks import get_family, line_budget
from kadapt.metrics import evaluate_volume
from kadapt.trainer.bench_methods import BenchMethod, bundle_method, classic_method, classic_parameters_record
from kadapt.trainer.bench_recon import Volume, _machine, load_split, masked_slice, test_split_record
from kadapt.trainer.bench_report import json_safe
from kadapt.trainer.bench_samplers import (
    SamplingPolicy,
    SliceRequest,
    check_mask,
    family_policy,
    order_policy,
    sampler_policy,
)
from kadapt.trainer.bench_sampling_report import SamplingRecords, summarise_sampling
from kadapt.trainer.data import default_num_acs, prepare_slice
from kadapt.trainer.greedy import GreedyResult, forward_selection, select_slices
from kadapt.trainer.population import energy_profile
from kadapt.trainer.search_recon import CgSenseSearch, ReconSearch, SenseSearch, SliceSearch

RESULT_KIND = "kadapt-bench-sampling"
RESULT_VERSION = 1
DEFAULT_ACCELERATIONS = (4.0, 8.0)
QUICK_ACCELERATIONS = (8.0,)
DEFAULT_FAMILIES = ("equispaced", "vd-random", "gaussian-1d", "centre-only", "energy-density")
SEARCH_RECONS = ("cg-sense", "sense", "same")
#: ``--quick``: test volumes and slices per volume, and training slices of the greedy population search.
QUICK_LIMITS = (2, 2)
QUICK_GREEDY_SLICES = 4
OBJECTIVE = "mean slice PSNR (dB) of the magnitude vs the RSS reference, data range = slice max"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SamplingBenchSettings:
    """What to run. ``recon``: a classic method name or a recon bundle ``REPOSITORY/NAME/VERSION``;
    ``samplers``: ``fixed-mask`` / ``mnet`` bundle directories; ``accelerations`` None: R 4 and 8 (quick:
    8); ``threads`` None: every core; ``search_recon``: one of :data:`SEARCH_RECONS`."""

    data: Path
    recon: str
    samplers: tuple[Path, ...] = ()
    accelerations: tuple[float, ...] | None = None
    families: tuple[str, ...] = DEFAULT_FAMILIES
    num_acs: int | None = None
    quick: bool = False
    seed: int = 0
    greedy_slices: int = 16
    search_recon: str = "cg-sense"
    oracle: bool = True
    bootstrap: int = 2000
    threads: int | None = None


def resolve_recon(value: str, num_acs: int, threads: int) -> BenchMethod:
    """The reconstruction ``value`` names: a classic method, or a recon bundle directory.
    :class:`UnknownReconMethodError` when it is neither (naming it), bundle errors from loading."""
    if value in CLASSIC_METHODS:
        return classic_method(value, num_acs)
    if "/" in value or Path(value).exists():
        return bundle_method(Path(value), num_acs, threads=threads)
    raise UnknownReconMethodError(
        f"unknown recon {value!r}: neither a classic method ({', '.join(CLASSIC_METHODS)}) nor a bundle "
        "directory REPOSITORY/NAME/VERSION",
        method=value,
    )


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_search(
    name: str, volume: Volume, slice_index: int, num_acs: int, recon: BenchMethod, acceleration: float
) -> SliceSearch:
    """The search reconstruction ``name`` on one slice of ``volume`` (``same``: ``recon`` at R
    ``acceleration``, the largest budget searched)."""
    kspace, reference = volume.kspace[slice_index], volume.reference[slice_index]
    if name == "cg-sense":
        return CgSenseSearch(kspace, reference, num_acs, DEFAULT_PARAMETERS)
    if name == "sense":
        return SenseSearch(kspace, reference, num_acs)
    if name == "same":
        return ReconSearch(
            kspace, reference, num_acs, lambda k, m, r: recon.reconstruct(k, m, r)[0], acceleration
        )
    raise InvalidInputError(f"unknown search recon {name!r}; known: {', '.join(SEARCH_RECONS)}")


def _family_policies(
    settings: SamplingBenchSettings, train: list[Volume], num_acs: int
) -> tuple[list[SamplingPolicy], dict[str, Any]]:
    policies, details = [], {}
    for family in settings.families:
        if get_family(family).dims != "1d":  # UnknownMaskFamilyError names an unknown one
            raise InvalidInputError(f"mask family {family!r} is not a 1d line family")
        if family == "energy-density":
            # The family needs a (W,) energy profile: the training split's (seed 000 section 3.1).
            slices = [
                prepare_slice(v.name, s, v.kspace[s], num_acs) for v in train for s in range(len(v.kspace))
            ]
            profile = energy_profile(slices)
            policies.append(family_policy(family, num_acs=num_acs, seed=settings.seed, profile=profile))
            details[family] = {"profile": "training split energy per line", "slices": len(slices)}
        else:
            policies.append(family_policy(family, num_acs=num_acs, seed=settings.seed))
    return policies, details


def _greedy_population(
    settings: SamplingBenchSettings,
    train: list[Volume],
    picks: int,
    search: Callable[[Volume, int], SliceSearch],
    progress: Progress,
) -> tuple[GreedyResult, dict[str, Any]]:
    count = min(settings.greedy_slices, QUICK_GREEDY_SLICES) if settings.quick else settings.greedy_slices
    rng = np.random.default_rng([settings.seed, zlib.crc32(b"greedy-population")])
    chosen = select_slices([len(volume.kspace) for volume in train], count, rng)
    started = time.perf_counter()
    result = forward_selection([search(train[v], s) for v, s in chosen], picks, progress, "greedy population")
    return result, {
        "split": "train",
        "slices": [{"volume": train[v].name, "slice": s} for v, s in chosen],
        "order": list(result.order),
        "objective_trace": list(result.objective),
        "seconds": time.perf_counter() - started,
    }


def _oracle(
    test: list[Volume], picks: int, search: Callable[[Volume, int], SliceSearch], progress: Progress
) -> tuple[dict[tuple[int, int], tuple[int, ...]], dict[str, Any]]:
    started = time.perf_counter()
    orders = {}
    for index, volume in enumerate(test):
        for slice_index in range(len(volume.kspace)):
            label = f"oracle {volume.name}/{slice_index}"
            orders[(index, slice_index)] = forward_selection(
                [search(volume, slice_index)], picks, progress, label
            ).order
    return orders, {
        "orders": [{"volume": test[v].name, "slice": s, "order": list(o)} for (v, s), o in orders.items()],
        "seconds": time.perf_counter() - started,
    }


def evaluate_policies(
    test: list[Volume],
    policies: list[SamplingPolicy],
    accelerations: tuple[float, ...],
    recon: BenchMethod,
    *,
    num_acs: int,
    progress: Progress,
) -> tuple[SamplingRecords, list[dict[str, Any]]]:
    """Every policy's masks (checked) reconstructed by ``recon`` on every test slice at every R; returns
    the records and the skipped (policy or recon, R) cells with the reason."""
    records, skipped = SamplingRecords(), []
    coils, height, width = test[0].kspace.shape[1:]
    for acceleration in accelerations:
        shape = ScanShape(
            coils, height, width, frames=1, acceleration=width / line_budget(width, acceleration, num_acs)
        )
        reason = recon.rejection(shape)
        if reason is not None:
            skipped.append({"policy": None, "recon": recon.name, "R": acceleration, "reason": reason})
            continue
        for policy in policies:
            refusal = policy.refusal(acceleration)
            if refusal is not None:
                skipped.append({"policy": policy.name, "recon": None, "R": acceleration, "reason": refusal})
                continue
            for index, volume in enumerate(test):
                images = []
                for slice_index, kspace in enumerate(volume.kspace):
                    mask = policy.plan(SliceRequest(index, slice_index, kspace, acceleration))
                    check_mask(mask, width, acceleration, num_acs, policy.name)
                    started = time.perf_counter()
                    images.append(recon.reconstruct(masked_slice(kspace, mask), mask, acceleration)[0])
                    records.add_slice((policy.name, acceleration), mask, time.perf_counter() - started)
                    progress(f"{volume.name} R{acceleration:g} {policy.name}")
                metrics = evaluate_volume(volume.reference, np.stack(images))
                records.add_volume((policy.name, acceleration), volume.name, volume.source, metrics)
    return records, skipped


def run_sampling_benchmark(
    settings: SamplingBenchSettings, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the benchmark and return its JSON-ready result (module docstring, docs/benchmarks.md).

    Raises :class:`UnknownReconMethodError` (``recon`` neither classic nor a path), bundle errors
    (:class:`BundleNotFoundError`, :class:`BundleError` for a wrong kind, checksums), mask family errors,
    :class:`InvalidAccelerationError` (an R the ACS block cannot meet), :class:`InvalidInputError`
    (unknown search recon, missing splits, duplicate policy names, bad threads)."""
    tick = progress or (lambda _description: None)
    quick = settings.quick
    accelerations = settings.accelerations or (QUICK_ACCELERATIONS if quick else DEFAULT_ACCELERATIONS)
    threads = settings.threads or os.cpu_count() or 1
    if threads < 1:
        raise InvalidInputError(f"threads must be >= 1, got {threads}")
    if settings.search_recon not in SEARCH_RECONS:
        raise InvalidInputError(
            f"unknown search recon {settings.search_recon!r}; known: {', '.join(SEARCH_RECONS)}"
        )
    machine = _machine()
    test = load_split(settings.data, "test", QUICK_LIMITS if quick else None)
    coils, height, width = (int(size) for size in test[0].kspace.shape[1:])
    num_acs = settings.num_acs or default_num_acs(width)
    picks = max(line_budget(width, r, num_acs) for r in accelerations) - num_acs  # checks every R first
    timings: dict[str, float] = {}
    with threadpool_limits(limits=threads), _torch_threads(threads):
        recon = resolve_recon(settings.recon, num_acs, threads)
        samplers = [
            sampler_policy(path, shape=(coils, height, width), num_acs=num_acs, threads=threads)
            for path in settings.samplers
        ]
        train = load_split(settings.data, "train", None)
        if {volume.name for volume in train} & {volume.name for volume in test}:
            raise InvalidInputError(f"dataset {settings.data}: a volume is in both train and test")
        families, family_details = _family_policies(settings, train, num_acs)

        def search(volume: Volume, slice_index: int) -> SliceSearch:
            return make_search(settings.search_recon, volume, slice_index, num_acs, recon, min(accelerations))

        greedy, greedy_record = _greedy_population(settings, train, picks, search, tick)
        timings["greedy_population_s"] = greedy_record["seconds"]
        policies = [
            *families,
            *samplers,
            order_policy("greedy-population", "greedy-population", greedy.order, num_acs),
        ]
        oracle_record: dict[str, Any] | None = None
        if settings.oracle:
            orders, oracle_record = _oracle(test, picks, search, tick)
            timings["oracle_s"] = oracle_record["seconds"]
            policies.append(order_policy("oracle", "oracle", orders, num_acs))
        names = [policy.name for policy in policies]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise InvalidInputError(
                f"policy name(s) {duplicates} given more than once (bundle names must differ)"
            )
        started = time.perf_counter()
        records, skipped = evaluate_policies(
            test, policies, accelerations, recon, num_acs=num_acs, progress=tick
        )
        timings["recon_s"] = time.perf_counter() - started
    rows, best_fixed, per_source = summarise_sampling(
        records, policies, accelerations, resamples=settings.bootstrap, seed=settings.seed
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
        "budgets": {f"{r:g}": line_budget(width, r, num_acs) for r in accelerations},
        "settings": {
            "recon": settings.recon,
            "recon_method": {"name": recon.name, "kind": recon.kind, "ref": recon.ref, **recon.details},
            "search_recon": settings.search_recon,
            "search_objective": OBJECTIVE,
            "classic": classic_parameters_record(DEFAULT_PARAMETERS, num_acs),
            "accelerations": list(accelerations),
            "families": list(settings.families),
            "family_details": family_details,
            "samplers": [{"name": p.name, "kind": p.kind, "ref": p.ref, **p.details} for p in samplers],
            "quick": quick,
            "seed": settings.seed,
            "greedy_slices": len(greedy_record["slices"]),
            "oracle": settings.oracle,
            "bootstrap_resamples": settings.bootstrap,
            "threads": threads,
        },
        "timings": timings,
        "greedy_population": greedy_record,
        "oracle": oracle_record,
        "best_fixed": best_fixed,
        "rows": rows,
        "per_source": per_source,
        "adaptive_distinct_masks": {
            policy.name: float(
                np.mean([row["distinct_masks"] for row in rows if row["policy"] == policy.name])
            )
            for policy in policies
            if policy.adaptive and any(row["policy"] == policy.name for row in rows)
        },
        "skipped": skipped,
    }
    safe: dict[str, Any] = json_safe(result)
    return safe
