"""Training configuration: a YAML file beside each model kind (or any YAML / TOML file), overridden by flags.

``configs/<kind>.yaml`` holds ``model`` (keyword arguments of the model class), ``quick_model`` (merged
over ``model`` by ``--quick``), ``smp`` (keyword arguments of
:class:`kadapt.nn.smp.SensitivityMapPredictor`, used with ``--smp``) and ``quick_smp`` (merged over
``smp`` by ``--quick``), ``optimiser`` (Adam ``lr``, ``weight_decay``, ``schedule`` ``constant`` |
``cosine``), ``loss`` (a :class:`kadapt.nn.losses.DualDomainLoss` ``preset`` plus ``weights``
overrides) and ``training`` (``epochs``, ``steps_per_epoch``, ``batch_size``, optional ``num_acs``,
``val_slices``, ``policies``). ``--config FILE`` reads ``.yaml`` / ``.yml`` (PyYAML) or ``.toml``
(``tomllib``) with the same schema (TOML tables ``[model]``, ``[loss.weights]``, ...). Flags given on the
command line win over the file; ``--quick`` wins over the file's training section.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import yaml
from torch import nn

from kadapt.bundles.manifest import BUNDLE_NAME_PATTERN, BUNDLE_VERSION_PATTERN
from kadapt.errors import InvalidAccelerationError, InvalidInputError, NotFoundError
from kadapt.masks import get_family, mask_families
from kadapt.nn.losses import DualDomainLoss
from kadapt.nn.modl import MoDL
from kadapt.nn.smp import SensitivityMapPredictor, SensitivityRefinedRecon
from kadapt.nn.unet import UNetRecon
from kadapt.nn.vsharp import VSharp2D
from kadapt.trainer.policy_masks import check_policy_paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (pyproject's tomli marker)
    import tomli as tomllib

ModelKind = Literal["unet", "modl", "vsharp"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
CONFIG_DIR = Path(__file__).parent / "configs"
#: Config file formats by suffix; anything else is refused (InvalidInputError naming the suffix).
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")
LOSS_PRESETS = ("seed004", "seed001")
LR_SCHEDULES = ("constant", "cosine")
LrSchedule = Literal["constant", "cosine"]
# The validation metric whose mean over every (mask, R) selects the exported epoch.
SelectionMetric = Literal["ssim", "psnr"]
SELECTION_METRICS: tuple[str, ...] = get_args(SelectionMetric)
LOSS_WEIGHT_NAMES = ("ssim_weight", "l1_weight", "hfen_weight", "nrmse_weight", "kspace_weight")
#: ``--quick``: a handful of steps and a few validation slices (used by the tests).
QUICK_TRAINING: dict[str, int] = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 1, "val_slices": 2}
_MODEL_CLASSES: dict[str, type[nn.Module]] = {"unet": UNetRecon, "modl": MoDL, "vsharp": VSharp2D}


class BundleOut:
    """The ``out`` path ``REPOSITORY/NAME/VERSION`` of a training run's bundle, split into its parts."""

    out: Path

    @property
    def repository(self) -> Path:
        """The model repository the bundle goes to (``out``'s grandparent)."""
        return self.out.parent.parent

    @property
    def bundle_name(self) -> str:
        return self.out.parent.name

    @property
    def bundle_version(self) -> str:
        return self.out.name


