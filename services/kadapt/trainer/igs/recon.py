"""A frozen learned reconstruction as an IGS :data:`~kadapt.trainer.igs.pipeline.Reconstructor`.

kadapt's recon models (the ``ReconModel`` convention of :mod:`kadapt.nn.modl`: ``UNetRecon``, MoDL,
vSHARP, or a recon bundle's TorchScript wrapped by ``kadapt.trainer.sampler_config.FrozenBundleRecon``)
take ``(masked_kspace (B, C, H, W, 2), mask (B, 1, 1, W, 1), sens (B, C, H, W, 2)) -> image (B, H, W, 2)``
in the ACS-normalised scale of docs/trainer.md ("Data, masks and normalisation"). :class:`LearnedRecon`
supplies what the IGS data interface does not carry, from the ACS block of the masked k-space itself: the
ACS scale (:func:`kadapt.kspace.preprocess.acs_scale`) and the ACS coil maps
(:func:`kadapt.kspace.coils.acs_sensitivities`). Every IGS pattern holds the ACS block, so both are the same
for every pattern (no gradient needed through them); the mask gradient flows through the masked k-space
and the mask input. The output magnitude is scaled back to the data's scale, like :func:`zero_filled_rss`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from kadapt.errors import InvalidInputError
from kadapt.kspace.coils import acs_sensitivities
from kadapt.kspace.preprocess import acs_scale
from kadapt.nn.losses import complex_magnitude

__all__ = ["LearnedRecon"]

ReconModel = Callable[[Tensor, Tensor, Tensor], Tensor]


class LearnedRecon:
    """``(masked_kspace (B, C, H, W) complex64, mask (W,) float) -> magnitude (B, H, W)`` through the frozen
    ``model`` (eval mode) with per-item ACS scale and ACS maps of ``num_acs`` lines (module docstring)."""

    def __init__(self, model: ReconModel, num_acs: int) -> None:
        if isinstance(model, nn.Module) and model.training:
            raise InvalidInputError(f"{type(model).__name__} is in training mode; call .eval() on the recon")
        if num_acs < 1:
            raise InvalidInputError(f"LearnedRecon needs num_acs >= 1, got {num_acs}")
        self.model = model
        self.num_acs = num_acs

    def __call__(self, masked_kspace: Tensor, mask: Tensor) -> Tensor:
        if not masked_kspace.is_complex() or masked_kspace.ndim != 4:
            raise InvalidInputError(
                f"LearnedRecon needs complex k-space (B, C, H, W), got {masked_kspace.dtype} "
                f"{tuple(masked_kspace.shape)}"
            )
        raw = masked_kspace.detach().numpy()
        scales = [acs_scale(item, self.num_acs) for item in raw]
        maps = np.stack(
            [acs_sensitivities(item / s, self.num_acs) for item, s in zip(raw, scales, strict=True)]
        )
        scale = torch.tensor(scales, dtype=torch.float32).view(-1, 1, 1, 1)
        kspace = torch.view_as_real((masked_kspace / scale).to(torch.complex64))
        line_mask = mask.to(torch.float32).view(1, 1, 1, -1, 1).expand(masked_kspace.shape[0], 1, 1, -1, 1)
        sens = torch.view_as_real(torch.from_numpy(maps.astype(np.complex64)))
        image = self.model(kspace, line_mask, sens)
        return complex_magnitude(image) * scale[:, :, :, 0]
