"""``--init``: a run starts from an earlier checkpoint's weights, or fails naming the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kadapt.errors import InvalidInputError, NotFoundError
from kadapt.nn.modl import MoDL
from kadapt.trainer.warm_start import warm_start


def _modl(channels: int) -> MoDL:
    return MoDL(num_unrolls=1, cg_iterations=2, denoiser_channels=channels, denoiser_layers=2)


def test_warm_start_copies_the_weights_and_records_the_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained, fresh = _modl(4), _modl(4)
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3}, checkpoint)
    record = warm_start(fresh, checkpoint)
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0)
    assert record["epoch"] == 3
    assert record["path"] == str(checkpoint)
    assert len(record["sha256"]) == 64


def test_warm_start_refuses_another_architecture_and_a_missing_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": _modl(4).state_dict()}, checkpoint)
    with pytest.raises(InvalidInputError, match="does not fit this model"):
        warm_start(_modl(8), checkpoint)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(InvalidInputError, match="not a kadapt trainer checkpoint"):
        warm_start(_modl(4), tmp_path / "other.pt")
    with pytest.raises(NotFoundError, match=r"missing\.pt"):
        warm_start(_modl(4), tmp_path / "missing.pt")


def test_warm_start_without_loading_only_records_the_origin(tmp_path: Path) -> None:
    checkpoint = tmp_path / "best.pt"
    trained, resumed = _modl(4), _modl(4)
    torch.save({"model": trained.state_dict(), "epoch": 2}, checkpoint)
    before = {name: value.clone() for name, value in resumed.state_dict().items()}
    record = warm_start(resumed, checkpoint, load=False)
    assert record["epoch"] == 2
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
