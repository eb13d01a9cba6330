"""``kadapt bench dynamic`` end to end through the CLI (``--quick``) on tiny cine files written here and tiny
bundles: an ADS sampler (tests/shared/bundles/ads_fixtures.py) with its dynamic vSHARP recon, and baselines
(kt-equispaced, a unified 1D family, the ``opt`` pattern) sharing one exported tiny VSharpDynamic graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from tests.shared.bundles.ads_fixtures import write_tiny_ads_bundle
from tests.shared.bundles.dynamic_recon_fixtures import export_tiny_vsharp_dynamic, write_dynamic_recon_bundle
from typer.testing import CliRunner

from kadapt.cli.main import app
from kadapt.errors import BundleError
from kadapt.kspace.coils import rss
from kadapt.kspace.fft import fft2c, ifft2c
from kadapt.masks import acs_lines, line_budget
from kadapt.trainer.bench_dynamic import DynamicBenchSettings, run_dynamic_benchmark
from kadapt.trainer.bench_dynamic_samplers import family_mask

FRAMES, COILS, HEIGHT, WIDTH, NUM_ACS = 4, 2, 16, 24, 2


def write_tiny_cine_dataset(root: Path, volumes: int = 2, slices: int = 2, seed: int = 0) -> Path:
    """``root/test/000N_tiny.h5`` (C1 layout: kspace, reconstruction_rss, sensitivity_maps) of a beating
    disc in an ellipse, ``volumes`` subjects, plus a ``manifest.json`` naming ``num_acs``."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.linspace(-1, 1, HEIGHT), np.linspace(-1, 1, WIDTH), indexing="ij")
    maps = np.stack(
        [np.exp(-((rows - 0.6 * np.cos(c)) ** 2 + (cols - 0.6 * np.sin(c)) ** 2)) for c in range(COILS)]
    )
    maps = (maps / np.sqrt((maps**2).sum(axis=0))).astype(np.complex64)
    folder = root / "test"
    folder.mkdir(parents=True)
    for index in range(volumes):
        stack = []
        for _ in range(slices):
            shift = rng.uniform(-0.1, 0.1, 2)
            frames = []
            for frame in range(FRAMES):
                radius = 0.3 + 0.1 * np.sin(2 * np.pi * frame / FRAMES)
                body = ((rows - shift[0]) / 0.8) ** 2 + ((cols - shift[1]) / 0.6) ** 2 < 1.0
                heart = (rows - shift[0]) ** 2 + (cols - shift[1]) ** 2 < radius**2
                frames.append(0.5 * body + heart)
            coil_images = maps[None] * np.asarray(frames)[:, None]
            noise = 0.01 * (
                rng.standard_normal(coil_images.shape) + 1j * rng.standard_normal(coil_images.shape)
            )
            stack.append(fft2c(coil_images) + noise)
        kspace = np.asarray(stack, dtype=np.complex64)
        with h5py.File(folder / f"{index:04d}_tiny.h5", "w") as file:
            file["kspace"] = kspace
            file["reconstruction_rss"] = rss(ifft2c(kspace), axis=2).astype(np.float32)
            file["sensitivity_maps"] = maps
            file.attrs["subject"] = f"s{index}"
            file.attrs["source"] = "tiny"
    (root / "manifest.json").write_text(json.dumps({"frames": FRAMES, "num_acs": NUM_ACS}))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The dataset and the bundles: ``tiny-ads/1`` (frame-specific, recon ``tiny-vsharp/1``),
    ``kt-equi/1`` (kt-equispaced), ``mix/1`` (trained on kt-gaussian-1d and random), ``opt/1`` (scores)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench-dynamic")
    models = root / "models"
    graph = export_tiny_vsharp_dynamic(root / "graph", frames=FRAMES, coils=COILS, height=HEIGHT, width=WIDTH)
    write_dynamic_recon_bundle(models, graph, num_acs=NUM_ACS)
    write_dynamic_recon_bundle(models, graph, "kt-equi", num_acs=NUM_ACS, sampler="kt-equispaced")
    write_dynamic_recon_bundle(models, graph, "mix", num_acs=NUM_ACS, sampler="kt-gaussian-1d,random")
    scores = np.random.default_rng(1).random((FRAMES, WIDTH))
    write_dynamic_recon_bundle(models, graph, "opt", num_acs=NUM_ACS, sampler="opt", scores=scores)
    write_tiny_ads_bundle(models, frames=FRAMES, height=HEIGHT, width=WIDTH, num_acs=NUM_ACS)
    return {"data": write_tiny_cine_dataset(root / "cine"), "models": models}


