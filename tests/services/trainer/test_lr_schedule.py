"""The learning-rate schedule: constant, or cosine from lr to lr / 100, a pure function of the step."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest

from kadapt.errors import InvalidInputError
from kadapt.trainer.config import TrainConfig, learning_rate, make_config


def _config(tmp_path: Path, schedule: str) -> TrainConfig:
    config_file = tmp_path / "modl.yaml"
    config_file.write_text(
        f"model: {{}}\noptimiser: {{lr: 0.002, schedule: {schedule}}}\n"
        "training: {epochs: 2, steps_per_epoch: 5, batch_size: 1}\n"
    )
    return make_config(
        model="modl",
        data=tmp_path,
        accelerations=(4.0,),
        masks=("vd-random",),
        out=tmp_path / "repo" / "modl" / "1",
        config_file=config_file,
    )


def test_cosine_schedule_starts_at_lr_ends_at_one_percent_and_decreases(tmp_path: Path) -> None:
    config = _config(tmp_path, "cosine")
    rates = [learning_rate(config, step) for step in range(11)]
    assert rates[0] == pytest.approx(0.002)
    assert rates[10] == pytest.approx(0.002 / 100)
    assert rates[5] == pytest.approx(0.002 / 100 + 0.5 * (0.002 - 0.002 / 100))
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert learning_rate(config, 50) == pytest.approx(0.002 / 100), "past the end it stays at the floor"
    assert not math.isnan(learning_rate(dataclasses.replace(config, epochs=1, steps_per_epoch=1), 0))


def test_constant_schedule_and_unknown_schedule_error(tmp_path: Path) -> None:
    assert learning_rate(_config(tmp_path, "constant"), 7) == pytest.approx(0.002)
    with pytest.raises(InvalidInputError, match="'linear'"):
        _config(tmp_path, "linear")
