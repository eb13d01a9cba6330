"""``--smp``: the SMP refines the ACS maps inside the model; the bundle keeps the recon contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kadapt.bundles import load_bundle
from kadapt.bundles.onnx_recon import OnnxRecon, open_session, warm_up
from kadapt.cli.main import app
from kadapt.data.manifest import load_manifest
from kadapt.errors import InvalidInputError
from kadapt.fastmri.files import read_fastmri
from kadapt.nn.export import relative_l2_error
from kadapt.nn.losses import complex_magnitude
from kadapt.nn.modl import MoDL
from kadapt.nn.smp import SensitivityMapPredictor, SensitivityRefinedRecon
from kadapt.trainer.config import build_model, make_config
from kadapt.trainer.data import make_batch, prepare_slice, validation_masks
from kadapt.trainer.loop import train_recon

from .conftest import ACCELERATIONS, MASKS


@pytest.fixture(scope="module")
def smp_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A quick ``modl --smp`` run through the CLI: (repository, runs)."""
    root = tmp_path_factory.mktemp("trainer-smp")
    repository, runs = root / "models", root / "runs"
    result = CliRunner().invoke(
        app,
        [
            "train", "recon", "--model", "modl", "--smp", "--data", str(tiny_dataset), "--R", "4", "3",
            "--masks", ",".join(MASKS), "--out", str(repository / "modl-smp" / "1"), "--quick",
            "--runs", str(runs), "--seed", "2",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return repository, runs


def test_smp_config_wraps_the_reconstruction(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "modl" / "1"
    plain = make_config("modl", tiny_dataset, (4.0,), ("vd-random",), out, quick=True)
    assert (plain.smp, plain.smp_params) == (False, {})
    config = make_config("modl", tiny_dataset, (4.0,), ("vd-random",), out, quick=True, smp=True)
    assert config.smp_params == {"chans": 4, "num_pool_layers": 2, "drop_prob": 0.0, "residual": True}
    full = make_config("modl", tiny_dataset, (4.0,), ("vd-random",), out, smp=True)
    assert (full.smp_params["chans"], full.smp_params["num_pool_layers"]) == (16, 4)  # seed 004's SMP
    assert full.model_params["num_unrolls"] == 5  # the model's own defaults are untouched
    model = build_model(config.model, config.model_params, config.smp_params)
    assert isinstance(model, SensitivityRefinedRecon)
    assert isinstance(model.recon, MoDL)
    assert isinstance(model.smp, SensitivityMapPredictor)


def test_smp_model_feeds_refined_maps_to_the_reconstruction(tiny_dataset: Path) -> None:
    config = make_config(
        "unet",
        tiny_dataset,
        (4.0,),
        ("vd-random",),
        tiny_dataset.parent / "m" / "u" / "1",
        quick=True,
        smp=True,
    )
    torch.manual_seed(0)
    model = build_model(config.model, config.model_params, config.smp_params)
    assert isinstance(model, SensitivityRefinedRecon)
    generator = torch.Generator().manual_seed(3)
    kspace = torch.randn(1, 4, 32, 32, 2, generator=generator)
    mask = torch.ones(1, 1, 1, 32, 1)
    sens = torch.randn(1, 4, 32, 32, 2, generator=generator)
    with torch.no_grad():
        refined = model.smp(sens)
        assert not torch.allclose(refined, sens)
        assert torch.equal(model(kspace, mask, sens), model.recon(kspace, mask, refined))


def test_smp_bundle_keeps_the_contract_and_records_smp(smp_run: tuple[Path, Path]) -> None:
    repository, _ = smp_run
    manifest = load_bundle(repository, "modl-smp", "1").manifest
    assert manifest.kind == "modl"
    assert [(spec.name, spec.shape) for spec in manifest.inputs] == [
        ("masked_kspace", (1, 4, 32, 32, 2)),
        ("mask", (1, 1, 1, 32, 1)),
        ("sens", (1, 4, 32, 32, 2)),
    ]
    assert [(spec.name, spec.shape) for spec in manifest.outputs] == [("image", (1, 32, 32, 2))]
    assert manifest.training["smp"] is True
    assert manifest.training["smp_model"] == {
        "chans": 4,
        "num_pool_layers": 2,
        "drop_prob": 0.0,
        "residual": True,
    }
    for key in ("onnx_max_relative_l2", "torchscript_max_relative_l2"):
        value = manifest.validation[key]
        assert isinstance(value, float)
        assert 0.0 <= value <= 1e-4


def test_served_smp_bundle_matches_the_best_checkpoint(
    smp_run: tuple[Path, Path], tiny_dataset: Path
) -> None:
    """The serving runtime (acs_scale and acs_sensitivities on raw k-space, as the recon service does)
    reproduces the PyTorch model of best.pt on a real validation slice."""
    repository, runs = smp_run
    bundle = load_bundle(repository, "modl-smp", "1")
    session, _ = open_session(bundle, ["CPUExecutionProvider"])
    warm_up(session, bundle.manifest)
    num_acs = bundle.manifest.num_acs
    record = load_manifest(tiny_dataset).volumes_in("val")[0]
    kspace = read_fastmri(tiny_dataset / record.file).kspace[1]
    mask = validation_masks(MASKS, ACCELERATIONS, 32, num_acs, seed=11)[("vd-random", 4.0)]
    masked = (kspace * mask[None, None, :] + 0.0).astype(np.complex64)
    served = OnnxRecon(session, bundle.manifest).infer_slice(masked, mask, num_acs)

    config = make_config(
        "modl", tiny_dataset, ACCELERATIONS, MASKS, repository / "x" / "1", quick=True, smp=True
    )
    model = build_model(config.model, config.model_params, config.smp_params)
    model.load_state_dict(torch.load(runs / "best.pt", weights_only=True)["model"])
    model.eval()
    prepared = prepare_slice(record.name, 1, kspace, num_acs)
    batch = make_batch([prepared], mask[None, :])
    with torch.no_grad():
        image = model(batch.masked_kspace, batch.mask, batch.sens)
    expected = (complex_magnitude(image)[0] * prepared.scale).numpy()
    assert served.shape == (32, 32)
    assert np.all(np.isfinite(served))
    assert relative_l2_error(expected, served) <= 1e-4


def test_resume_refuses_a_checkpoint_of_the_other_smp_setting(
    smp_run: tuple[Path, Path], tiny_dataset: Path
) -> None:
    repository, runs = smp_run
    config = make_config(
        "modl", tiny_dataset, ACCELERATIONS, MASKS, repository / "modl-smp" / "2", runs=runs,
        quick=True, epochs=2, resume=True,
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="smp=True, not smp=False"):
        train_recon(config, show_progress=False)
