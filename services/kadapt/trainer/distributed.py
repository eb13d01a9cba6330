"""torchrun / DistributedDataParallel for ``kadapt train recon`` (architecture.md section 8: no home-made
cluster code, training scales with ``torchrun``).

Launched by torchrun, every process sees ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (and
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); :func:`context_from_environment` reads them and
:func:`start_distributed` joins the process group (``gloo`` on CPU, ``nccl`` on CUDA with the local
rank's device). Without them (``WORLD_SIZE`` unset or 1) everything here is a no-op and training runs
in one process exactly as before.

What stays per rank and what is shared:

- each rank draws its own batches and masks from :func:`rank_generator` ``(seed, rank)``; rank 0's
  stream is the single-process one, ``default_rng(seed)``;
- parameters start identical on every rank (same seed; DDP broadcasts rank 0's anyway) and DDP
  averages the gradients, so the optimiser steps agree;
- rank 0 alone validates and writes checkpoints, TensorBoard logs and the bundle; the other ranks wait
  at :func:`barrier`.

Run: ``torchrun --standalone --nproc_per_node N -m kadapt.cli.main train recon ...`` (docs/trainer.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
from torch import distributed, nn
from torch.nn.parallel import DistributedDataParallel

from kadapt.errors import InvalidInputError, InvalidStateError

T = TypeVar("T")

#: How long a rank waits in a collective (rank 0 validating or exporting while the others sit at a barrier).
COLLECTIVE_TIMEOUT = timedelta(minutes=60)
#: Torch threads per process at most (the two-core machines this trainer is sized for).
MAX_THREADS = 2
ENVIRONMENT_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a torchrun job: ``rank`` of ``world_size`` processes, ``local_rank`` of
    ``local_world_size`` on this node. The default is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True when several processes train together (DDP)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates and writes checkpoints, logs and the bundle."""
        return self.rank == 0


def _environment_int(environ: Mapping[str, str], key: str, default: int | None) -> int:
    raw = environ.get(key)
    if raw is None or raw == "":
        if default is None:
            raise InvalidInputError(f"WORLD_SIZE > 1 but {key} is not set (launch with torchrun)")
        return default
    try:
        return int(raw)
    except ValueError as error:
        raise InvalidInputError(f"environment {key}={raw!r} is not an integer") from error


