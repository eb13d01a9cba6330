"""Bad input to ``kadapt train recon`` exits with status 2 and names the bad value; config overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kadapt.cli.main import app
from kadapt.errors import InvalidInputError, UnknownMaskFamilyError
from kadapt.trainer.config import QUICK_TRAINING, build_loss, make_config
from kadapt.trainer.data import MaskSampler, check_budgets


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["train", "recon", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("model", "data", "accelerations", "named"),
    [
        ("resnet", None, ["4"], "'resnet'"),
        ("unet", None, ["4", "1"], "R = [1.0]"),
        ("unet", None, ["0.5"], "R = [0.5]"),
        ("unet", "missing-dir", ["4"], "missing-dir"),
    ],
)
def test_bad_input_exits_2_naming_the_value(
    model: str, data: str | None, accelerations: list[str], named: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / data if data else tiny_dataset
    code, output = _invoke(
        "--model", model, "--data", str(data_dir), "--R", *accelerations,
        "--out", str(tmp_path / "m" / "x" / "1"), "--quick", "--runs", str(tmp_path / "runs"),
    )  # fmt: skip
    assert code == 2, output
    assert named in output
    assert not (tmp_path / "m").exists()


def test_non_numeric_values_after_r_are_named(tiny_dataset: Path, tmp_path: Path) -> None:
    code, output = _invoke(
        "--model", "unet", "--data", str(tiny_dataset), "--R", "4", "eight",
        "--out", str(tmp_path / "m" / "x" / "1"),
    )  # fmt: skip
    assert code == 2
    assert "eight" in output


def test_config_flags_override_the_yaml(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "modl" / "v3"
    full = make_config("modl", tiny_dataset, (4.0, 8.0), ("vd-random",), out, epochs=7, lr=3e-4, batch_size=3)
    assert (full.epochs, full.lr, full.batch_size, full.steps_per_epoch) == (7, 3e-4, 3, 200)
    assert full.model_params["num_unrolls"] == 5
    assert full.runs == Path("runs") / "modl" / "v3"
    assert (full.repository, full.bundle_name, full.bundle_version) == (tmp_path / "models", "modl", "v3")
    quick = make_config("modl", tiny_dataset, (4.0,), ("vd-random",), out, quick=True, steps_per_epoch=5)
    assert quick.model_params["num_unrolls"] == 2
    assert (quick.epochs, quick.steps_per_epoch) == (QUICK_TRAINING["epochs"], 5)


def test_bad_config_values_are_named(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "unet" / "1"
    with pytest.raises(UnknownMaskFamilyError, match="no-such-mask"):
        make_config("unet", tiny_dataset, (4.0,), ("no-such-mask",), out)
    with pytest.raises(InvalidInputError, match="poisson-2d"):
        make_config("unet", tiny_dataset, (4.0,), ("poisson-2d",), out)
    with pytest.raises(InvalidInputError, match="'Bad Name'"):
        make_config("unet", tiny_dataset, (4.0,), ("vd-random",), tmp_path / "Bad Name" / "1")
    with pytest.raises(InvalidInputError, match="epochs must be > 0, got 0"):
        make_config("unet", tiny_dataset, (4.0,), ("vd-random",), out, epochs=0)
    with pytest.raises(InvalidInputError, match="'nmse'"):
        make_config("unet", tiny_dataset, (4.0,), ("vd-random",), out, select="nmse")
    assert make_config("unet", tiny_dataset, (4.0,), ("vd-random",), out).select == "ssim"
    assert make_config("unet", tiny_dataset, (4.0,), ("vd-random",), out, select="psnr").select == "psnr"
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  chans: 8\n  depth: 3\n")
    with pytest.raises(InvalidInputError, match="depth"):
        make_config("unet", tiny_dataset, (4.0,), ("vd-random",), out, config_file=bad_yaml)


def test_budget_below_the_acs_block_is_refused() -> None:
    check_budgets(32, (4.0,), 8)
    with pytest.raises(InvalidInputError, match=r"R=8\.0 on W=32 leaves round\(W/R\)=4 lines"):
        check_budgets(32, (8.0,), 8)


def test_loss_presets_and_overrides() -> None:
    assert build_loss("seed004", {}).weights == {
        "ssim": 1.0,
        "l1": 1.0,
        "hfen": 1.0,
        "nrmse": 0.0,
        "kspace_nmae": 3.0,
    }
    assert build_loss("seed001", {"ssim_weight": 0.5}).weights["ssim"] == 0.5


def test_masks_are_drawn_per_batch_with_exact_budgets() -> None:
    sampler = MaskSampler(("vd-random", "equispaced"), (4.0, 2.0), 32, 4, np.random.default_rng(5))
    seen = set()
    for _ in range(20):
        family, acceleration, masks = sampler.draw(3)
        seen.add((family, acceleration))
        assert masks.shape == (3, 32)
        assert np.all(masks.sum(axis=1) == round(32 / acceleration))
        assert np.all(masks[:, 14:18])  # the ACS block (4 centred lines) is in every mask
    assert len(seen) == 4
    again = MaskSampler(("vd-random", "equispaced"), (4.0, 2.0), 32, 4, np.random.default_rng(5))
    first = MaskSampler(("vd-random", "equispaced"), (4.0, 2.0), 32, 4, np.random.default_rng(5))
    assert np.array_equal(again.draw(2)[2], first.draw(2)[2])
