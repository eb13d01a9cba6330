"""``kadapt train ads`` configuration: ``configs/ads.yaml`` (or ``--config FILE``), overridden by flags.

Sections (the loading style of :mod:`kadapt.trainer.config`): ``model`` (keyword arguments of
:class:`kadapt.nn.vsharp_dynamic.VSharpDynamic`), ``smp`` (of
:class:`kadapt.nn.smp.SensitivityMapPredictor`), ``sampler`` (of :class:`kadapt.nn.ads.ADSSampler`,
except the geometry / cascades / pattern / dim the flags give), ``opt`` (the learned non-adaptive
pattern: ``slope``, ``threshold_slope``), ``optimiser`` (Adam ``lr``), ``loss`` (``weights`` of
:class:`kadapt.nn.losses.DualDomainLoss`, seed 004 eq. 5 by default) and ``training`` (``steps``,
``steps_per_epoch``, ``batch_size``, ``val_slices``); ``quick_*`` sections are merged over theirs by
``--quick``.

The sampler spec (``--sampler``) is ``ads`` (the adaptive cascade, seed 004 section 2.3), ``opt`` (a
LOUPE-style learned pattern ``(T, W)``, seed 004 appendix B's "Opt" baseline) or comma-separated mask
family names (1D or kt) that the reconstruction trains on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

from kadapt.errors import InvalidAccelerationError, InvalidInputError, NotFoundError
from kadapt.masks import get_family
from kadapt.trainer.config import (
    CONFIG_DIR,
    LOSS_WEIGHT_NAMES,
    BundleOut,
    check_bundle_out,
    config_section,
    read_config_document,
)

Pattern = Literal["frame-specific", "unified"]
PATTERNS: tuple[str, ...] = get_args(Pattern)
#: Learned samplers; anything else in ``--sampler`` is a list of mask families.
LEARNED_SAMPLERS = ("ads", "opt")
#: The ADS bundle sits beside the recon bundle: ``<repo>/<name><SAMPLER_SUFFIX>/<version>``.
SAMPLER_SUFFIX = "-sampler"
QUICK_TRAINING: dict[str, int] = {"steps": 2, "steps_per_epoch": 1, "batch_size": 1, "val_slices": 1}
_TRAINING_KEYS = ("steps", "steps_per_epoch", "batch_size")


@dataclass(frozen=True)
class AdsTrainConfig(BundleOut):
    """One validated ``kadapt train ads`` run.

    ``sampler`` is ``"ads"``, ``"opt"`` or the mask ``families`` joined by commas; ``out`` the dynamic
    vSHARP bundle ``REPOSITORY/NAME/VERSION`` (for ``ads`` the cascade bundle goes to
    :attr:`sampler_out`); ``steps`` optimiser steps in total, run in epochs of ``steps_per_epoch`` (the
    last one shorter), each followed by a validation; ``num_acs`` ``None`` = the dataset manifest's.
    """

    data: Path
    sampler: str
    families: tuple[str, ...]
    out: Path
    runs: Path
    accelerations: tuple[float, ...]
    pattern: Pattern
    dim: Literal["1d"]
    cascades: int
    init: str
    model_params: dict[str, Any]
    smp_params: dict[str, Any]
    sampler_params: dict[str, Any]
    opt_params: dict[str, Any]
    lr: float
    loss_weights: dict[str, float]
    steps: int
    steps_per_epoch: int
    batch_size: int
    val_slices: int | None = None
    num_acs: int | None = None
    init_from: Path | None = None
    resume: bool = False
    device: str = "cpu"
    seed: int = 0
    quick: bool = False
    config_file: Path = field(default=CONFIG_DIR / "ads.yaml")

    @property
    def epochs(self) -> int:
        """Validation rounds: ``ceil(steps / steps_per_epoch)``."""
        return max(1, math.ceil(self.steps / self.steps_per_epoch))

    @property
    def learned(self) -> bool:
        """Whether a sampler (``ads`` / ``opt``) is trained alongside the reconstruction."""
        return self.sampler in LEARNED_SAMPLERS

    @property
    def sampler_out(self) -> Path:
        """Where the ``ads`` cascade bundle goes: ``<repo>/<name>-sampler/<version>``."""
        return self.repository / f"{self.bundle_name}{SAMPLER_SUFFIX}" / self.bundle_version


def parse_sampler(spec: str) -> tuple[str, tuple[str, ...]]:
    """``(sampler, families)`` of a ``--sampler`` spec: ``("ads", ())``, ``("opt", ())`` or the families
    of a comma list (each a registered 1D or kt family; 2D point families are refused: the dynamic
    bundle takes line masks ``(1, T, W)``)."""
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    if not names:
        raise InvalidInputError("--sampler needs 'ads', 'opt' or mask family names")
    if len(names) == 1 and names[0] in LEARNED_SAMPLERS:
        return names[0], ()
    for name in names:
        if name in LEARNED_SAMPLERS:
            raise InvalidInputError(f"--sampler {spec!r}: {name!r} cannot be mixed with mask families")
        family = get_family(name)  # UnknownMaskFamilyError names it
        if family.dims not in ("1d", "kt"):
            raise InvalidInputError(
                f"mask family {name!r} is {family.dims}; dynamic training takes 1D or kt line masks"
            )
    if len(set(names)) != len(names):
        raise InvalidInputError(f"--sampler {spec!r} names a family twice")
    return ",".join(names), names


def make_ads_config(
    data: Path,
    sampler: str,
    out: Path,
    *,
    accelerations: tuple[float, ...] = (4.0, 6.0, 8.0),
    pattern: str = "frame-specific",
    dim: str = "1d",
    cascades: int = 2,
    init: str = "acs",
    init_from: Path | None = None,
    steps: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    num_acs: int | None = None,
    runs: Path | None = None,
    resume: bool = False,
    config_file: Path | None = None,
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
) -> AdsTrainConfig:
    """Validate the flags, read the config file (default ``configs/ads.yaml``) and apply the overrides.

    Raises :class:`InvalidInputError` (bad spec, pattern, dim, init, sizes or ``out``),
    :class:`InvalidAccelerationError` (an R <= 1) and :class:`NotFoundError` (data, config, init-from).
    """
    name, families = parse_sampler(sampler)
    if not accelerations or any(not r > 1.0 for r in accelerations):
        raise InvalidAccelerationError(f"accelerations must be > 1, got R = {list(accelerations)}")
    if pattern not in PATTERNS:
        raise InvalidInputError(f"unknown --pattern {pattern!r}; choose {list(PATTERNS)}")
    if dim != "1d":
        raise InvalidInputError(f"--dim {dim!r}: only 1d line masks are trained (and served) so far")
    if init != "acs":
        raise InvalidInputError(f"--init {init!r}: only 'acs' is supported (serving refuses the others)")
    if cascades < 1:
        raise InvalidInputError(f"--cascades must be >= 1, got {cascades}")
    if not Path(data).is_dir():
        raise NotFoundError(f"data directory {data} does not exist")
    if init_from is not None and not Path(init_from).is_file():
        raise NotFoundError(f"--init-from checkpoint {init_from} does not exist")
    if device not in ("cpu", "cuda"):
        raise InvalidInputError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if seed < 0:
        raise InvalidInputError(f"seed must be >= 0, got {seed}")
    out = Path(out)
    check_bundle_out(out)
    path = Path(config_file) if config_file is not None else CONFIG_DIR / "ads.yaml"
    document = read_config_document(path)

    def section(key: str) -> dict[str, Any]:
        merged = config_section(document, key, path)
        if quick:
            merged.update(config_section(document, f"quick_{key}", path))
        return merged

    training = section("training")
    if quick:
        training.update(QUICK_TRAINING)
    given = {"steps": steps, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size}
    training.update({key: value for key, value in given.items() if value is not None})
    for key in _TRAINING_KEYS:
        if not int(training.get(key, 1)) > 0:
            raise InvalidInputError(f"{key} must be > 0, got {training.get(key)}")
    weights = {
        str(k): float(v) for k, v in (config_section(document, "loss", path).get("weights") or {}).items()
    }
    unknown = sorted(set(weights) - set(LOSS_WEIGHT_NAMES))
    if unknown:
        raise InvalidInputError(
            f"config {path}: unknown loss weights {unknown}; known {list(LOSS_WEIGHT_NAMES)}"
        )
    rate = float(lr if lr is not None else config_section(document, "optimiser", path).get("lr", 1e-3))
    if not rate > 0:
        raise InvalidInputError(f"lr must be > 0, got {rate}")
    if num_acs is not None and num_acs < 1:
        raise InvalidInputError(f"--num-acs must be >= 1, got {num_acs}")
    val_slices = training.get("val_slices")
    return AdsTrainConfig(
        data=Path(data),
        sampler=name,
        families=families,
        out=out,
        runs=Path(runs) if runs is not None else Path("runs") / out.parent.name / out.name,
        accelerations=tuple(float(r) for r in accelerations),
        pattern=cast(Pattern, pattern),
        dim="1d",
        cascades=int(cascades),
        init=init,
        model_params=section("model"),
        smp_params=section("smp"),
        sampler_params=section("sampler"),
        opt_params=section("opt"),
        lr=rate,
        loss_weights=weights,
        steps=int(training.get("steps", 1)),
        steps_per_epoch=int(training.get("steps_per_epoch", 1)),
        batch_size=int(training.get("batch_size", 1)),
        val_slices=int(val_slices) if val_slices is not None else None,
        num_acs=num_acs,
        init_from=Path(init_from) if init_from is not None else None,
        resume=resume,
        device=device,
        seed=seed,
        quick=quick,
        config_file=path,
    )
