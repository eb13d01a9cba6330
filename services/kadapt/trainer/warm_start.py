"""``--init CHECKPOINT``: start a run from the weights of an earlier one (fine-tuning, a second cosine cycle
at a lower learning rate, post-training on another mask policy), recorded in the bundle's manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kadapt.errors import InvalidInputError, NotFoundError


def warm_start(model: nn.Module, checkpoint: Path, *, load: bool = True) -> dict[str, Any]:
    """Load the ``"model"`` state dict of a trainer checkpoint (``best.pt`` / ``last.pt``) into ``model``
    (strict: same architecture and settings); returns ``{path, sha256, epoch}`` for the manifest.

    ``load=False`` (a ``--resume`` of a run that began with ``--init``: the weights come from ``last.pt``)
    only checks the file and returns the record, so the manifest keeps the run's origin."""
    if not checkpoint.is_file():
        raise NotFoundError(f"--init checkpoint {checkpoint} does not exist")
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise InvalidInputError(f"--init {checkpoint} is not a kadapt trainer checkpoint (no 'model' state)")
    if not load:
        return _record(checkpoint, payload)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise InvalidInputError(
            f"--init {checkpoint} does not fit this model (same --model, config and --smp needed): {error}"
        ) from error
    return _record(checkpoint, payload)


def _record(checkpoint: Path, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": str(checkpoint),
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "epoch": payload.get("epoch"),
    }
