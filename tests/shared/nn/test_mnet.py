"""kadapt.nn.mnet / mnet_bundle: shapes, in-graph ACS normalisation, coil mixing, the faithful
configuration's size, and ONNX export parity of ``mnet`` bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from kadapt.bundles import load_bundle
from kadapt.errors import InvalidInputError
from kadapt.nn.export import relative_l2_error
from kadapt.nn.mnet import (
    ComplexCoilMixing,
    MNet,
    MNetFaithful,
    MNetGeometry,
    acs_percentile_scale,
    count_parameters,
    mnet_example_inputs,
    normalise_acs,
    randomise_parameters,
)
from kadapt.nn.mnet_bundle import MNET_INPUT_NAME, MNET_MODEL_FILE, MNET_OUTPUT_NAME, export_mnet_bundle

TINY = MNetGeometry(width=32, height=32, coils=3, num_acs=4)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("coil_handling", ["average", "mixing"])
def test_mnet_scores_one_logit_per_line(coil_handling: str) -> None:
    model = randomise_parameters(MNet(TINY, coil_handling=coil_handling), seeded())  # type: ignore[arg-type]
    acs = torch.cat([mnet_example_inputs(TINY, seeded(k))[0] for k in range(3)])
    scores = model(acs)
    assert scores.shape == (3, TINY.width)
    assert torch.all(torch.isfinite(scores))
    assert not torch.allclose(scores[0], scores[1])  # the scan changes the decision


def test_faithful_scores_one_logit_per_line_in_both_input_domains() -> None:
    acs = mnet_example_inputs(TINY, seeded())[0]
    for domain in ("kspace", "image"):
        model = randomise_parameters(MNetFaithful(TINY, input_domain=domain, hidden=(16, 16, 16)), seeded())  # type: ignore[arg-type]
        assert model.eval()(acs).shape == (1, TINY.width)


def test_scores_do_not_depend_on_the_scanner_intensity_scale() -> None:
    model = randomise_parameters(MNet(TINY), seeded()).eval()
    acs = mnet_example_inputs(TINY, seeded(1))[0]
    torch.testing.assert_close(model(acs * 1e-3), model(acs), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model(acs * 1e4), model(acs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("coil_handling", ["average", "mixing"])
def test_scale_after_the_coil_combination_is_normalising_first(coil_handling: str) -> None:
    """``forward`` divides by the ACS scale after combining coils; the function is the documented one:
    normalise the ACS (``normalise_acs``), combine the coils, then real / imaginary / log-magnitude."""
    model = randomise_parameters(MNet(TINY, coil_handling=coil_handling), seeded()).eval()  # type: ignore[arg-type]
    acs = torch.cat([mnet_example_inputs(TINY, seeded(k))[0] for k in range(2)]) * 37.0
    normalised = normalise_acs(acs)
    combined = model.mixing(normalised) if model.mixing is not None else normalised.mean(1, keepdim=True)
    real, imag = combined[..., 0], combined[..., 1]
    features = torch.cat((real, imag, torch.log1p(100.0 * torch.sqrt(real**2 + imag**2))), dim=1)
    encoded = model.encoder(features)
    expected = model.head(torch.cat((encoded.mean(dim=2), encoded.amax(dim=2)), dim=1).flatten(1))
    torch.testing.assert_close(model(acs), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 2), (2, 3, 7, 5, 2), (1, 8, 64, 16, 2)])
def test_acs_scale_is_numpys_99_5th_percentile(shape: tuple[int, ...]) -> None:
    acs = torch.randn(shape, generator=seeded(3))
    magnitude = torch.view_as_complex(acs.contiguous()).abs().reshape(shape[0], -1).numpy()
    expected = np.percentile(magnitude, 99.5, axis=1)
    np.testing.assert_allclose(acs_percentile_scale(acs).numpy(), expected, rtol=1e-6)


def test_coil_mixing_is_a_complex_matrix_over_coils() -> None:
    mixing = ComplexCoilMixing(coils=3, virtual_coils=2)
    with torch.no_grad():
        mixing.imag.copy_(torch.randn(2, 3, generator=seeded(4)))
    acs = torch.randn((2, 3, 5, 4, 2), generator=seeded(5))
    weights = torch.complex(mixing.real, mixing.imag).detach()
    expected = torch.einsum("vc,bcha->bvha", weights, torch.view_as_complex(acs.contiguous()))
    torch.testing.assert_close(torch.view_as_complex(mixing(acs).detach().contiguous()), expected)


def test_wrong_input_shape_and_bad_settings_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"expects acs \(B, 3, 32, 4, 2\)"):
        MNet(TINY)(torch.zeros(1, 3, 32, 5, 2))
    with pytest.raises(InvalidInputError, match="coil_handling"):
        MNet(TINY, coil_handling="sum")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="no free line"):
        MNetGeometry(width=8, height=8, coils=1, num_acs=8)
    with pytest.raises(InvalidInputError, match="H, W >= 32"):
        MNetFaithful(MNetGeometry(width=16, height=64, coils=1, num_acs=4))


def test_faithful_has_the_published_size_at_320() -> None:
    with torch.device("meta"):  # no 320 MB of weights
        faithful = MNetFaithful(MNetGeometry(width=320, height=320, coils=15, num_acs=16))
        efficient = MNet(MNetGeometry(width=320, height=320, coils=15, num_acs=16))
    assert 79.5e6 <= count_parameters(faithful) <= 80.5e6  # seed 000: 79.9 M
    assert count_parameters(efficient) < count_parameters(faithful) / 50


def test_randomised_parameters_follow_the_generator_only() -> None:
    acs = mnet_example_inputs(TINY, seeded())[0]
    first = randomise_parameters(MNet(TINY), seeded(7)).eval()(acs)
    again = randomise_parameters(MNet(TINY), seeded(7)).eval()(acs)
    other = randomise_parameters(MNet(TINY), seeded(8)).eval()(acs)
    torch.testing.assert_close(first, again, rtol=0.0, atol=0.0)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda: MNet(TINY, coil_handling="mixing"), id="mnet-mixing"),
        pytest.param(lambda: MNet(TINY, coil_handling="average"), id="mnet-average"),
        pytest.param(lambda: MNetFaithful(TINY, hidden=(16, 16, 16)), id="faithful"),
    ],
)
def test_bundle_export_parity_and_manifest(tmp_path: Path, model: object) -> None:
    network = randomise_parameters(model(), seeded(2))  # type: ignore[operator]
    bundle = export_mnet_bundle(
        network,
        tmp_path,
        name="mnet-test",
        accelerations=(4.0, 8.0),
        training={"description": "UNTRAINED random weights (test)", "fallback": "vd-random"},
        code_version="test",
        generator=seeded(3),
    )
    manifest = load_bundle(tmp_path, "mnet-test").manifest
    assert manifest.kind == "mnet"
    assert manifest.opset == 18
    assert (manifest.geometry.ky, manifest.geometry.kx, manifest.geometry.coils) == (32, 32, 3)
    assert manifest.num_acs == 4
    assert manifest.accelerations == (4.0, 8.0)
    assert [(s.name, s.shape, s.dtype) for s in manifest.inputs] == [
        (MNET_INPUT_NAME, (1, 3, 32, 4, 2), "float32")
    ]
    assert [(s.name, s.shape) for s in manifest.outputs] == [(MNET_OUTPUT_NAME, (1, 32))]
    assert manifest.training["fallback"] == "vd-random"
    assert float(manifest.validation["onnx_max_relative_l2"]) <= 1e-4  # type: ignore[arg-type]
    # Independent check on a fresh scan, 1000x another intensity scale.
    acs = mnet_example_inputs(TINY, seeded(9))[0] * 1000.0
    session = onnxruntime.InferenceSession(
        str(bundle.file(MNET_MODEL_FILE)), providers=["CPUExecutionProvider"]
    )
    served = session.run([MNET_OUTPUT_NAME], {MNET_INPUT_NAME: acs.numpy()})[0]
    with torch.no_grad():
        reference = network.eval()(acs).numpy()
    assert relative_l2_error(reference, served) <= 1e-4


def test_bundle_needs_a_description(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="description"):
        export_mnet_bundle(
            MNet(TINY), tmp_path, name="x", accelerations=(4.0,), training={}, code_version="t"
        )
