"""vSHARP 2D+t (seed 004 section 2.4 with 3D U-Net denoisers for cine; handbook "ADS cascade + vSHARP").

The same unrolled ADMM as :class:`kadapt.nn.vsharp.VSharp2D` (whose loop this model reuses through its
hooks) on dynamic data: ``x_0 = A^H y`` per frame, ``z``-steps by a :class:`kadapt.nn.unet3d.UNet3D` on
``[z, x, u / rho]`` over ``(T, H, W)`` (6 channels), ``x``-steps of learned gradient descent with data
consistency per frame (``A^H A x - A^H y``, :func:`kadapt.nn.physics_dynamic.dynamic_sense_normal`, the 1D
fast path for line masks), dual ascent on ``u``. The Lagrange-multiplier initializer ``u_0 = G_psi(x_0)``
is vSHARP's 2D dilated-conv stack applied frame by frame (frames folded into the batch).

Layout (dynamic.md C2): masked k-space ``(B, T, C, H, W, 2)``, mask ``(B, T, W)`` or ``(B, T, H, W)`` float
0/1, static sens ``(B, C, H, W, 2)``, images ``(B, T, H, W, 2)``. ``normalise`` divides by the standard
deviation of ``A^H y`` per item and scales every output back. The SMP wraps it unchanged:
``kadapt.nn.smp.SensitivityRefinedRecon(VSharpDynamic(...), SensitivityMapPredictor(...))`` refines the
static ``(B, C, H, W, 2)`` maps (estimated from the frame-averaged ACS) before the reconstruction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kadapt.nn.physics_dynamic import (
    dynamic_sense_adjoint,
    dynamic_sense_normal,
    fold_frames,
    unfold_frames,
)
from kadapt.nn.unet import channels_last_to_image, image_to_channels
from kadapt.nn.unet3d import UNet3D, channels_to_image_3d, image_to_channels_3d
from kadapt.nn.vsharp import VSharp2D

__all__ = ["VSharpDynamic"]


class VSharpDynamic(VSharp2D):
    """vSHARP 2D+t: ``model(masked_kspace (B, T, C, H, W, 2), mask (B, T, W), sens (B, C, H, W, 2))`` -> image
    ``(B, T, H, W, 2)``; :meth:`unroll_outputs` gives every ADMM step (seed 004 eq. 5 deep supervision).

    Defaults are small for CPU training at 8 x 96 x 96 (the paper uses 8-12 steps and wider U-Nets);
    ``pool_frames`` pools T in the 3D U-Net too (H / W only by default, T = 8 is short); ``factorised`` uses
    (2+1)D convolutions in it (:class:`kadapt.nn.unet3d.Conv2Plus1D`, several times faster on CPU).
    """

    def __init__(
        self,
        num_steps: int = 4,
        num_gradient_steps: int = 2,
        chans: int = 8,
        num_pool_layers: int = 2,
        drop_prob: float = 0.0,
        share_denoiser: bool = True,
        share_rho: bool = False,
        rho_init: float = 0.1,
        step_size_init: float = 1.0,
        initializer_channels: Sequence[int] = (8, 8, 16),
        initializer_dilations: Sequence[int] = (1, 2, 4),
        normalise: bool = True,
        pool_frames: bool = False,
        factorised: bool = True,
    ) -> None:
        # read by _build_denoiser during VSharp2D.__init__
        self._pool_frames, self._factorised = pool_frames, factorised
        super().__init__(
            num_steps=num_steps,
            num_gradient_steps=num_gradient_steps,
            chans=chans,
            num_pool_layers=num_pool_layers,
            drop_prob=drop_prob,
            share_denoiser=share_denoiser,
            share_rho=share_rho,
            rho_init=rho_init,
            step_size_init=step_size_init,
            initializer_channels=initializer_channels,
            initializer_dilations=initializer_dilations,
            normalise=normalise,
        )

    def _build_denoiser(self, chans: int, num_pool_layers: int, drop_prob: float) -> nn.Module:
        return UNet3D(
            6,
            2,
            chans=chans,
            num_pool_layers=num_pool_layers,
            drop_prob=drop_prob,
            pool_frames=self._pool_frames,
            factorised=self._factorised,
        )

    def _zero_filled(self, masked_kspace: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
        return dynamic_sense_adjoint(masked_kspace, sens, mask)

    def _data_gradient(self, x: Tensor, measured: Tensor, rhs: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
        # A^H (A x - y) = A^H A x - A^H y with A^H y (rhs) computed once; M is 0/1 so both forms agree.
        return dynamic_sense_normal(x, sens, mask) - rhs

    def _initial_dual(self, x: Tensor) -> Tensor:
        folded = image_to_channels(fold_frames(x))  # (B * T, 2, H, W)
        return unfold_frames(channels_last_to_image(self.initializer(folded)), x.shape[0])

    def _denoise(self, step: int, z: Tensor, x: Tensor, scaled_dual: Tensor) -> Tensor:
        denoiser = self.denoisers[0 if self.share_denoiser else step]
        stacked = torch.cat([z, x, scaled_dual], dim=-1)  # (B, T, H, W, 6)
        denoised: Tensor = denoiser(image_to_channels_3d(stacked))
        return channels_to_image_3d(denoised)

    def unroll_outputs(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> list[Tensor]:
        """Every ADMM step's image ``[x_1, ..., x_T]``, each ``(B, T, H, W, 2)``; the last is the result.

        masked_kspace ``(B, T, C, H, W, 2)`` (zero where not sampled), mask ``(B, T, W)`` or ``(B, T, H, W)``,
        sens ``(B, C, H, W, 2)`` (unit RSS over coils, static over frames).
        """
        return super().unroll_outputs(masked_kspace, mask, sens)

    def forward(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        """``(B, T, C, H, W, 2)``, mask ``(B, T, W)`` / ``(B, T, H, W)``, ``(B, C, H, W, 2)`` -> image
        ``(B, T, H, W, 2)``."""
        return self.unroll_outputs(masked_kspace, mask, sens)[-1]
