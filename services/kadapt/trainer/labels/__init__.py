"""Sampler training labels (issue 4): one binary line mask per training slice, cached on disk.

- :mod:`kadapt.trainer.labels.mask_backward` -- seed 000 Alg. 1 (learnable mask weights, co-trained
  U-Net, acceptance check, alpha grid, degenerate-batch restart): :func:`generate_mask_backward`;
- :mod:`kadapt.trainer.labels.icd` -- seed 001 / SUNO iterative coordinate descent under a fixed
  reconstructor: :func:`generate_icd`;
- :mod:`kadapt.trainer.labels.store` -- :class:`LabelSet`, HDF5 ``save_labels`` / ``load_labels``, and the
  settings-hash cache (``label_path``, ``cached_labels``);
- :mod:`kadapt.trainer.labels.refine` -- Alg. 1 on one batch, the alpha grid, degeneracy, warm-up;
- :mod:`kadapt.trainer.labels.scoring` -- fixed reconstructors, candidate losses, per-slice mask scoring.

:func:`make_labels` is what ``kadapt train labels`` runs: the settings of one (method, R) from the
presets below, a cache lookup, generation on a miss. See docs/trainer.md, "Sampler labels".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from kadapt.data.manifest import Split, load_manifest
from kadapt.errors import InvalidInputError
from kadapt.trainer.data import SliceDataset, default_num_acs
from kadapt.trainer.labels.icd import generate_icd, icd_settings
from kadapt.trainer.labels.mask_backward import generate_mask_backward, mask_backward_settings
from kadapt.trainer.labels.scoring import Progress, SliceSource
from kadapt.trainer.labels.store import (
    LABEL_METHODS,
    LabelMethod,
    LabelSet,
    cached_labels,
    label_path,
    load_labels,
    save_labels,
    settings_hash,
)

#: Generator keyword arguments of ``kadapt train labels`` per method; ``--quick`` merges QUICK over them.
#: Mask-backward: seed 000 section 3.1 (T = 20, lr 5e-3 / 5e-4, lambda 5e-4, alpha grid by R).
PRESETS: dict[str, dict[str, Any]] = {
    "mask-backward": {
        "iterations": 20,
        "batch_size": 8,
        "epochs": 1,
        "unet_chans": 32,
        "unet_pools": 4,
        "warmup_steps": 100,
    },
    "icd": {"loss": "nrmse", "sweeps": 3, "candidates_batch": 128},
}
QUICK: dict[str, dict[str, Any]] = {
    "mask-backward": {"iterations": 4, "batch_size": 2, "unet_chans": 8, "unet_pools": 2, "warmup_steps": 4},
    "icd": {"sweeps": 1, "candidates_batch": 64},
}


#: ``--quick`` labels at most this many slices of the split.
QUICK_SLICES = 4


def label_dataset(
    data: Path, split: str, num_acs: int | None = None, max_slices: int | None = None
) -> SliceDataset:
    """The prepared slices of one split of a ``kadapt data build`` folder; ``num_acs`` defaults to the
    trainer's ``W // 16`` (:func:`kadapt.trainer.data.default_num_acs`)."""
    if split not in get_args(Split):
        raise InvalidInputError(f"split must be one of {list(get_args(Split))}, got {split!r}")
    chosen: Split = "train" if split == "train" else "val" if split == "val" else "test"
    records = load_manifest(data).volumes_in(chosen)
    if not records:
        raise InvalidInputError(f"dataset {data} has no volume in split {split!r}")
    return SliceDataset(data, chosen, num_acs or default_num_acs(records[0].width), max_slices=max_slices)


@dataclass(frozen=True)
class LabelRun:
    """One (method, R) of ``kadapt train labels``: the labels, their file, and whether it was a cache hit."""

    labels: LabelSet
    path: Path
    hit: bool

    def summary(self) -> str:
        """One line: where the file is, cache hit or generated, and the label quality numbers."""
        metrics = self.labels.metrics
        numbers = ", ".join(
            f"{name} {metrics[name]:.4g}"
            for name in (
                "mean_start_loss",
                "mean_label_loss",
                "zero_filled_nrmse_start",
                "zero_filled_nrmse_label",
                "accepted_fraction",
                "distinct_masks",
                "seconds",
            )
            if name in metrics
        )
        state = "cache hit" if self.hit else "generated"
        return f"{self.labels.method} R={self.labels.acceleration:g}: {self.path} ({state}; {numbers})"


def label_rng(seed: int, acceleration: float) -> np.random.Generator:
    """The generator of one R: ``SeedSequence(seed, spawn_key=(round(1000 R),))``, independent per R."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(round(1000 * acceleration),)))


def make_labels(
    method: str,
    dataset: SliceSource,
    *,
    split: str,
    acceleration: float,
    num_acs: int,
    cache_dir: Path,
    seed: int = 0,
    quick: bool = False,
    overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> LabelRun:
    """Labels for ``dataset`` (masks ``(N, W)``) at one R from the cache or generated and cached.

    Keyword arguments of the generator: :data:`PRESETS`, :data:`QUICK` over them when ``quick``, then
    ``overrides``. The cache key is the generator's own settings (seed state, data fingerprint included).
    """
    if method not in LABEL_METHODS:
        raise InvalidInputError(f"label method must be one of {list(LABEL_METHODS)}, got {method!r}")
    options: dict[str, Any] = {**PRESETS[method], **(QUICK[method] if quick else {}), **(overrides or {})}
    common: dict[str, Any] = {"acceleration": acceleration, "num_acs": num_acs}
    if method == "icd":
        settings = icd_settings(dataset, **common, rng=label_rng(seed, acceleration), **options)

        def generate() -> LabelSet:
            return generate_icd(
                dataset, **common, rng=label_rng(seed, acceleration), progress=progress, **options
            )

    else:
        settings = mask_backward_settings(
            dataset, **common, alphas=None, rng=label_rng(seed, acceleration), **options
        )

        def generate() -> LabelSet:
            return generate_mask_backward(
                dataset, **common, rng=label_rng(seed, acceleration), progress=progress, **options
            )

    typed_method: LabelMethod = "icd" if method == "icd" else "mask-backward"
    labels, path, hit = cached_labels(
        cache_dir, split, typed_method, acceleration, num_acs, settings, generate
    )
    return LabelRun(labels, path, hit)


__all__ = [
    "PRESETS",
    "QUICK",
    "QUICK_SLICES",
    "LabelRun",
    "LabelSet",
    "generate_icd",
    "generate_mask_backward",
    "label_dataset",
    "label_path",
    "label_rng",
    "load_labels",
    "make_labels",
    "save_labels",
    "settings_hash",
]
