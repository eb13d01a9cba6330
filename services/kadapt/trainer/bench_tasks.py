"""``kadapt bench tasks``: task-driven and diffusion-prior patterns against centre, equispaced and LOUPE on
the held-out test split of a task dataset (issue 8; seed 002 and seed 003).

Policies, each planning exactly what the sampler serves (:mod:`kadapt.trainer.bench_samplers`): the IGS
bundles (one per task: ``training.method == "igs"``), the diffusion line bundle, ``models/loupe/1`` (where
its geometry and R fit; otherwise the cells are skipped with the reason), ``centre-only`` and
``equispaced`` (fastMRI's equispaced lines with a random offset, one seeded mask per cell). Patterns come
from ``--patterns`` (bundles written by ``kadapt learn-pattern``) or, when none is given, are learned first
by the same code into a work repository (quick-sized with ``--quick``). Evaluations and their metrics:
:mod:`kadapt.trainer.bench_tasks_eval`; rows and paired statistics: :mod:`kadapt.trainer.bench_tasks_report`.
The JSON layout is documented in docs/benchmarks.md ("bench tasks").
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from kadapt.bundles import Bundle, load_bundle, utc_now
from kadapt.data.build import code_version
from kadapt.data.tasks import has_lesions, has_segmentation, load_task_info, load_task_split
from kadapt.errors import InvalidInputError
from kadapt.masks import line_budget
from kadapt.trainer.bench_methods import bundle_method
from kadapt.trainer.bench_recon import _machine
from kadapt.trainer.bench_report import json_safe
from kadapt.trainer.bench_samplers import SamplingPolicy, family_policy, sampler_policy
from kadapt.trainer.bench_tasks_dps import POINTS_NAME, dps_setup
from kadapt.trainer.bench_tasks_eval import (
    Evaluation,
    TaskRecords,
    TestVolume,
    classification_scorer,
    dps_volumes,
    evaluate_lines,
    recon_scorer,
    segmentation_scorer,
)
from kadapt.trainer.bench_tasks_report import BASELINES, done_when, summarise_tasks
from kadapt.trainer.diffusion_dps import DPSConfig
from kadapt.trainer.pattern_diffusion import (
    DiffusionRunSettings,
    load_point_scores,
    run_diffusion_pattern,
)
from kadapt.trainer.pattern_igs import IgsRunSettings, default_igs_num_acs, load_task_model, run_igs_pattern

__all__ = ["DEFAULT_ACCELERATIONS", "RESULT_KIND", "TaskBenchSettings", "run_tasks_benchmark"]

RESULT_KIND = "kadapt-bench-tasks"
RESULT_VERSION = 1
DEFAULT_ACCELERATIONS = (4.0, 8.0, 16.0)
DEFAULT_LOUPE = Path("models/loupe/1")
DEFAULT_RECON = Path("models/modl/2")
#: ``--quick``: test volumes, slices per volume, DPS slices per volume and DPS steps.
QUICK_VOLUMES, QUICK_SLICES, QUICK_DPS_SLICES, QUICK_DPS_STEPS = 2, 2, 1, 3
#: What ``kadapt bench tasks`` learns when no pattern is given: (name, task, loss).
IGS_RUNS = (("igs-seg", "segmentation", "dice"), ("igs-cls", "classification", "cross-entropy"),
            ("igs-recon", "reconstruction", "ssim"))  # fmt: skip

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TaskBenchSettings:
    """What to run. ``patterns``: IGS / diffusion ``fixed-mask`` bundles (none: learn them into ``work``,
    default ``<out>-patterns``); ``points``: a diffusion ``point-scores.npy``; ``loupe`` / ``recon``: a LOUPE
    bundle and a learned recon bundle (the defaults are skipped when absent); ``dps_slices`` per volume."""

    data: Path
    patterns: tuple[Path, ...] = ()
    points: Path | None = None
    loupe: Path | None = DEFAULT_LOUPE
    recon: Path | None = DEFAULT_RECON
    accelerations: tuple[float, ...] = DEFAULT_ACCELERATIONS
    num_acs: int | None = None
    quick: bool = False
    seed: int = 0
    dps_slices: int = 2
    dps_steps: int = 100
    threads: int | None = None
    work: Path | None = None


def _open(path: Path) -> Bundle:
    return load_bundle(path.parent.parent, path.parent.name, path.name)


def _learn_patterns(
    settings: TaskBenchSettings, work: Path, progress: Progress
) -> tuple[list[Path], Path | None]:
    """Learn one IGS bundle per task of the data and the diffusion lines and points (module docstring)."""
    info = load_task_info(settings.data)
    for folder in (work / "models", work / "runs"):  # the bench's own scratch: learned afresh each run
        shutil.rmtree(folder, ignore_errors=True)
    wanted = {"segmentation": has_segmentation(info.task), "classification": has_lesions(info.task)}
    paths: list[Path] = []
    for name, task, loss in IGS_RUNS:
        if not wanted.get(task, True):
            continue
        out = work / "models" / name / "1"
        progress(f"learning {name}")
        run_igs_pattern(
            IgsRunSettings(settings.data, task, loss, settings.accelerations, out, runs=work / "runs" / name,
                           quick=settings.quick, seed=settings.seed),
            progress,
        )  # fmt: skip
        paths.append(out)
    test = load_task_split(settings.data, "test")
    size = min(64, int(test.kspace.shape[-1]))
    score: Path | None = None
    points: Path | None = None
    for dim, name in (("1d", "diffusion-lines"), ("2d", "diffusion-points")):
        progress(f"learning {name}")
        result = run_diffusion_pattern(
            DiffusionRunSettings(settings.data, settings.accelerations, work / "models" / name / "1",
                                 size=size,
                                 dim=dim, score=score, runs=work / "runs" / name, quick=settings.quick,
                                 seed=settings.seed),
            progress,
        )  # fmt: skip
        score = result.score
        if result.bundle is not None:
            paths.append(result.bundle.path)
        points = result.artefact or points
    return paths, points


def _bundle_policy(path: Path, shape: tuple[int, int, int], num_acs: int, threads: int) -> SamplingPolicy:
    """A bundle planning as the sampler serves it for a scan whose ACS block is the larger of the bench's
    and the bundle's own (e.g. LOUPE's 8 lines, whose logits never learned those lines): the same budget,
    the bench's ACS block included."""
    served_acs = max(num_acs, _open(path).manifest.num_acs)
    policy = sampler_policy(path, shape=shape, num_acs=served_acs, threads=threads)
    policy.details["served_num_acs"] = served_acs
    return policy


