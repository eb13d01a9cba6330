"""torchrun / DDP: the environment contract, per-rank streams, and real two-process runs on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from kadapt.bundles import load_bundle
from kadapt.errors import InvalidInputError
from kadapt.nn.export import relative_l2_error
from kadapt.trainer.config import build_model, make_config
from kadapt.trainer.data import MaskSampler, SliceDataset, make_batch, validation_masks
from kadapt.trainer.distributed import (
    DistributedContext,
    context_from_environment,
    rank_generator,
    restore_rank_generator,
    torch_threads,
)

from .conftest import ACCELERATIONS, MASKS

TORCHRUN_TIMEOUT = 180  # seconds; a run takes about 10 s on two idle cores


def test_environment_without_torchrun_is_one_process() -> None:
    assert context_from_environment({}) == DistributedContext()
    assert context_from_environment({"WORLD_SIZE": "1", "RANK": "0"}) == DistributedContext()
    assert not DistributedContext().enabled
    assert DistributedContext().is_main


def test_torchrun_environment_is_read_and_checked() -> None:
    environ = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    context = context_from_environment(environ)
    assert context == DistributedContext(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert context.enabled
    assert not context.is_main
    with pytest.raises(InvalidInputError, match="RANK is not set"):
        context_from_environment({"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(InvalidInputError, match="WORLD_SIZE='two'"):
        context_from_environment({"WORLD_SIZE": "two"})
    with pytest.raises(InvalidInputError, match=r"RANK=2 is outside \[0, WORLD_SIZE=2\)"):
        context_from_environment({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    assert torch_threads(DistributedContext(local_world_size=64)) == 1


def test_rank_streams_are_seeded_by_seed_and_rank() -> None:
    def draws(rng: np.random.Generator) -> list[int]:
        return [int(v) for v in rng.integers(1 << 30, size=4)]

    # Rank 0 continues the single-process stream; other ranks and seeds get their own.
    assert draws(rank_generator(7, 0)) == draws(np.random.default_rng(7))
    assert draws(rank_generator(7, 1)) != draws(rank_generator(7, 0))
    assert draws(rank_generator(8, 1)) != draws(rank_generator(7, 1))
    states = [rank_generator(7, rank).bit_generator.state for rank in range(2)]
    restored = restore_rank_generator(states, 7, DistributedContext(rank=1, world_size=2), step=5)
    assert draws(restored) == draws(rank_generator(7, 1))
    regrouped = restore_rank_generator(states, 7, DistributedContext(rank=1, world_size=3), step=5)
    assert draws(regrouped) == draws(np.random.default_rng([7, 1, 5]))


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    torchrun = Path(sys.executable).parent / "torchrun"
    environ = {
        key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    }
    environ["PYTHONFAULTHANDLER"] = "1"  # a rank that aborts prints every thread's stack
    environ["OMP_NUM_THREADS"] = "1"  # torchrun's default for several processes, without its warning
    return subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=TORCHRUN_TIMEOUT,
        check=False,
    )


def _failure(completed: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed torchrun without faulthandler's list of extension modules, which would
    otherwise fill the tail the assertion shows and hide the rank's own error."""
    lines = [line for line in completed.stderr.splitlines() if not line.startswith("Extension modules:")]
    return "\n".join(lines)[-6000:]


def _train_command(data: Path, out: Path, runs: Path, *extra: str) -> list[str]:
    return [
        "-m", "kadapt.cli.main", "train", "recon", "--model", "unet", "--data", str(data), "--R", "4", "3",
        "--masks", ",".join(MASKS), "--out", str(out), "--runs", str(runs), "--quick", *extra,
    ]  # fmt: skip


def _single_process_states(data: Path, steps: int, seed: int = 0) -> list[dict[str, object]]:
    """Where each rank's stream should be after ``steps`` quick steps (one pick and one mask a step)."""
    train = SliceDataset(data, "train", 4)
    states = []
    for rank in range(2):
        rng = rank_generator(seed, rank)
        sampler = MaskSampler(MASKS, ACCELERATIONS, 32, 4, rng)
        for _ in range(steps):
            rng.choice(len(train), size=1, replace=False)
            sampler.draw(1)
        states.append(rng.bit_generator.state)
    return states


