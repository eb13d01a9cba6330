"""``kadapt learn-pattern igs``: task model, IGS on the train split, validation, the ``fixed-mask`` bundle.

The run (seed 002's protocol, Alg. 1 in :mod:`kadapt.trainer.igs`):

1. the task data (:func:`kadapt.data.tasks.load_task_split`): train and val slices as
   :class:`~kadapt.trainer.igs.TaskSample` -- ``label`` the tissue class map (segmentation), the lesion
   flag (classification) or ``None`` (reconstruction);
2. the frozen task model: trained on the fully sampled train slices (:func:`train_task_model`, Adam 1e-3,
   batch 8) and saved as ``RUNS/task-model.pt`` so the task bench and later runs reuse it
   (:func:`load_task_model`), or loaded from ``--task-model``; reconstruction losses need none;
3. the reconstruction inside the loop: zero-filled RSS, or a recon bundle's TorchScript kept frozen
   (:class:`~kadapt.trainer.igs.LearnedRecon` with this run's ACS block);
4. IGS on the train split to the largest budget, :func:`validate_igs` on val (the served pattern and the
   ``centre-only`` and ``equispaced`` baselines per R), :func:`write_igs_bundle`.

``num_acs`` counts in R (architecture.md section 3), so it must leave a pick at the highest R: the default
is ``max(1, W // 32)`` (4 lines at W = 128, where R = 16 leaves 8 lines; seed 002 starts from one line).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import JsonValue
from torch import nn

from kadapt.bundles import Bundle, load_bundle
from kadapt.data.build import code_version
from kadapt.data.manifest import Split
from kadapt.data.tasks import TaskSplit, load_task_split
from kadapt.errors import GeometryMismatchError, InvalidInputError, NotFoundError
from kadapt.masks import line_budget
from kadapt.trainer.config import check_pattern_args
from kadapt.trainer.igs import (
    TASK_OF_LOSS,
    LearnedRecon,
    TaskClassifier,
    TaskSample,
    TaskSegmenter,
    learn_igs,
    make_classifier,
    make_segmenter,
    train_task_model,
    validate_igs,
    write_igs_bundle,
    zero_filled_rss,
)
from kadapt.trainer.igs.pipeline import Reconstructor
from kadapt.trainer.sampler_config import RECON_BUNDLE_KINDS, FrozenBundleRecon

__all__ = [
    "IGS_TASKS",
    "TASK_MODEL_FILE",
    "ZERO_FILLED",
    "IgsRunResult",
    "IgsRunSettings",
    "default_igs_num_acs",
    "load_recon_bundle",
    "load_task_model",
    "run_igs_pattern",
    "save_task_model",
    "task_samples",
]

IGS_TASKS = ("segmentation", "classification", "reconstruction")
ZERO_FILLED = "zero-filled"
TASK_MODEL_FILE = "task-model.pt"
#: Task-model sizes and training (full run, ``--quick``).
MODEL_PARAMS = {"chans": 16, "num_pool_layers": 3}
QUICK_MODEL_PARAMS = {"chans": 4, "num_pool_layers": 2}
TRAIN_STEPS, QUICK_TRAIN_STEPS = 400, 3
BATCH_SIZE, QUICK_BATCH_SIZE = 8, 2
#: ``--quick``: train and val slices IGS sees.
QUICK_SLICES = (4, 2)
BASELINES = ("centre-only", "equispaced")

Progress = Callable[[str], None]


def default_igs_num_acs(width: int) -> int:
    """``max(1, W // 32)``: 4 ACS lines at W = 128 leave 4 picks at R = 16 (module docstring)."""
    return max(1, width // 32)


@dataclass(frozen=True)
class IgsRunSettings:
    """One ``kadapt learn-pattern igs`` run. ``recon``: ``zero-filled`` or a recon bundle directory;
    ``task_model``: a saved task model (None: train one); ``runs`` None: ``runs/NAME/VERSION``."""

    data: Path
    task: str
    loss: str
    accelerations: tuple[float, ...]
    out: Path
    num_acs: int | None = None
    recon: str = ZERO_FILLED
    task_model: Path | None = None
    runs: Path | None = None
    quick: bool = False
    seed: int = 0
    train_steps: int | None = None

    def check(self) -> None:
        """:class:`InvalidInputError` naming the bad value (task, loss, their pairing, R, --out)."""
        if self.task not in IGS_TASKS:
            raise InvalidInputError(f"--task {self.task!r} must be one of {', '.join(IGS_TASKS)}")
        if self.loss not in TASK_OF_LOSS:
            raise InvalidInputError(f"--loss {self.loss!r} must be one of {', '.join(TASK_OF_LOSS)}")
        if TASK_OF_LOSS[self.loss] != self.task:
            raise InvalidInputError(
                f"--loss {self.loss!r} is a {TASK_OF_LOSS[self.loss]} loss, not one for --task {self.task!r}"
            )
        if self.task_model is not None and self.task == "reconstruction":
            raise InvalidInputError(f"--task-model {self.task_model}: the reconstruction task uses none")
        check_pattern_args(self.accelerations, self.num_acs, self.out)

    @property
    def runs_dir(self) -> Path:
        return self.runs or Path("runs") / self.out.parent.name / self.out.name


@dataclass(frozen=True)
class IgsRunResult:
    bundle: Bundle
    task_model: Path | None
    validation: dict[str, dict[str, float]]
    seconds: float


def task_samples(split: TaskSplit, task: str, limit: int | None = None) -> list[TaskSample]:
    """The split's slices as IGS samples of ``task`` (the first ``limit`` when given)."""
    count = len(split) if limit is None else min(limit, len(split))
    if task == "segmentation" and split.segmentation is None:
        raise InvalidInputError(f"the task data ({split.info.task}) has no segmentation labels")
    if task == "classification" and split.lesion is None:
        raise InvalidInputError(f"the task data ({split.info.task}) has no lesion labels")
    samples = []
    for index in range(count):
        label: Any = None
        if task == "segmentation" and split.segmentation is not None:
            label = split.segmentation[index].astype(np.int64)
        elif task == "classification" and split.lesion is not None:
            label = int(split.lesion[index])
        samples.append(TaskSample(split.kspace[index], split.target[index], label))
    return samples


def save_task_model(model: nn.Module, path: Path, record: dict[str, Any]) -> None:
    """Write a task model (kind, classes, constructor parameters, weights, ``record``) to ``path``."""
    if isinstance(model, TaskSegmenter):
        kind = "segmenter"
    elif isinstance(model, TaskClassifier):
        kind = "classifier"
    else:
        raise InvalidInputError(f"cannot save a {type(model).__name__} as a task model")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"kind": kind, "num_classes": model.num_classes, "record": record, "state": model.state_dict()}
    torch.save(payload, path)


def load_task_model(path: Path, task: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A task model saved by :func:`save_task_model`, in eval mode, and its record. :class:`NotFoundError`
    for a missing file, :class:`InvalidInputError` for another file or a model of another ``task``."""
    if not Path(path).is_file():
        raise NotFoundError(f"--task-model {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle / runtime errors of many kinds for a foreign file
        raise InvalidInputError(f"--task-model {path} is not a saved task model: {error}") from error
    if not isinstance(payload, dict) or payload.get("kind") not in ("segmenter", "classifier"):
        raise InvalidInputError(f"--task-model {path} is not a saved task model")
    kind, record = payload["kind"], dict(payload.get("record") or {})
    wanted = {"segmentation": "segmenter", "classification": "classifier"}.get(task or "")
    if task is not None and kind != wanted:
        raise InvalidInputError(f"--task-model {path} is a {kind}, the {task} task needs a {wanted}")
    params = dict(record.get("params") or MODEL_PARAMS)
    factory = make_segmenter if kind == "segmenter" else make_classifier
    model = factory(int(payload["num_classes"]), seed=0, **params)
    model.load_state_dict(payload["state"])
    return model.eval(), record


def load_recon_bundle(ref: str, geometry: tuple[int, int, int]) -> tuple[nn.Module, dict[str, JsonValue]]:
    """A recon bundle's TorchScript, frozen and in eval mode, and its summary; :class:`InvalidInputError`
    / :class:`GeometryMismatchError` naming ``ref`` for another kind or ``(C, H, W)``."""
    path = Path(ref)
    bundle = load_bundle(path.parent.parent, path.parent.name, path.name)
    manifest = bundle.manifest
    if manifest.kind not in RECON_BUNDLE_KINDS:
        raise InvalidInputError(f"--recon {ref}: a {manifest.kind!r} bundle, not one of {RECON_BUNDLE_KINDS}")
    given = (manifest.geometry.coils, manifest.geometry.kx, manifest.geometry.ky)
    if given != geometry:
        raise GeometryMismatchError(f"--recon {ref} is for (C, H, W) = {given}, the data is {geometry}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        scripted = torch.jit.load(str(bundle.file("model.pt")), map_location="cpu")  # type: ignore[no-untyped-call]
    summary: dict[str, JsonValue] = {
        "name": manifest.ref,
        "kind": manifest.kind,
        "num_acs_trained": manifest.num_acs,
    }
    return FrozenBundleRecon(scripted).eval(), summary


def _resolve_num_acs(settings: IgsRunSettings, width: int) -> int:
    num_acs = settings.num_acs or default_igs_num_acs(width)
    for acceleration in settings.accelerations:
        budget = round(width / acceleration)
        if num_acs >= budget:
            raise InvalidInputError(
                f"--num-acs {num_acs} leaves no line to pick at R {acceleration:g} (W = {width}: "
                f"{budget} lines in all); use --num-acs < {budget}"
            )
    return num_acs


def _task_model(
    settings: IgsRunSettings, train: Sequence[TaskSample], classes: int, progress: Progress
) -> tuple[nn.Module | None, Path | None, dict[str, Any]]:
    if settings.task == "reconstruction":
        return None, None, {}
    if settings.task_model is not None:
        loaded, record = load_task_model(settings.task_model, settings.task)
        return loaded, settings.task_model.resolve(), {**record, "trained_here": False}
    params = QUICK_MODEL_PARAMS if settings.quick else MODEL_PARAMS
    steps = settings.train_steps or (QUICK_TRAIN_STEPS if settings.quick else TRAIN_STEPS)
    if settings.task == "segmentation":
        model: nn.Module = make_segmenter(classes, seed=settings.seed, **params)
    else:
        model = make_classifier(2, seed=settings.seed, **params)
    progress(f"training the {settings.task} model ({steps} steps on {len(train)} fully sampled slices)")
    generator = torch.Generator().manual_seed(settings.seed)
    batch = QUICK_BATCH_SIZE if settings.quick else BATCH_SIZE
    losses = train_task_model(
        model, list(train), settings.loss, steps=steps, generator=generator, batch_size=batch
    )
    path = settings.runs_dir / TASK_MODEL_FILE
    record = {
        "task": settings.task,
        "loss": settings.loss,
        "params": params,
        "steps": steps,
        "batch_size": batch,
        "data": str(settings.data),
        "train_slices": len(train),
        "seed": settings.seed,
        "final_losses": [float(v) for v in losses[-10:]],
        "input": "zero-filled RSS of the fully sampled k-space",
    }
    save_task_model(model, path, record)
    return model, path.resolve(), {**record, "trained_here": True}


def run_igs_pattern(settings: IgsRunSettings, progress: Progress | None = None) -> IgsRunResult:
    """Run ``kadapt learn-pattern igs`` (module docstring) and return the written bundle."""
    tick = progress or (lambda _message: None)
    settings.check()
    started = time.perf_counter()
    splits: dict[Split, TaskSplit] = {
        split: load_task_split(settings.data, split) for split in ("train", "val")
    }
    train_limit, val_limit = QUICK_SLICES if settings.quick else (None, None)
    train = task_samples(splits["train"], settings.task, train_limit)
    val = task_samples(splits["val"], settings.task, val_limit)
    coils, height, width = (int(size) for size in train[0].kspace.shape)
    num_acs = _resolve_num_acs(settings, width)
    for acceleration in settings.accelerations:
        line_budget(width, acceleration, num_acs)  # InvalidAccelerationError names a bad R
    recon: Reconstructor = zero_filled_rss
    recon_record: JsonValue = "zero-filled-rss"
    if settings.recon != ZERO_FILLED:
        model, summary = load_recon_bundle(settings.recon, (coils, height, width))
        recon, recon_record = LearnedRecon(model, num_acs), summary
    classes = len(splits["train"].info.label_names)
    task_model, model_path, model_record = _task_model(settings, train, classes, tick)
    scores, history = learn_igs(
        train, settings.loss, accelerations=settings.accelerations, num_acs=num_acs,
        task_model=task_model, recon=recon, batch_size=QUICK_BATCH_SIZE if settings.quick else BATCH_SIZE,
        progress=tick,
    )  # fmt: skip
    tick(f"validating on {len(val)} val slices")
    validation = validate_igs(
        val, scores, settings.loss, accelerations=settings.accelerations, num_acs=num_acs,
        task_model=task_model, recon=recon, baselines=BASELINES,
        rng=np.random.default_rng(settings.seed),
    )  # fmt: skip
    data: dict[str, JsonValue] = {
        "dir": str(settings.data),
        "task_data": splits["train"].info.task,
        "label_names": list(splits["train"].info.label_names),
        "train_slices": len(train),
        "val_slices": len(val),
        "geometry": [coils, height, width],
        "quick": settings.quick,
        "seed": settings.seed,
    }
    bundle = write_igs_bundle(
        scores, history, settings.out.parent.parent, name=settings.out.parent.name,
        version=settings.out.name, accelerations=settings.accelerations,
        recon=settings.recon if settings.recon == ZERO_FILLED else str(Path(settings.recon).resolve()),
        data={**data, "recon_detail": recon_record, "task_model_record": _json(model_record)},
        validation={key: dict(values) for key, values in validation.items()},
        code_version=code_version(),
        task_model=None if model_path is None else str(model_path),
    )  # fmt: skip
    return IgsRunResult(bundle, model_path, validation, time.perf_counter() - started)


def _json(record: dict[str, Any]) -> JsonValue:
    return {
        key: value
        for key, value in record.items()
        if isinstance(value, str | int | float | bool | list | dict)
    }