def _role(bundle: Bundle) -> str:
    training = bundle.manifest.training
    method = training.get("method")
    if method == "igs":
        return f"igs-{training.get('task')}"
    if method == "diffusion":
        return "diffusion-lines"
    return str(method or "fixed-mask")


def _test_volumes(data: Path, quick: bool) -> list[TestVolume]:
    split = load_task_split(data, "test")
    volumes = []
    for index, name in enumerate(split.volume_names):
        if quick and index >= QUICK_VOLUMES:
            break
        rows = np.flatnonzero(split.volume == index)[: QUICK_SLICES if quick else None]
        volumes.append(
            TestVolume(
                name=name, index=index, kspace=split.kspace[rows], target=split.target[rows],
                segmentation=None if split.segmentation is None else split.segmentation[rows],
                lesion=None if split.lesion is None else split.lesion[rows],
            )
        )  # fmt: skip
    return volumes


def _evaluations(
    bundles: dict[str, Bundle], roles: dict[str, str], settings: TaskBenchSettings, num_acs: int, threads: int
) -> tuple[list[Evaluation], dict[str, Any], list[dict[str, Any]]]:
    evaluations: list[Evaluation] = []
    details: dict[str, Any] = {}
    skipped: list[dict[str, Any]] = []
    for task, role in (("segmentation", "igs-segmentation"), ("classification", "igs-classification")):
        source = next((name for name, r in roles.items() if r == role), None)
        path = None if source is None else bundles[source].manifest.training.get("task_model")
        if not isinstance(path, str):
            skipped.append(
                {
                    "evaluation": task,
                    "policy": None,
                    "R": None,
                    "reason": f"no {role} bundle with a task model",
                }
            )
            continue
        model, record = load_task_model(Path(path), task)
        if task == "segmentation":
            classes = int(getattr(model, "num_classes", 2))
            evaluations.append(Evaluation(task, segmentation_scorer(model, classes)))
        else:
            evaluations.append(Evaluation(task, classification_scorer(model)))
        details[task] = {
            "task_model": path,
            "from_bundle": source,
            "record": record,
            "input": "zero-filled RSS",
        }
    evaluations.append(Evaluation("recon/zero-filled", recon_scorer))
    details["recon/zero-filled"] = {"recon": "RSS of the zero-filled coil images"}
    if settings.recon is not None:
        if settings.recon.exists() or settings.recon != DEFAULT_RECON:
            method = bundle_method(settings.recon, num_acs, threads=threads)
            name = f"recon/{method.ref}"
            evaluations.append(Evaluation(name, recon_scorer, recon=method))
            details[name] = {"recon": method.ref, **method.details}
        else:
            skipped.append(
                {"evaluation": "recon", "policy": None, "R": None, "reason": f"{settings.recon} not found"}
            )
    return evaluations, details, skipped


