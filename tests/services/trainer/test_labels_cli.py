"""``kadapt train labels --quick``: label files per R in the cache, a hit on the second run, named errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kadapt.cli.main import app
from kadapt.masks import acs_lines
from kadapt.trainer.labels import QUICK_SLICES, label_dataset, load_labels


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    previous = torch.get_num_threads()  # the command sets --threads for its process
    yield
    torch.set_num_threads(previous)


def _labels(tiny_dataset: Path, cache: Path, *options: str) -> list[str]:
    arguments = ["train", "labels", "--data", str(tiny_dataset), "--cache", str(cache), "--quick"]
    result = CliRunner().invoke(app, [*arguments, "--threads", "1", *options])
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if " R=" in line and ".h5" in line]


def test_icd_quick_writes_one_file_per_r_then_hits_the_cache(tiny_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "labels"
    lines = _labels(tiny_dataset, cache, "--method", "icd", "--R", "4", "3")
    assert len(lines) == 2
    assert all("(generated;" in line and "mean_label_loss" in line for line in lines)
    files = sorted((cache / "train").glob("icd-R*-acs4-*.h5"))
    assert [path.name.split("-")[1] for path in files] == ["R3", "R4"]
    slices = label_dataset(tiny_dataset, "train").slices
    for path in files:
        labels = load_labels(path)
        assert len(labels) == min(QUICK_SLICES, len(slices))
        assert (labels.masks.sum(axis=1) == labels.budget).all()
        assert labels.masks[:, acs_lines(32, 4)].all()
        assert labels.metrics["mean_label_loss"] <= labels.metrics["mean_start_loss"]
        assert labels.settings["sweeps"] == 1  # --quick
        assert str(path) in "\n".join(lines)
    again = _labels(tiny_dataset, cache, "--method", "icd", "--R", "4")
    assert len(again) == 1
    assert "(cache hit;" in again[0]
    changed = _labels(tiny_dataset, cache, "--method", "icd", "--R", "4", "--loss", "ssim")
    assert "(generated;" in changed[0]  # another loss is another key
    assert len(list((cache / "train").glob("icd-R4-*.h5"))) == 2


def test_mask_backward_quick_writes_labels(tiny_dataset: Path, tmp_path: Path) -> None:
    lines = _labels(tiny_dataset, tmp_path, "--method", "mask-backward", "--R", "4")
    assert len(lines) == 1
    assert "accepted_fraction" in lines[0]
    (path,) = (tmp_path / "train").glob("mask-backward-R4-acs4-*.h5")
    labels = load_labels(path)
    assert labels.settings["iterations"] == 4  # --quick
    assert labels.settings["reconstructor"] == {
        "module": "UNetRecon",
        "chans": 8,
        "num_pool_layers": 2,
        "init": "rng",
    }
    assert np.isfinite(labels.per_slice["label_loss"]).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "greedy", "--R", "4"], "greedy"),
        (["--method", "icd", "--R", "4", "--loss", "psnr"], "psnr"),
        (["--method", "icd", "--R", "1"], "R=1"),
        (["--method", "icd", "--R", "4", "--split", "holdout"], "holdout"),
        (["--method", "icd", "--R", "4", "x"], "only accelerations"),
    ],
)
def test_bad_input_exits_2_naming_the_value(
    tiny_dataset: Path, tmp_path: Path, options: list[str], message: str
) -> None:
    arguments = ["train", "labels", "--data", str(tiny_dataset), "--cache", str(tmp_path), "--quick"]
    result = CliRunner().invoke(app, [*arguments, *options])
    assert result.exit_code == 2
    assert message in result.output
    assert not list(tmp_path.rglob("*.h5"))