@dataclass(frozen=True)
class TrainConfig(BundleOut):
    """Everything one ``kadapt train recon`` run needs, validated.

    ``out`` is ``REPOSITORY/NAME/VERSION`` of the bundle to write; ``runs`` holds checkpoints and
    TensorBoard logs; ``num_acs`` ``None`` means ``W // 16`` of the data (8 at W = 128). ``policies`` are
    sampler bundle directories (``mnet`` / ``fixed-mask``) whose served plans are mask sources beside the
    ``masks`` families (:mod:`kadapt.trainer.policy_masks`). ``smp`` wraps the
    model in :class:`SensitivityRefinedRecon` built from ``smp_params`` (the config's ``smp`` section,
    ``quick_smp`` merged over it by ``--quick``; empty when ``smp`` is off).
    """

    model: ModelKind
    data: Path
    accelerations: tuple[float, ...]
    masks: tuple[str, ...]
    out: Path
    runs: Path
    model_params: dict[str, Any]
    lr: float
    weight_decay: float
    lr_schedule: LrSchedule
    loss_preset: str
    loss_weights: dict[str, float]
    epochs: int
    steps_per_epoch: int
    batch_size: int
    num_acs: int | None = None
    val_slices: int | None = None
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    init_from: Path | None = None
    augment: bool = False
    quick: bool = False
    config_file: Path = field(default=CONFIG_DIR / "unet.yaml")
    smp: bool = False
    smp_params: dict[str, Any] = field(default_factory=dict)
    policies: tuple[Path, ...] = ()
    select: SelectionMetric = "ssim"


def read_config_document(path: Path) -> dict[str, Any]:
    """The mapping in a ``.yaml`` / ``.yml`` (PyYAML ``safe_load``) or ``.toml`` (``tomllib``) config file.

    Raises :class:`NotFoundError` (no such file) and :class:`InvalidInputError` (another suffix, a parse
    error, or a document that is not a mapping), each naming the file.
    """
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise InvalidInputError(
            f"config {path}: unknown extension {path.suffix!r}; use one of {list(CONFIG_SUFFIXES)}"
        )
    if not path.is_file():
        raise NotFoundError(f"no trainer config file at {path}")
    text = path.read_text(encoding="utf-8")
    loaded: object
    if suffix == ".toml":
        try:
            loaded = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise InvalidInputError(f"config {path} is not valid TOML: {error}") from error
    else:
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise InvalidInputError(f"config {path} is not valid YAML: {error}") from error
    if not isinstance(loaded, dict):
        raise InvalidInputError(f"config {path} must be a mapping, got {type(loaded).__name__}")
    return cast(dict[str, Any], loaded)