def run_tasks_benchmark(
    settings: TaskBenchSettings, out: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the benchmark (module docstring) and return its JSON-ready result; ``out`` names the default
    work repository for learned patterns."""
    tick = progress or (lambda _message: None)
    started = time.perf_counter()
    threads = settings.threads or os.cpu_count() or 1
    if threads < 1 or settings.dps_slices < 1 or settings.dps_steps < 2:
        raise InvalidInputError(
            f"threads, dps_slices >= 1 and dps_steps >= 2 needed, got {threads}, {settings.dps_slices}, "
            f"{settings.dps_steps}"
        )
    machine = _machine()
    timings: dict[str, float] = {}
    with threadpool_limits(limits=threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            patterns, points_path = list(settings.patterns), settings.points
            if not patterns:
                work = settings.work or out.with_name(out.stem + "-patterns")
                patterns, points_path = _learn_patterns(settings, work, tick)
                timings["learn_s"] = time.perf_counter() - started
            bundles = {bundle.manifest.name: bundle for bundle in map(_open, patterns)}
            if len(bundles) != len(patterns):
                raise InvalidInputError(f"--patterns {patterns}: bundle names must differ")
            roles = {name: _role(bundle) for name, bundle in bundles.items()}
            points = load_point_scores(points_path) if points_path is not None else None
            volumes = _test_volumes(settings.data, settings.quick)
            coils, height, width = (int(s) for s in volumes[0].kspace.shape[1:])
            num_acs = settings.num_acs or default_igs_num_acs(width)
            for r in settings.accelerations:
                line_budget(width, r, num_acs)
            policies: list[SamplingPolicy] = [
                family_policy(family, num_acs=num_acs, seed=settings.seed) for family in BASELINES
            ]
            skipped: list[dict[str, Any]] = []
            loupe = settings.loupe
            if loupe is not None and (loupe.exists() or loupe != DEFAULT_LOUPE):
                policies.append(_bundle_policy(loupe, (coils, height, width), num_acs, threads))
                roles[policies[-1].name] = "loupe"
            elif loupe is not None:
                skipped.append(
                    {"evaluation": None, "policy": "loupe", "R": None, "reason": f"{loupe} not found"}
                )
            diffusion: Bundle | None = None
            for name, bundle in bundles.items():
                if roles[name] == "diffusion-lines":
                    diffusion = bundle
                    if bundle.manifest.geometry.ky != width:
                        continue  # evaluated under DPS at its own size only
                path = bundle.path
                policies.append(_bundle_policy(path, (coils, height, width), num_acs, threads))
            evaluations, details, more = _evaluations(bundles, roles, settings, num_acs, threads)
            skipped += more
            records = TaskRecords(skipped=skipped)
            begin = time.perf_counter()
            evaluate_lines(volumes, policies, evaluations, settings.accelerations, num_acs=num_acs,
                           records=records, progress=tick)  # fmt: skip
            timings["lines_s"] = time.perf_counter() - begin
            dps_steps = QUICK_DPS_STEPS if settings.quick else settings.dps_steps
            dps_patterns, dps_record, denoiser, dps_slices = dps_setup(
                settings.data, diffusion, points, volumes, steps=dps_steps, seed=settings.seed,
                take=QUICK_DPS_SLICES if settings.quick else settings.dps_slices,
                accelerations=settings.accelerations,
            )  # fmt: skip
            if dps_patterns and denoiser is not None:
                begin = time.perf_counter()
                dps_volumes(denoiser, dps_slices, dps_patterns, settings.accelerations,
                            config=DPSConfig(steps=dps_steps),
                            seed=settings.seed, records=records, progress=tick)  # fmt: skip
                timings["dps_s"] = time.perf_counter() - begin
        finally:
            torch.set_num_threads(previous)
    if any(pattern.name == POINTS_NAME for pattern in dps_patterns):
        roles[POINTS_NAME] = "diffusion-points"
    rows = summarise_tasks(records, roles)
    recon_for_igs = "recon/zero-filled"
    machine["load_average_end"] = list(os.getloadavg())
    timings["total_s"] = time.perf_counter() - started
    result = {
        "kind": RESULT_KIND,
        "version": RESULT_VERSION,
        "created": utc_now().isoformat(),
        "code_version": code_version(),
        "machine": machine,
        "data": {
            "dir": str(settings.data), "split": "test", "volumes": [v.name for v in volumes],
            "slices": sum(v.kspace.shape[0] for v in volumes),
            "geometry": {"coils": coils, "height": height, "width": width},
        },
        "num_acs": num_acs,
        "budgets": {f"{r:g}": line_budget(width, r, num_acs) for r in settings.accelerations},
        "settings": {
            "accelerations": list(settings.accelerations), "quick": settings.quick, "seed": settings.seed,
            "threads": threads, "baselines": list(BASELINES),
            "patterns": [str(p) for p in patterns],
            "points": None if points_path is None else str(points_path),
            "learned_here": not settings.patterns,
        },
        "policies": [
            {"name": p.name, "kind": p.kind, "role": roles.get(p.name, "baseline"), "ref": p.ref, **p.details}
            for p in policies
        ],
        "evaluations": details,
        "dps": dps_record,
        "timings": timings,
        "rows": rows,
        "done_when": done_when(rows, recon_for_igs),
        "skipped": records.skipped,
    }  # fmt: skip
    safe: dict[str, Any] = json_safe(result)
    return safe