def context_from_environment(environ: Mapping[str, str] | None = None) -> DistributedContext:
    """The :class:`DistributedContext` torchrun describes in ``environ`` (default ``os.environ``).

    ``WORLD_SIZE`` unset or 1 gives the single-process context; otherwise ``RANK`` and ``LOCAL_RANK`` are
    required and checked (``0 <= RANK < WORLD_SIZE``). Raises :class:`InvalidInputError` naming the bad
    variable.
    """
    environ = os.environ if environ is None else environ
    world_size = _environment_int(environ, "WORLD_SIZE", 1)
    if world_size < 1:
        raise InvalidInputError(f"environment WORLD_SIZE must be >= 1, got {world_size}")
    if world_size == 1:
        return DistributedContext()
    rank = _environment_int(environ, "RANK", None)
    local_rank = _environment_int(environ, "LOCAL_RANK", None)
    local_world_size = _environment_int(environ, "LOCAL_WORLD_SIZE", world_size)
    if not 0 <= rank < world_size:
        raise InvalidInputError(f"environment RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    if not 0 <= local_rank < local_world_size:
        raise InvalidInputError(
            f"environment LOCAL_RANK={local_rank} is outside [0, LOCAL_WORLD_SIZE={local_world_size})"
        )
    return DistributedContext(rank, world_size, local_rank, local_world_size)


def torch_threads(context: DistributedContext) -> int:
    """Intra-op threads for this process: ``min(2, cpu_count)`` shared by the processes of one node, so
    two ranks on two cores do not oversubscribe them."""
    cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores // context.local_world_size))


def start_distributed(context: DistributedContext, device_name: str) -> tuple[torch.device, bool]:
    """Pick this rank's device and, under torchrun, join the process group.

    ``device_name`` ``cpu`` | ``cuda``; several CUDA ranks take ``cuda:LOCAL_RANK`` and the ``nccl``
    backend, CPU ranks ``gloo``. Returns ``(device, owns_group)``: ``owns_group`` is True when this call
    created the process group (then :func:`stop_distributed` must destroy it); a group created by the
    caller is used as it is. Raises :class:`InvalidInputError` for ``cuda`` without a CUDA device, or
    more local ranks than CUDA devices.
    """
    if device_name == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError("device 'cuda' requested but torch sees no CUDA device")
        if context.enabled:
            if context.local_rank >= torch.cuda.device_count():
                raise InvalidInputError(
                    f"LOCAL_RANK={context.local_rank} but torch sees {torch.cuda.device_count()} CUDA devices"
                )
            device = torch.device("cuda", context.local_rank)
            torch.cuda.set_device(device)  # nccl collectives and *_object calls use the current device
        else:
            device = torch.device("cuda")
    else:
        device = torch.device(device_name)
    if not context.enabled or distributed.is_initialized():
        return device, False
    if not distributed.is_available():
        raise InvalidInputError(f"WORLD_SIZE={context.world_size} but this torch has no torch.distributed")
    distributed.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        rank=context.rank,
        world_size=context.world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    return device, True


def stop_distributed(owns_group: bool, *, failed: bool = False) -> None:
    """Destroy the process group :func:`start_distributed` created (no-op otherwise).

    After a success every rank meets at a barrier first. After a failure (``failed``) an ``nccl`` group
    is left alone: its destroy is collective and would hang while the other ranks wait in a collective;
    torchrun ends them once this rank exits. A ``gloo`` group is torn down locally without the barrier
    (an undestroyed gloo group aborts the interpreter at exit).
    """
    if not owns_group or not distributed.is_initialized():
        return
    if failed:
        if distributed.get_backend() != "gloo":
            return
    else:
        # All ranks arrive before any tears its connections down. Without this barrier a rank that
        # finished the last collective first could close its gloo pairs while a peer was still
        # finishing that collective's sends. CI once saw one rank of the two-rank probe abort (SIGABRT)
        # at this point.
        distributed.barrier()
    distributed.destroy_process_group()


def rank_generator(seed: int, rank: int) -> np.random.Generator:
    """The batch and mask generator of ``rank``: ``default_rng([seed, rank])``.

    ``SeedSequence`` ignores trailing zero words, so rank 0 gets exactly ``default_rng(seed)``, the
    stream of a single-process run; every other rank gets an independent stream.
    """
    return np.random.default_rng([seed, rank])


def restore_rank_generator(
    states: list[dict[str, Any]], seed: int, context: DistributedContext, step: int
) -> np.random.Generator:
    """This rank's generator as a checkpoint left it: ``states`` holds every rank's
    ``bit_generator.state`` in rank order. Resumed on another number of ranks, each rank starts a fresh
    stream from ``(seed, rank, step)`` instead (a continuation is undefined then)."""
    if len(states) != context.world_size:
        return np.random.default_rng([seed, context.rank, step])
    rng = rank_generator(seed, context.rank)
    rng.bit_generator.state = states[context.rank]
    return rng


def wrap_model(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """``module`` (already on ``device``) wrapped in :class:`DistributedDataParallel` when several ranks
    train; the module itself otherwise. DDP broadcasts rank 0's parameters and averages gradients."""
    if not context.enabled:
        return module
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(module, device_ids=device_ids)


def barrier(context: DistributedContext, device: torch.device) -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if not context.enabled:
        return
    if device.type == "cuda" and device.index is not None:
        distributed.barrier(device_ids=[device.index])
    else:
        distributed.barrier()


def gather_objects(value: T, context: DistributedContext) -> list[T]:
    """Every rank's picklable ``value``, in rank order, on every rank (``[value]`` in one process)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    distributed.all_gather_object(gathered, value)
    return gathered


def broadcast_from_main(value: T | None, context: DistributedContext) -> T:
    """Rank 0's picklable ``value`` on every rank (the other ranks pass ``None``)."""
    if not context.enabled:
        if value is None:
            raise InvalidStateError("broadcast_from_main needs a value on rank 0")
        return value
    holder: list[Any] = [value]
    distributed.broadcast_object_list(holder, src=0)
    result: T = holder[0]
    return result
