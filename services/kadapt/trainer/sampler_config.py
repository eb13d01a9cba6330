"""``kadapt train sampler`` configuration (``configs/mnet.yaml``, ``configs/loupe.yaml``, flags), its recon.

Sections of ``configs/mnet.yaml``: ``model`` (keyword arguments of :class:`kadapt.nn.mnet.MNet`),
``recon`` (of the co-trained :class:`kadapt.nn.unet.UNetRecon`), ``optimiser`` (``sampler_lr``,
``recon_lr``), ``loss`` (``recon_weight``: lambda of seed 001 eq. 2), ``training`` (``epochs``,
``steps_per_epoch``, ``batch_size``, ``sampler_updates``, ``warmup_steps``, optional ``num_acs``,
``val_slices``) and ``labels`` (keyword arguments of the label generators, used on a cache miss);
``quick_model`` / ``quick_recon`` / ``quick_labels`` are merged over their section by ``--quick``.
``configs/loupe.yaml`` has ``loupe`` (``slope``, ``binariser``, ``threshold_slope``) instead of ``model``
and ``labels``. ``energy-density`` learns nothing and reads no file. ``--config FILE`` takes another
``.yaml`` / ``.yml`` / ``.toml`` file with the same schema.

:func:`load_recon` builds the reconstruction ``--recon`` names: the co-trained U-Net, or a recon bundle's
TorchScript kept frozen.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import torch
from pydantic import JsonValue
from torch import Tensor, nn

from kadapt.bundles import load_bundle
from kadapt.errors import GeometryMismatchError, InvalidAccelerationError, InvalidInputError, NotFoundError
from kadapt.masks import mask_families
from kadapt.nn.physics import sense_adjoint
from kadapt.nn.unet import UNetRecon
from kadapt.trainer.config import (
    CONFIG_DIR,
    BundleOut,
    check_bundle_out,
    config_section,
    read_config_document,
)

SamplerMethod = Literal["mnet", "loupe", "energy-density"]
SAMPLER_METHODS: tuple[str, ...] = get_args(SamplerMethod)
LabelMethod = Literal["mask-backward", "icd"]
LABEL_METHODS: tuple[str, ...] = get_args(LabelMethod)
LoupeBinariser = Literal["bernoulli", "topk"]
LOUPE_BINARISERS: tuple[str, ...] = get_args(LoupeBinariser)
#: ``--recon unet``: a small U-Net co-trained with the sampler (seed 001 eq. 3, seed 000 Alg. 2).
CO_TRAINED_RECON = "unet"
#: ``--quick``: a handful of steps on a few validation slices (the tests).
QUICK_TRAINING: dict[str, int] = {
    "epochs": 1,
    "steps_per_epoch": 2,
    "batch_size": 2,
    "sampler_updates": 1,
    "warmup_steps": 1,
    "val_slices": 2,
}
RECON_BUNDLE_KINDS = ("unet", "modl", "vsharp")
_TRAINING_KEYS = ("epochs", "steps_per_epoch", "batch_size", "sampler_updates", "warmup_steps")


@dataclass(frozen=True)
class SamplerTrainConfig(BundleOut):
    """Everything one ``kadapt train sampler`` run needs, validated.

    ``out`` is ``REPOSITORY/NAME/VERSION`` of the one bundle written: a bundle serves every R in
    ``accelerations`` (one score vector, top-k at each budget; docs/trainer.md says why). ``recon`` is
    ``"unet"`` (co-trained :class:`UNetRecon` from ``recon_params``) or a recon bundle directory
    ``REPO/NAME/VERSION`` whose TorchScript ``model.pt`` stays frozen (seed 001 section 3.3.2).
    ``labels`` / ``label_cache`` / ``label_settings`` concern ``mnet`` only; ``loupe`` holds
    ``slope``, ``binariser`` and ``threshold_slope`` for ``loupe`` only. ``num_acs`` ``None`` means
    ``W // 16`` of the data (the recon trainer's default).
    """

    method: SamplerMethod
    data: Path
    accelerations: tuple[float, ...]
    out: Path
    runs: Path
    recon: str = CO_TRAINED_RECON
    labels: LabelMethod | None = None
    label_cache: Path | None = None
    model_params: dict[str, Any] = field(default_factory=dict)
    recon_params: dict[str, Any] = field(default_factory=dict)
    loupe: dict[str, Any] = field(default_factory=dict)
    label_settings: dict[str, Any] = field(default_factory=dict)
    sampler_lr: float = 5e-4
    recon_lr: float = 1e-3
    recon_weight: float = 1.0
    epochs: int = 1
    steps_per_epoch: int = 1
    batch_size: int = 1
    sampler_updates: int = 1
    warmup_steps: int = 0
    num_acs: int | None = None
    val_slices: int | None = None
    fallback: str | None = None
    seed: int = 0
    resume: bool = False
    quick: bool = False
    config_file: Path | None = None

    @property
    def co_trained(self) -> bool:
        """Whether the reconstruction is trained alongside the sampler (``--recon unet``)."""
        return self.recon == CO_TRAINED_RECON


def _merged(document: dict[str, Any], name: str, path: Path, quick: bool) -> dict[str, Any]:
    merged = config_section(document, name, path)
    if quick:
        merged.update(config_section(document, f"quick_{name}", path))
    return merged


def _check_out(out: Path) -> None:
    check_bundle_out(out)
    name = out.parent.name
    # The sampler serves a bundle under its name next to the mask families and refuses a clash.
    if name in mask_families():
        raise InvalidInputError(
            f"--out name {name!r} is a mask family's name, which the sampler would refuse to serve as a "
            f"bundle; choose another (e.g. {name}-pop)"
        )


def _label_settings(document: dict[str, Any], path: Path, quick: bool) -> dict[str, Any]:
    # labels: {mask-backward: {...}, icd: {...}}; quick_labels merged per method.
    base = config_section(document, "labels", path)
    quick_part = config_section(document, "quick_labels", path) if quick else {}
    settings: dict[str, Any] = {}
    for method in LABEL_METHODS:
        entry = dict(base.get(method) or {})
        entry.update(quick_part.get(method) or {})
        settings[method] = entry
    return settings


def make_sampler_config(
    method: str,
    data: Path,
    accelerations: tuple[float, ...],
    out: Path,
    *,
    labels: str | None = None,
    label_cache: Path | None = None,
    recon: str = CO_TRAINED_RECON,
    runs: Path | None = None,
    quick: bool = False,
    config_file: Path | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    num_acs: int | None = None,
    fallback: str | None = None,
    resume: bool = False,
    seed: int = 0,
) -> SamplerTrainConfig:
    """Validate the flags, read ``configs/<method>.yaml`` (or ``config_file``) and apply overrides.

    Raises :class:`InvalidInputError` (unknown method / label method / binariser, ``mnet`` without
    ``labels`` or ``label_cache``, bad sizes, a bad or family-named ``out``),
    :class:`InvalidAccelerationError` (an R <= 1) and :class:`NotFoundError` (missing data directory,
    config file or recon bundle directory).
    """
    if method not in SAMPLER_METHODS:
        raise InvalidInputError(f"unknown sampler method {method!r}; choose one of {list(SAMPLER_METHODS)}")
    if not accelerations:
        raise InvalidInputError("at least one acceleration R is needed (--R)")
    bad = [r for r in accelerations if not r > 1.0]
    if bad:
        raise InvalidAccelerationError(f"accelerations must be > 1, got R = {bad}")
    data = Path(data)
    if not data.is_dir():
        raise NotFoundError(f"data directory {data} does not exist")
    out = Path(out)
    _check_out(out)
    if method == "mnet":
        if labels not in LABEL_METHODS:
            raise InvalidInputError(
                f"--method mnet needs --labels one of {list(LABEL_METHODS)}, got {labels!r}"
            )
        if label_cache is None:
            raise InvalidInputError(
                "--method mnet needs --label-cache DIR (labels are read or written there)"
            )
    if recon != CO_TRAINED_RECON and not (Path(recon) / "manifest.json").is_file():
        raise NotFoundError(
            f"--recon {recon!r} is neither 'unet' nor a recon bundle directory REPO/NAME/VERSION "
            "holding a manifest.json"
        )
    if seed < 0:
        raise InvalidInputError(f"seed must be >= 0, got {seed}")
    document: dict[str, Any] = {}
    path: Path | None = None
    if method != "energy-density":
        path = Path(config_file) if config_file is not None else CONFIG_DIR / f"{method}.yaml"
        document = read_config_document(path)
    where = path or Path("<no config>")
    training = config_section(document, "training", where)
    if quick:
        training.update(QUICK_TRAINING)
    overrides = {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size}
    training.update({key: value for key, value in overrides.items() if value is not None})
    optimiser = config_section(document, "optimiser", where)
    loss = config_section(document, "loss", where)
    model_params = _merged(document, "model", where, quick)
    if "channels" in model_params:  # YAML lists; MNet takes a tuple
        model_params["channels"] = tuple(int(c) for c in model_params["channels"])
    loupe = config_section(document, "loupe", where)
    if method == "loupe" and loupe.get("binariser", "bernoulli") not in LOUPE_BINARISERS:
        raise InvalidInputError(
            f"config {where}: unknown loupe.binariser {loupe.get('binariser')!r}; "
            f"choose {list(LOUPE_BINARISERS)}"
        )
    config = SamplerTrainConfig(
        method=cast(SamplerMethod, method),
        data=data,
        accelerations=tuple(float(r) for r in accelerations),
        out=out,
        runs=Path(runs) if runs is not None else Path("runs") / out.parent.name / out.name,
        recon=recon,
        labels=cast(LabelMethod, labels) if method == "mnet" else None,
        label_cache=Path(label_cache) if label_cache is not None and method == "mnet" else None,
        model_params=model_params,
        recon_params=_merged(document, "recon", where, quick),
        loupe=loupe,
        label_settings=_label_settings(document, where, quick) if method == "mnet" else {},
        sampler_lr=float(optimiser.get("sampler_lr", 5e-4)),
        recon_lr=float(optimiser.get("recon_lr", 1e-3)),
        recon_weight=float(loss.get("recon_weight", 1.0)),
        num_acs=num_acs if num_acs is not None else training.get("num_acs"),
        val_slices=training.get("val_slices"),
        fallback=fallback,
        seed=seed,
        resume=resume,
        quick=quick,
        config_file=path,
        **{key: int(training.get(key, 0 if key == "warmup_steps" else 1)) for key in _TRAINING_KEYS},
    )
    for name in ("epochs", "steps_per_epoch", "batch_size", "sampler_updates", "sampler_lr", "recon_lr"):
        if not getattr(config, name) > 0:
            raise InvalidInputError(f"{name} must be > 0, got {getattr(config, name)}")
    for name in ("warmup_steps", "recon_weight"):
        if getattr(config, name) < 0:
            raise InvalidInputError(f"{name} must be >= 0, got {getattr(config, name)}")
    for name in ("num_acs", "val_slices"):
        value = getattr(config, name)
        if value is not None and not int(value) > 0:
            raise InvalidInputError(f"{name} must be > 0, got {value}")
    return config


class ZeroFilledSense(nn.Module):
    """``A^H M y`` with the ACS maps (no parameters): the validation recon of ``energy-density`` when no
    recon bundle is given. ``(B, C, H, W, 2), (B, 1, 1, W, 1), (B, C, H, W, 2) -> (B, H, W, 2)``."""

    def forward(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        return sense_adjoint(masked_kspace, sens, mask)


class FrozenBundleRecon(nn.Module):
    """A recon bundle's TorchScript ``model.pt``, frozen (seed 001 section 3.3.2, "MNet & fixed U-Net").

    The trace was made at batch 1, so items run one at a time; gradients still reach the masks.
    ``(B, C, H, W, 2), (B, 1, 1, W, 1), (B, C, H, W, 2) -> (B, H, W, 2)``.
    """

    def __init__(self, scripted: nn.Module) -> None:
        super().__init__()
        self.scripted = scripted
        for parameter in self.scripted.parameters():
            parameter.requires_grad_(False)

    def forward(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        images = [
            self.scripted(
                masked_kspace[i : i + 1], mask[i : i + 1] if mask.shape[0] > 1 else mask, sens[i : i + 1]
            )
            for i in range(masked_kspace.shape[0])
        ]
        return torch.cat(images, dim=0)


def load_recon(
    config: SamplerTrainConfig, geometry: tuple[int, int, int], num_acs: int
) -> tuple[nn.Module, dict[str, JsonValue]]:
    """The reconstruction and its manifest summary: a co-trained :class:`UNetRecon` (initialised from a
    forked RNG seeded with ``config.seed``), the zero-filled SENSE adjoint (``energy-density``), or a
    frozen recon bundle's TorchScript. :class:`GeometryMismatchError` / :class:`InvalidInputError` when
    the bundle was made for another ``(C, H, W)`` or ACS block (its maps would differ)."""
    if config.co_trained:
        if config.method == "energy-density":
            return ZeroFilledSense(), {"name": "zero-filled-sense"}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            recon = UNetRecon(**config.recon_params)
        return recon, {"name": "unet", "co_trained": True, "params": dict(config.recon_params)}
    path = Path(config.recon)
    bundle = load_bundle(path.parent.parent, path.parent.name, path.name)
    manifest = bundle.manifest
    if manifest.kind not in RECON_BUNDLE_KINDS:
        raise InvalidInputError(
            f"--recon {path}: a {manifest.kind!r} bundle, not one of {list(RECON_BUNDLE_KINDS)}"
        )
    coils, height, width = geometry
    given = (manifest.geometry.coils, manifest.geometry.kx, manifest.geometry.ky)
    if given != (coils, height, width):
        raise GeometryMismatchError(
            f"--recon {manifest.ref} is for (C, H, W) = {given}, the data is {geometry}"
        )
    if manifest.num_acs != num_acs:
        raise InvalidInputError(f"--recon {manifest.ref} uses num_acs={manifest.num_acs}, this run {num_acs}")
    with warnings.catch_warnings():
        # Recon bundles ship TorchScript by contract (docs/trainer.md); torch deprecates the format.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        scripted = torch.jit.load(str(bundle.file("model.pt")), map_location="cpu")  # type: ignore[no-untyped-call]
    return FrozenBundleRecon(scripted), {"name": manifest.ref, "kind": manifest.kind, "co_trained": False}