def config_section(document: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    """A copy of the mapping ``name`` of a config document (``{}`` when absent); InvalidInputError naming
    the file when it is not a mapping."""
    value = document.get(name) or {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"config {path}: section {name!r} must be a mapping, got {value!r}")
    return dict(cast(dict[str, Any], value))


def _positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise InvalidInputError(f"{name} must be > 0, got {value}")


def check_bundle_out(out: Path) -> None:
    """``--out`` must be REPO/NAME/VERSION: NAME and VERSION become the manifest's name and version."""
    name, version = out.parent.name, out.name
    if not re.match(BUNDLE_NAME_PATTERN, name) or not re.match(BUNDLE_VERSION_PATTERN, version):
        raise InvalidInputError(
            f"--out {out} must be REPOSITORY/NAME/VERSION with a lowercase NAME ({BUNDLE_NAME_PATTERN}) and "
            f"a VERSION matching {BUNDLE_VERSION_PATTERN}; got name {name!r}, version {version!r}"
        )


def check_pattern_args(accelerations: tuple[float, ...], num_acs: int | None, out: Path) -> None:
    """The arguments every ``kadapt learn-pattern`` method shares: ``--R`` (each > 1), ``--num-acs``
    (>= 1 when given) and ``--out`` (REPO/NAME/VERSION, new, and not named like a mask family: the
    sampler would serve the family instead). :class:`InvalidInputError` naming the value."""
    if not accelerations or any(not r > 1.0 for r in accelerations):
        raise InvalidInputError(f"--R needs accelerations > 1, got {list(accelerations)}")
    if num_acs is not None and num_acs < 1:
        raise InvalidInputError(f"--num-acs {num_acs} must be >= 1")
    check_bundle_out(out)
    if out.exists():
        raise InvalidInputError(f"--out {out} exists; bundle versions are immutable, pick a new VERSION")
    if out.parent.name in mask_families():
        raise InvalidInputError(
            f"--out name {out.parent.name!r} is a mask family's; the sampler would refuse it"
        )


def _check_masks(masks: tuple[str, ...]) -> None:
    for family in masks:
        spec = get_family(family)  # UnknownMaskFamilyError names it
        if spec.dims != "1d":
            raise InvalidInputError(
                f"mask family {family!r} is {spec.dims}; the recon bundles take 1D line masks (1, 1, 1, W, 1)"
            )


def make_config(
    model: str,
    data: Path,
    accelerations: tuple[float, ...],
    masks: tuple[str, ...],
    out: Path,
    *,
    runs: Path | None = None,
    quick: bool = False,
    config_file: Path | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    num_acs: int | None = None,
    device: str = "cpu",
    resume: bool = False,
    init_from: Path | None = None,
    seed: int = 0,
    smp: bool = False,
    policies: tuple[Path, ...] | None = None,
    select: str | None = None,
) -> TrainConfig:
    """Validate the inputs, read the YAML / TOML config (default ``configs/<model>.yaml``), apply overrides.

    ``policies`` (``--policy``, any number) replace the config's ``training.policies`` list when given.
    ``select`` (``--select``) overrides ``training.select``: the validation metric whose mean over every
    (mask, R) picks the exported epoch, ``ssim`` (default) or ``psnr``.

    Raises :class:`InvalidInputError` (unknown model, bad sizes, bad ``out``, 2D mask family, a policy
    bundle of another kind or a duplicate name), :class:`InvalidAccelerationError` (an R <= 1, an R a
    policy was not trained for), :class:`NotFoundError` (missing data dir, config or policy bundle).
    """
    if model not in MODEL_KINDS:
        raise InvalidInputError(f"unknown model {model!r}; choose one of {list(MODEL_KINDS)}")
    if not accelerations:
        raise InvalidInputError("at least one acceleration R is needed (--R)")
    bad = [r for r in accelerations if not r > 1.0]
    if bad:
        raise InvalidAccelerationError(f"accelerations must be > 1, got R = {bad}")
    data = Path(data)
    if not data.is_dir():
        raise NotFoundError(f"data directory {data} does not exist")
    _check_masks(masks)
    out = Path(out)
    check_bundle_out(out)
    if device not in ("cpu", "cuda"):
        raise InvalidInputError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if seed < 0:
        raise InvalidInputError(f"seed must be >= 0, got {seed}")
    path = Path(config_file) if config_file is not None else CONFIG_DIR / f"{model}.yaml"
    document = read_config_document(path)
    params = dict(config_section(document, "model", path))
    if quick:
        params.update(config_section(document, "quick_model", path))
    smp_params: dict[str, Any] = {}
    if smp:
        smp_params = dict(config_section(document, "smp", path))
        if quick:
            smp_params.update(config_section(document, "quick_smp", path))
    optimiser = config_section(document, "optimiser", path)
    loss = config_section(document, "loss", path)
    training = dict(config_section(document, "training", path))
    if policies is None:
        policies = _policy_list(path, training.get("policies"))
    if not masks and not policies:
        raise InvalidInputError("at least one mask family (--masks) or sampler bundle (--policy) is needed")
    check_policy_paths(policies, accelerations, masks)
    if quick:
        training.update(QUICK_TRAINING)
    overrides = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size}
    training.update({key: value for key, value in overrides.items() if value is not None})
    selection = str(select if select is not None else training.get("select", "ssim"))
    if selection not in SELECTION_METRICS:
        raise InvalidInputError(
            f"config {path}: unknown selection metric {selection!r}; choose {list(SELECTION_METRICS)}"
        )
    preset = str(loss.get("preset", "seed004"))
    if preset not in LOSS_PRESETS:
        raise InvalidInputError(f"config {path}: unknown loss preset {preset!r}; choose {list(LOSS_PRESETS)}")
    weights = {str(key): float(value) for key, value in (loss.get("weights") or {}).items()}
    unknown = sorted(set(weights) - set(LOSS_WEIGHT_NAMES))
    if unknown:
        raise InvalidInputError(
            f"config {path}: unknown loss weights {unknown}; known {list(LOSS_WEIGHT_NAMES)}"
        )
    config = TrainConfig(
        model=cast(ModelKind, model),
        data=data,
        accelerations=tuple(float(r) for r in accelerations),
        masks=tuple(masks),
        out=out,
        runs=Path(runs) if runs is not None else Path("runs") / out.parent.name / out.name,
        model_params=params,
        lr=float(lr if lr is not None else optimiser.get("lr", 1e-3)),
        weight_decay=float(optimiser.get("weight_decay", 0.0)),
        lr_schedule=_schedule(path, optimiser.get("schedule", "constant")),
        loss_preset=preset,
        loss_weights=weights,
        epochs=int(training.get("epochs", 1)),
        steps_per_epoch=int(training.get("steps_per_epoch", 1)),
        batch_size=int(training.get("batch_size", 1)),
        num_acs=num_acs if num_acs is not None else training.get("num_acs"),
        val_slices=training.get("val_slices"),
        device=device,
        seed=seed,
        resume=resume,
        init_from=init_from,
        augment=_flag(path, "training.augment", training.get("augment", False)),
        quick=quick,
        config_file=path,
        smp=smp,
        smp_params=smp_params,
        policies=tuple(Path(policy) for policy in policies),
        select=cast(SelectionMetric, selection),
    )
    for name in ("epochs", "steps_per_epoch", "batch_size", "lr"):
        _positive(name, getattr(config, name))
    if config.num_acs is not None:
        _positive("num_acs", config.num_acs)
    if config.val_slices is not None:
        _positive("val_slices", config.val_slices)
    # Fail now, not after loading the data.
    build_model(config.model, config.model_params, config.smp_params if config.smp else None)
    return config


