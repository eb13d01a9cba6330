"""--resume continues a run from its last checkpoint instead of restarting it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kadapt.bundles import load_bundle
from kadapt.errors import InvalidInputError, InvalidStateError
from kadapt.trainer.config import make_config
from kadapt.trainer.loop import train_recon

from .conftest import ACCELERATIONS, MASKS, QuickRun


def test_resume_advances_the_epoch_counter(
    quick_runs: dict[str, QuickRun], tiny_dataset: Path, tmp_path: Path
) -> None:
    # A copy of the CLI run's checkpoints, so the shared run stays as the other tests expect it.
    runs = tmp_path / "runs"
    shutil.copytree(quick_runs["unet"].runs, runs)
    repository = tmp_path / "models"
    before = torch.load(runs / "last.pt", weights_only=True)
    assert (before["epoch"], before["step"]) == (1, 2)
    config = make_config(
        "unet", tiny_dataset, ACCELERATIONS, MASKS, repository / "unet" / "2", runs=runs,
        quick=True, epochs=2, resume=True,
    )  # fmt: skip
    result = train_recon(config, show_progress=False)
    assert (result.first_epoch, result.epochs_completed, result.global_step) == (2, 2, 4)
    after = torch.load(runs / "last.pt", weights_only=True)
    assert (after["epoch"], after["step"]) == (2, 4)
    # Adam's step counter and the mask generator continued where they stopped (a restart gives 2).
    assert all(int(state["step"]) == 4 for state in after["optimiser"]["state"].values())
    assert after["mask_rng"] != before["mask_rng"]
    training = load_bundle(repository, "unet", "2").manifest.training
    assert (training["epochs"], training["steps"]) == (2, 4)
    assert result.best_epoch in (1, 2)


def test_resume_without_a_checkpoint_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    config = make_config(
        "unet", tiny_dataset, (4.0,), ("equispaced",), tmp_path / "models" / "unet" / "1",
        runs=tmp_path / "empty-runs", quick=True, resume=True,
    )  # fmt: skip
    with pytest.raises(InvalidStateError, match="no checkpoint at"):
        train_recon(config, show_progress=False)


def test_an_existing_checkpoint_needs_resume(quick_runs: dict[str, QuickRun], tiny_dataset: Path) -> None:
    run = quick_runs["modl"]
    config = make_config(
        "modl",
        tiny_dataset,
        (4.0,),
        ("equispaced",),
        run.repository / "modl" / "new",
        runs=run.runs,
        quick=True,
    )
    with pytest.raises(InvalidStateError, match="pass --resume"):
        train_recon(config, show_progress=False)


def test_resume_refuses_another_model_kind(quick_runs: dict[str, QuickRun], tiny_dataset: Path) -> None:
    run = quick_runs["modl"]
    config = make_config(
        "vsharp", tiny_dataset, ACCELERATIONS, MASKS, run.repository / "vsharp" / "other", runs=run.runs,
        quick=True, epochs=2, resume=True,
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="'modl' model, not 'vsharp'"):
        train_recon(config, show_progress=False)


def test_an_existing_bundle_version_is_refused(
    quick_runs: dict[str, QuickRun], tiny_dataset: Path, tmp_path: Path
) -> None:
    run = quick_runs["vsharp"]
    config = make_config(
        "vsharp",
        tiny_dataset,
        (4.0,),
        ("equispaced",),
        run.repository / "vsharp" / "1",
        runs=tmp_path,
        quick=True,
    )
    with pytest.raises(InvalidStateError, match="exists already"):
        train_recon(config, show_progress=False)


def test_select_psnr_exports_the_epoch_with_the_best_mean_val_psnr(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    repository, runs = tmp_path / "models", tmp_path / "runs"
    config = make_config(
        "unet", tiny_dataset, ACCELERATIONS, MASKS, repository / "unet" / "1", runs=runs,
        quick=True, epochs=3, select="psnr",
    )  # fmt: skip
    result = train_recon(config, show_progress=False)
    events = EventAccumulator(str(runs / "tensorboard"))
    events.Reload()
    psnr = {event.step: event.value for event in events.Scalars("val/mean_psnr")}
    assert sorted(psnr) == [1, 2, 3]
    assert result.best_epoch == max(psnr, key=lambda epoch: psnr[epoch])
    assert result.best_score == pytest.approx(psnr[result.best_epoch], rel=1e-5)
    manifest = load_bundle(repository, "unet", "1").manifest
    assert manifest.training["selected_by"] == "mean val psnr"
    assert manifest.training["best_epoch"] == result.best_epoch