@pytest.mark.integration
def test_torchrun_two_cpu_ranks_write_one_bundle_and_resume(tiny_dataset: Path, tmp_path: Path) -> None:
    repository, runs = tmp_path / "models", tmp_path / "runs"
    first = _torchrun(*_train_command(tiny_dataset, repository / "unet" / "1", runs), cwd=tmp_path)
    assert first.returncode == 0, _failure(first)
    assert first.stderr.count("wrote ") == 1, _failure(first)  # rank 0 reports, rank 1 stays quiet
    assert sorted(path.relative_to(repository).as_posix() for path in repository.rglob("*")) == [
        "unet", "unet/1", "unet/1/manifest.json", "unet/1/model.onnx", "unet/1/model.pt",
    ]  # fmt: skip
    manifest = load_bundle(repository, "unet", "1").manifest
    assert (manifest.training["world_size"], manifest.training["steps"], manifest.training["epochs"]) == (
        2,
        2,
        1,
    )
    assert manifest.validation["onnx_max_relative_l2"] <= 1e-4  # type: ignore[operator]
    assert manifest.validation["torchscript_max_relative_l2"] <= 1e-4  # type: ignore[operator]
    checkpoint = torch.load(runs / "last.pt", weights_only=True)
    # Each rank drew its own batches and masks from (seed, rank); rank 0's is the single-process stream.
    assert checkpoint["mask_rngs"] == _single_process_states(tiny_dataset, steps=2)
    assert checkpoint["mask_rng"] == checkpoint["mask_rngs"][0]

    # Parity of the written graph with the weights rank 0 saved, on a real validation slice.
    session = onnxruntime.InferenceSession(
        str(load_bundle(repository, "unet", "1").file("model.onnx")), providers=["CPUExecutionProvider"]
    )
    config = make_config("unet", tiny_dataset, ACCELERATIONS, MASKS, repository / "unet" / "x", quick=True)
    model = build_model(config.model, config.model_params)
    model.load_state_dict(torch.load(runs / "best.pt", weights_only=True)["model"])
    model.eval()
    mask = validation_masks(MASKS, ACCELERATIONS, 32, 4, seed=5)[("equispaced", 4.0)]
    batch = make_batch([SliceDataset(tiny_dataset, "val", 4).slices[1]], mask[None, :])
    (served,) = session.run(
        None,
        {
            "masked_kspace": batch.masked_kspace.numpy(),
            "mask": batch.mask.numpy(),
            "sens": batch.sens.numpy(),
        },
    )
    with torch.no_grad():
        expected = model(batch.masked_kspace, batch.mask, batch.sens).numpy()
    assert relative_l2_error(expected, served) <= 1e-4

    resumed = _torchrun(
        *_train_command(tiny_dataset, repository / "unet" / "2", runs, "--resume", "--epochs", "2"),
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, _failure(resumed)
    after = torch.load(runs / "last.pt", weights_only=True)
    assert (after["epoch"], after["step"]) == (2, 4)
    assert after["mask_rngs"] == _single_process_states(tiny_dataset, steps=4)  # both streams carried on
    assert all(int(state["step"]) == 4 for state in after["optimiser"]["state"].values())
    assert load_bundle(repository, "unet", "2").manifest.training["steps"] == 4


@pytest.mark.integration
def test_ddp_averages_gradients_of_vsharp_with_smp(tiny_dataset: Path, tmp_path: Path) -> None:
    """Two ranks on different slices and masks end two steps with identical parameters (DDP reduced the
    gradients through the deep-supervision forward, every parameter included)."""
    probe = Path(__file__).with_name("ddp_probe.py")
    completed = _torchrun(str(probe), str(tiny_dataset), cwd=tmp_path)
    assert completed.returncode == 0, _failure(completed)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["world_size"] == 2
    rank0, rank1 = report["ranks"]
    assert rank0["losses"] != rank1["losses"]  # each rank saw its own batch
    assert rank0["initial"] == rank1["initial"]  # same seed, same initialisation
    assert rank0["checksums"] == rank1["checksums"]  # averaged gradients, identical steps
    assert rank0["checksums"] != rank0["initial"]
