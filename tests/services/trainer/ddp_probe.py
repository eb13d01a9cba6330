"""Run under torchrun by test_trainer_distributed.py: two DDP steps of vSHARP + SMP with each rank on its
own slice and mask stream; rank 0 prints JSON with every rank's loss and parameter checksums."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from kadapt.trainer.config import build_loss, build_model, make_config
from kadapt.trainer.data import MaskSampler, SliceDataset, make_batch
from kadapt.trainer.distributed import (
    context_from_environment,
    gather_objects,
    rank_generator,
    start_distributed,
    stop_distributed,
    wrap_model,
)
from kadapt.trainer.loop import TrainingForward, training_loss


def main(data: Path) -> None:
    context = context_from_environment()
    device, owns_group = start_distributed(context, "cpu")
    failed = True
    try:
        config = make_config(
            "vsharp",
            data,
            (4.0,),
            ("vd-random",),
            data.parent / "probe" / "vsharp" / "1",
            quick=True,
            smp=True,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(config.model, config.model_params, config.smp_params)
        initial = [float(p.detach().double().sum()) for p in model.parameters()]
        step_module = wrap_model(TrainingForward(model, deep_supervision=True), context, device)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        loss = build_loss(config.loss_preset, config.loss_weights)
        dataset = SliceDataset(data, "train", 4)
        rng = rank_generator(config.seed, context.rank)
        sampler = MaskSampler(config.masks, config.accelerations, 32, 4, rng)
        losses = []
        for _ in range(2):  # two steps: DDP refuses a second one if a parameter got no gradient
            _, _, masks = sampler.draw(1)
            batch = make_batch([dataset.slices[context.rank % len(dataset)]], masks)
            total, _ = training_loss(step_module, loss, batch)
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            optimiser.step()
            losses.append(float(total.detach()))
        checksums = [float(p.detach().double().sum()) for p in model.parameters()]
        gathered = gather_objects({"losses": losses, "checksums": checksums, "initial": initial}, context)
        if context.is_main:
            sys.stdout.write(json.dumps({"world_size": context.world_size, "ranks": gathered}) + "\n")
        failed = False
    finally:
        stop_distributed(owns_group, failed=failed)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