def test_quick_run_through_the_cli(tmp_path: Path, setup: dict[str, Path]) -> None:
    models = setup["models"]
    out, markdown = tmp_path / "dynamic.json", tmp_path / "dynamic.md"
    bundles = [str(models / name / "1") for name in ("tiny-ads", "kt-equi", "mix", "opt", "tiny-vsharp")]
    result = CliRunner().invoke(
        app,
        ["bench", "dynamic", "--data", str(setup["data"]), "--bundles", *bundles, "--R", "4", "8", "--quick",
         "--threads", "1", "--out", str(out), "--markdown", str(markdown)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["kind"] == "kadapt-bench-dynamic"
    assert {"version", "created", "code_version", "machine"} <= set(report)
    assert report["data"]["geometry"] == {"frames": FRAMES, "coils": COILS, "height": HEIGHT, "width": WIDTH}
    assert report["data"]["slices"] == 2  # quick: 2 volumes x 1 slice
    assert report["settings"]["crop"] == [2 * HEIGHT // 3, 2 * WIDTH // 3]
    assert report["budgets"] == {"4": line_budget(WIDTH, 4, NUM_ACS), "8": line_budget(WIDTH, 8, NUM_ACS)}
    # The ADS recon bundle given on its own is skipped (it has no sampler of its own).
    assert [entry["bundle"] for entry in report["skipped"]] == ["tiny-vsharp/1"]
    names = [
        "tiny-ads",
        "kt-equi",
        "mix[kt-gaussian-1d]",
        "mix[random]",
        "opt",
        "zero-filled (kt-equispaced)",
        "cg-sense (kt-equispaced)",
    ]
    for acceleration in (4.0, 8.0):
        rows = [row for row in report["rows"] if row["R"] == acceleration]
        assert [row["name"] for row in rows] == names
        for row in rows:
            for key in (
                "sampler",
                "pattern",
                "dim",
                "psnr",
                "ssim",
                "nmse",
                "s_per_slice",
                "plan_s_per_slice",
            ):
                assert row[key] is not None, key
            assert len(row["ssim_per_frame"]) == FRAMES
            assert row["volumes"] == 2
            assert 0.0 < row["ssim"] <= 1.0
        ads = rows[0]
        assert (ads["sampler"], ads["kind"], ads["pattern"], ads["recon"]) == (
            "ads", "ads", "frame-specific", "tiny-vsharp/1",
        )  # fmt: skip
        best = report["best_baseline"][f"{acceleration:g}"]["name"]
        assert best in names[1:5]
        assert ads["vs_best_baseline"]["baseline"] == best
        assert set(ads["vs_baselines"]) == set(names[1:5])
        patterns = {row["name"]: row["pattern"] for row in rows}
        assert patterns["mix[random]"] == "unified"  # 1D families: one draw for all frames, as trained
        assert patterns["mix[kt-gaussian-1d]"] == "frame-specific"
        assert ads["vs_best_baseline"]["volumes"] == 2
        assert rows[1]["vs_best_baseline"] is None
        # The classic context rows draw the kt-equispaced family with the same seeds as the kt-equi row.
        assert rows[5]["sampler"] == "kt-equispaced"
        assert rows[5]["distinct_masks"] == rows[1]["distinct_masks"]
    text = markdown.read_text()
    assert text.startswith("| sampler | pattern |")
    assert "tiny-ads (ads)" in text


def test_family_masks_seeded_per_volume_and_pattern() -> None:
    common: dict[str, Any] = {
        "frames": FRAMES,
        "width": WIDTH,
        "acceleration": 4.0,
        "num_acs": NUM_ACS,
        "seed": 0,
    }
    kt = family_mask("kt-equispaced", volume=0, slice_index=0, **common)
    assert kt.shape == (FRAMES, WIDTH)
    assert np.all(kt.sum(axis=1) == line_budget(WIDTH, 4.0, NUM_ACS))
    assert kt[:, acs_lines(WIDTH, NUM_ACS)].all()
    assert len({row.tobytes() for row in kt}) == FRAMES  # interleaved over frames
    np.testing.assert_array_equal(kt, family_mask("kt-equispaced", volume=0, slice_index=0, **common))
    assert not np.array_equal(kt, family_mask("kt-equispaced", volume=1, slice_index=0, **common))
    unified = family_mask("random", volume=0, slice_index=0, **common)  # the default
    assert len({row.tobytes() for row in unified}) == 1
    specific = family_mask("random", volume=0, slice_index=0, pattern="frame-specific", **common)
    assert len({row.tobytes() for row in specific}) > 1


def test_a_static_recon_bundle_as_baseline_is_refused(tmp_path: Path, setup: dict[str, Path]) -> None:
    from kadapt.bundles import Manifest, write_bundle

    template = Manifest.model_validate_json((setup["models"] / "kt-equi" / "1" / "manifest.json").read_text())
    static = template.model_copy(update={"name": "static", "training": {"sampler": "kt-equispaced"}})
    write_bundle(
        tmp_path / "models", static, {"model.onnx": setup["models"] / "kt-equi" / "1" / "model.onnx"}
    )
    settings = DynamicBenchSettings(
        data=setup["data"], bundles=(tmp_path / "models" / "static" / "1",), quick=True
    )
    with pytest.raises(BundleError, match="not a dynamic vsharp bundle"):
        run_dynamic_benchmark(settings)