def build_model(
    kind: ModelKind, params: dict[str, Any], smp_params: dict[str, Any] | None = None
) -> nn.Module:
    """The reconstruction model of ``kind`` built from the config's keyword ``params``; with ``smp_params``
    (``{}`` = the SMP's defaults) wrapped in :class:`SensitivityRefinedRecon`.

    Every result follows :class:`kadapt.nn.modl.ReconModel`: ``(B, C, H, W, 2), (B, 1, 1, W, 1),
    (B, C, H, W, 2) -> (B, H, W, 2)``.
    """
    try:
        recon = _MODEL_CLASSES[kind](**params)
    except TypeError as error:
        raise InvalidInputError(f"model {kind!r}: bad hyper-parameters {params}: {error}") from error
    if smp_params is None:
        return recon
    try:
        smp = SensitivityMapPredictor(**smp_params)
    except TypeError as error:
        raise InvalidInputError(f"smp: bad hyper-parameters {smp_params}: {error}") from error
    return SensitivityRefinedRecon(recon, smp)


def build_loss(preset: str, weights: dict[str, float]) -> DualDomainLoss:
    """The :class:`DualDomainLoss` of ``preset`` (``seed004`` | ``seed001``) with ``weights`` overridden."""
    base = DualDomainLoss.seed004() if preset == "seed004" else DualDomainLoss.seed001()
    merged = {f"{name}_weight": value for name, value in base.weights.items()}
    merged["kspace_weight"] = merged.pop("kspace_nmae_weight")
    merged.update(weights)
    return DualDomainLoss(**merged)


def _policy_list(path: Path, value: object) -> tuple[Path, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise InvalidInputError(
            f"config {path}: training.policies must be a list of bundle paths, got {value!r}"
        )
    return tuple(Path(entry) for entry in value)


def _schedule(path: Path, value: object) -> LrSchedule:
    if value not in LR_SCHEDULES:
        raise InvalidInputError(
            f"config {path}: unknown optimiser.schedule {value!r}; choose {list(LR_SCHEDULES)}"
        )
    return cast(LrSchedule, value)


def _flag(path: Path, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"config {path}: {name} must be true or false, got {value!r}")
    return value


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based): constant, or cosine-annealed from ``lr``
    to ``lr / 100`` over ``epochs * steps_per_epoch`` steps. A pure function of the step, so a resumed
    run continues on the same curve."""
    if config.lr_schedule == "constant":
        return config.lr
    total = max(1, config.epochs * config.steps_per_epoch)
    floor = config.lr / 100.0
    progress = min(1.0, step / total)
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * progress))
