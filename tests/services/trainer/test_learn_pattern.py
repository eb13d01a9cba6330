"""``kadapt learn-pattern igs | diffusion`` and ``kadapt bench tasks`` end to end with ``--quick`` on a tiny
task build (6 volumes: 3 train, 1 val, 2 test; 32 x 32, 2 coils, 2 slices): the bundles are served by the
sampler's own fixed-mask policy with the exact budget at every R, the 2D point scores are an artefact and
no bundle, bad inputs exit 2 naming the value, and the bench writes every row with its paired statistics."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from kadapt.bundles import load_bundle
from kadapt.cli.main import app
from kadapt.data.build import build_dataset
from kadapt.data.task_sources import task_sources
from kadapt.masks import acs_lines, line_budget
from kadapt.sampler.domain.policies import FixedMaskBundlePolicy
from kadapt.schemas import PlanRequest
from kadapt.trainer.bench_tasks_eval import dice_volume, f1_score
from kadapt.trainer.igs import TaskSegmenter
from kadapt.trainer.pattern_diffusion import load_point_scores
from kadapt.trainer.pattern_igs import load_task_model

SIZE, COILS = 32, 2
RATES = ("4", "8", "16")
LOUPE = Path(__file__).resolve().parents[3] / "models" / "loupe" / "1"
runner = CliRunner()


@dataclass(frozen=True)
class Learned:
    data: Path
    repository: Path
    runs: Path


def _invoke(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> Learned:
    """The tiny task build and one quick run of each learn-pattern command."""
    missing = [source.missing_reason() for source in task_sources() if source.missing_reason()]
    if missing:
        pytest.skip(f"labelled anatomy not installed: {missing}")
    root = tmp_path_factory.mktemp("learn-pattern")
    data, repository, runs = root / "tasks", root / "models", root / "runs"
    build_dataset(data, n_volumes=6, size=SIZE, coils=COILS, slices_per_volume=2, seed=2, task="both")
    runs_igs = (
        ("igs-seg", "segmentation", "dice"),
        ("igs-cls", "classification", "cross-entropy"),
        ("igs-recon", "reconstruction", "l1"),
    )
    for name, task, loss in runs_igs:
        _invoke(
            "learn-pattern", "igs", "--data", str(data), "--task", task, "--loss", loss, "--R", *RATES,
            "--quick", "--out", str(repository / name / "1"), "--runs", str(runs / name),
        )  # fmt: skip
    _invoke(
        "learn-pattern", "diffusion", "--data", str(data), "--size", str(SIZE), "--R", *RATES, "--quick",
        "--out", str(repository / "diffusion-lines" / "1"), "--runs", str(runs / "diffusion-lines"),
    )  # fmt: skip
    _invoke(
        "learn-pattern", "diffusion", "--data", str(data), "--size", str(SIZE), "--dim", "2d", "--R", *RATES,
        "--quick", "--out", str(repository / "diffusion-points" / "1"),
        "--runs", str(runs / "diffusion-points"),
        "--score", str(runs / "diffusion-lines" / "score.pt"),
    )  # fmt: skip
    return Learned(data, repository, runs)


def _request(name: str, acceleration: float, num_acs: int) -> PlanRequest:
    return PlanRequest(
        scan_id="test", policy=name, width=SIZE, height=SIZE, coils=COILS, acceleration=acceleration,
        num_acs=num_acs, acquired=tuple(int(ky) for ky in acs_lines(SIZE, num_acs)),
        deadline_unix_ms=time.time() * 1000.0 + 60_000.0,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["igs-seg", "igs-cls", "igs-recon", "diffusion-lines"])
def test_learned_bundles_are_served_by_the_fixed_mask_policy_with_exact_budget(
    learned: Learned, name: str
) -> None:
    bundle = load_bundle(learned.repository, name, "1")
    assert bundle.manifest.kind == "fixed-mask"
    assert bundle.manifest.accelerations == (4.0, 8.0, 16.0)
    policy = FixedMaskBundlePolicy(bundle)
    num_acs = bundle.manifest.num_acs
    served = bundle.manifest.training["served_lines"]
    assert isinstance(served, dict)
    for acceleration in (4.0, 8.0, 16.0):
        lines = list(policy.plan(_request(name, acceleration, num_acs), 0.0).lines)
        assert len(lines) == line_budget(SIZE, acceleration, num_acs)
        assert set(acs_lines(SIZE, num_acs).tolist()) <= set(lines)
        assert lines == served[f"R{acceleration:g}"]


def test_igs_bundles_record_the_task_model_and_validation(learned: Learned) -> None:
    training = load_bundle(learned.repository, "igs-seg", "1").manifest.training
    assert training["method"] == "igs"
    assert training["task"] == "segmentation"
    assert training["loss"] == "dice"
    assert isinstance(training["task_model"], str)
    model, record = load_task_model(Path(training["task_model"]), "segmentation")
    assert isinstance(model, TaskSegmenter)
    assert not model.training
    assert record["steps"] == 3
    validation = load_bundle(learned.repository, "igs-seg", "1").manifest.validation
    assert {"R4", "R16", "centre-only/R16", "equispaced/R16"} <= set(validation)
    assert load_bundle(learned.repository, "igs-recon", "1").manifest.training["task_model"] is None


def test_the_2d_point_pattern_is_an_artefact_not_a_bundle(learned: Learned) -> None:
    assert not (learned.repository / "diffusion-points").exists()
    points = load_point_scores(learned.runs / "diffusion-points" / "point-scores.npy")
    assert points.scores.shape == (SIZE, SIZE)
    assert points.accelerations == (4.0, 8.0, 16.0)
    assert np.all(np.isfinite(points.scores))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["igs", "--task", "detection", "--loss", "dice"], "detection"),
        (["igs", "--task", "classification", "--loss", "dice"], "'dice'"),
        (["igs", "--task", "segmentation", "--loss", "dice", "--num-acs", "2"], "--num-acs 2"),
        (
            ["igs", "--task", "segmentation", "--loss", "dice", "--task-model", "/nonexistent/m.pt"],
            "/nonexistent/m.pt",
        ),
        (["igs", "--task", "reconstruction", "--loss", "l1", "--recon", "nowhere/modl/9"], "modl"),
        (["diffusion", "--dim", "3d"], "3d"),
        (["diffusion", "--size", "30"], "--size 30"),
        (["diffusion", "--score", "/nonexistent/score.pt"], "/nonexistent/score.pt"),
    ],
)
def test_bad_inputs_exit_2_naming_the_value(
    learned: Learned, tmp_path: Path, args: list[str], named: str
) -> None:
    command, rest = args[0], args[1:]
    result = runner.invoke(
        app,
        ["learn-pattern", command, "--data", str(learned.data), "--R", *RATES, "--quick",
         "--out", str(tmp_path / "repo" / "bad" / "1"), "--runs", str(tmp_path / "runs"), *rest],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert named in " ".join(result.output.split())


def test_an_existing_out_is_refused(learned: Learned) -> None:
    result = runner.invoke(
        app,
        ["learn-pattern", "igs", "--data", str(learned.data), "--task", "reconstruction", "--loss", "l1",
         "--R", "4", "--quick", "--out", str(learned.repository / "igs-recon" / "1")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "immutable" in " ".join(result.output.split())


def test_bench_tasks_quick_writes_every_row_with_paired_statistics(learned: Learned, tmp_path: Path) -> None:
    out = tmp_path / "bench-tasks.json"
    patterns = [
        str(learned.repository / name / "1")
        for name in ("igs-seg", "igs-cls", "igs-recon", "diffusion-lines")
    ]
    _invoke(
        "bench", "tasks", "--data", str(learned.data), "--patterns", *patterns,
        "--points", str(learned.runs / "diffusion-points" / "point-scores.npy"),
        "--loupe", str(LOUPE), "--quick", "--threads", "1", "--out", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["kind"] == "kadapt-bench-tasks"
    cells = {(row["evaluation"], row["policy"], row["R"]) for row in result["rows"]}
    line_policies = ["centre-only", "equispaced", "igs-seg", "igs-cls", "igs-recon", "diffusion-lines"]
    for evaluation in ("segmentation", "classification", "recon/zero-filled"):
        for policy in line_policies:
            for rate in (4.0, 8.0, 16.0):
                assert (evaluation, policy, rate) in cells
    for policy in ("diffusion-lines", "diffusion-points", "centre-only", "equispaced"):
        for rate in (4.0, 8.0, 16.0):
            assert ("dps", policy, rate) in cells
    for row in result["rows"]:
        assert row["n_volumes"] == 2
        assert len(row["per_volume"]) == 2
        expected = {"centre-only", "equispaced"} - {row["policy"]}
        assert set(row["paired"]) == expected
        for stats in row["paired"].values():
            for entry in stats.values():
                assert entry["volumes"] == 2
                assert len(entry["interval"]) == 2
    # models/loupe/1 is W = 128: refused at W = 32 with the reason, never silently dropped.
    assert any(s["policy"] == "loupe" and "W" in s["reason"] for s in result["skipped"])
    assert {
        "igs_segmentation_dice",
        "igs_reconstruction_ssim_vs_centre",
        "diffusion_dps_ssim_vs_equispaced",
    } == set(result["done_when"])
    assert len(result["done_when"]["igs_segmentation_dice"]) == 6


def test_volume_dice_and_f1_conventions() -> None:
    truth = np.array([[0, 1, 1], [2, 2, 0]])
    assert dice_volume(truth, truth, classes=4) == 1.0  # class 3 absent from both counts as 1
    predicted = np.array([[0, 1, 0], [2, 0, 0]])
    # class 1: 2*1/(1+2); class 2: 2*1/(1+2); class 3: absent -> 1
    assert dice_volume(predicted, truth, classes=4) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert f1_score(np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.int64)) == 1.0
    assert f1_score(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
