"""Trainer fixtures: one tiny dataset and one quick run per model kind, shared by the module's tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kadapt.cli.main import app
from kadapt.data.build import build_dataset
from kadapt.trainer.config import make_config
from kadapt.trainer.loop import TrainResult, train_recon

ACCELERATIONS = (4.0, 3.0)
MASKS = ("vd-random", "equispaced")


@dataclass(frozen=True)
class QuickRun:
    """A finished quick run: where its bundle and runs directory are, and the Python result if any."""

    kind: str
    repository: Path
    runs: Path
    result: TrainResult | None


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build_dataset's smallest real build: size 32, 4 coils, 3 volumes (one per split), 2 slices each."""
    out = tmp_path_factory.mktemp("trainer-data") / "tiny"
    build_dataset(out, size=32, coils=4, n_volumes=3, slices_per_volume=2)
    return out


@pytest.fixture(scope="session")
def quick_runs(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, QuickRun]:
    """unet through the typer CLI, modl and vsharp through the Python entry; all --quick at R 4 and 3."""
    root = tmp_path_factory.mktemp("trainer-runs")
    repository = root / "models"
    runs: dict[str, QuickRun] = {}
    cli = CliRunner().invoke(
        app,
        [
            "train", "recon", "--model", "unet", "--data", str(tiny_dataset), "--R", "4", "3",
            "--masks", ",".join(MASKS), "--out", str(repository / "unet" / "1"), "--quick",
            "--runs", str(root / "runs-unet"),
        ],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    runs["unet"] = QuickRun("unet", repository, root / "runs-unet", None)
    for kind in ("modl", "vsharp"):
        config = make_config(
            kind, tiny_dataset, ACCELERATIONS, MASKS, repository / kind / "1", runs=root / f"runs-{kind}",
            quick=True, seed=1,
        )  # fmt: skip
        runs[kind] = QuickRun(kind, repository, config.runs, train_recon(config, show_progress=False))
    return runs
