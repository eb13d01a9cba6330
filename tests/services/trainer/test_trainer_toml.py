"""``--config FILE.toml``: the same schema as the YAML configs, parsed to the same TrainConfig."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kadapt.cli.main import app
from kadapt.errors import InvalidInputError, NotFoundError
from kadapt.trainer.config import CONFIG_DIR, MODEL_KINDS, TrainConfig, make_config, read_config_document


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML spelling for {value!r} in this test")


def _toml_tables(prefix: str, table: dict[str, Any]) -> list[str]:
    lines = [f"[{prefix}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in table.items() if not isinstance(value, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += _toml_tables(f"{prefix}.{key}", value)
    return lines


def _toml_equivalent(yaml_path: Path, toml_path: Path) -> Path:
    """Write the TOML spelling of a (sections of tables) YAML config."""
    document = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    lines: list[str] = []
    for section, table in document.items():
        lines += _toml_tables(section, table or {})
    toml_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return toml_path


def _config(tiny_dataset: Path, kind: str, path: Path, **flags: Any) -> TrainConfig:
    out = tiny_dataset.parent / "models" / kind / "1"
    return make_config(kind, tiny_dataset, (4.0, 3.0), ("vd-random",), out, config_file=path, **flags)


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("flags", [{}, {"quick": True, "smp": True}], ids=["full", "quick-smp"])
def test_toml_and_yaml_parse_to_the_same_config(
    kind: str, flags: dict[str, bool], tiny_dataset: Path, tmp_path: Path
) -> None:
    yaml_path = CONFIG_DIR / f"{kind}.yaml"
    toml_path = _toml_equivalent(yaml_path, tmp_path / f"{kind}.toml")
    assert read_config_document(toml_path) == yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    from_yaml = _config(tiny_dataset, kind, yaml_path, **flags)
    from_toml = _config(tiny_dataset, kind, toml_path, **flags)
    assert from_toml.config_file == toml_path
    assert dataclasses.replace(from_toml, config_file=yaml_path) == from_yaml


def test_a_hand_written_toml_config(tiny_dataset: Path, tmp_path: Path) -> None:
    path = tmp_path / "modl-tuned.toml"
    path.write_text(
        """
[model]
num_unrolls = 3
cg_iterations = 4
denoiser = "unet"
denoiser_channels = 8
unet_pool_layers = 2

[smp]
chans = 8
residual = false

[optimiser]
lr = 5e-4
schedule = "cosine"

[loss]
preset = "seed001"
weights = { ssim_weight = 0.25 }

[training]
epochs = 3
steps_per_epoch = 7
batch_size = 2
num_acs = 4
""",
        encoding="utf-8",
    )
    config = _config(tiny_dataset, "modl", path, smp=True)
    assert config.model_params == {
        "num_unrolls": 3,
        "cg_iterations": 4,
        "denoiser": "unet",
        "denoiser_channels": 8,
        "unet_pool_layers": 2,
    }
    assert config.smp_params == {"chans": 8, "residual": False}
    assert (config.lr, config.lr_schedule, config.loss_preset) == (5e-4, "cosine", "seed001")
    assert config.loss_weights == {"ssim_weight": 0.25}
    assert (config.epochs, config.steps_per_epoch, config.batch_size, config.num_acs) == (3, 7, 2, 4)


def test_unknown_extension_bad_toml_and_missing_file_are_named(tiny_dataset: Path, tmp_path: Path) -> None:
    json_config = tmp_path / "modl.json"
    json_config.write_text("{}", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"unknown extension '\.json'"):
        _config(tiny_dataset, "modl", json_config)
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\nchans = 8\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"broken\.toml is not valid TOML"):
        _config(tiny_dataset, "unet", broken)
    with pytest.raises(NotFoundError, match=r"absent\.toml"):
        _config(tiny_dataset, "unet", tmp_path / "absent.toml")
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("[model]\nchans = 8\ndepth = 3\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="depth"):
        _config(tiny_dataset, "unet", bad_key)


def test_cli_names_an_unknown_config_extension(tiny_dataset: Path, tmp_path: Path) -> None:
    ini = tmp_path / "unet.ini"
    ini.write_text("[model]\n", encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [
            "train", "recon", "--model", "unet", "--data", str(tiny_dataset), "--R", "4",
            "--out", str(tmp_path / "m" / "unet" / "1"), "--config", str(ini), "--quick",
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "'.ini'" in result.output
    assert not (tmp_path / "m").exists()
