"""vSHARP for 2D (seed 004 section 2.4; Yiasemis et al. 2025, DIRECT's ``VSharpNet``): unrolled ADMM.

vSHARP solves ``min_x 1/2 ||A x - y||^2 + lambda G(x)`` by half-quadratic splitting ``x = z`` and ADMM,
unrolled over ``T`` steps with learned pieces (science.md, "ADS cascade + vSHARP"):

- init: ``x_0 = A^H y`` (SENSE-reduced zero-filled image), ``z_0 = x_0``, ``u_0 = G_psi(x_0)`` from a
  stack of dilated 3x3 convolutions (the Lagrange-multiplier initializer);
- z-step: ``z_{t+1} = D_t([z_t, x_t, u_t / rho_t])``, a U-Net denoiser on 3 complex images (6 channels)
  standing in for the proximal map of ``G``;
- x-step: a few learned gradient steps on ``1/2 ||A x - y||^2 + rho_t/2 ||x - z_{t+1} + u_t / rho_t||^2``,
  i.e. ``x <- x - eta_k (A^H (A x - y) + rho_t (x - z_{t+1}) + u_t)``;
- u-step: ``u_{t+1} = u_t + rho_t (x_{t+1} - z_{t+1})``.

``rho`` (per step or shared) and the step sizes ``eta_k`` are learned and kept positive by a softplus.
Every step's ``x_{t+1}`` is an output; seed 004 eq. 5 weighs their losses by ``10^((j - T) / (T - 1))``
(:func:`kadapt.nn.losses.unrolled_step_weights`).

Layout: real tensors, complex last: masked k-space and sens ``(B, C, H, W, 2)``, mask broadcastable to
``(B, 1, H, W, 1)`` (``(B, 1, 1, W, 1)`` for line masks), images ``(B, H, W, 2)``. :class:`VSharp2D` follows
the :class:`kadapt.nn.modl.ReconModel` convention (``forward`` gives the final image, which is what is
exported); :meth:`VSharp2D.unroll_outputs` gives every step for deep supervision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional

from kadapt.errors import InvalidInputError
from kadapt.nn.losses import unrolled_step_weights
from kadapt.nn.physics import sense_adjoint, sense_forward
from kadapt.nn.unet import UNet, channels_last_to_image, image_to_channels

__all__ = ["LagrangeMultiplierInitializer", "VSharp2D", "unrolled_step_weights"]

#: Floor of the per-item scale the input is normalised by (an all-zero input stays all zero).
SCALE_FLOOR = 1e-12


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class LagrangeMultiplierInitializer(nn.Module):
    """vSHARP's ``u_0 = G_psi(x_0)``: dilated 3x3 convs (ReLU) then a 1x1 conv and a PReLU.

    ``(B, 2, H, W) -> (B, 2, H, W)``. Replication padding of ``dilation`` pixels keeps the size; the
    growing dilations see a wide neighbourhood cheaply (the aliasing of a line mask spreads along ky).
    """

    def __init__(self, channels: Sequence[int] = (32, 32, 64), dilations: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        if len(channels) != len(dilations) or not channels:
            raise InvalidInputError(
                f"initializer channels {tuple(channels)} and dilations {tuple(dilations)} must be non-empty "
                "and of equal length"
            )
        if min(channels) < 1 or min(dilations) < 1:
            raise InvalidInputError(f"initializer channels {tuple(channels)} and dilations must be >= 1")
        layers: list[nn.Module] = []
        previous = 2
        for width, dilation in zip(channels, dilations, strict=True):
            layers += [
                nn.ReplicationPad2d(dilation),
                nn.Conv2d(previous, width, kernel_size=3, dilation=dilation),
                nn.ReLU(),
            ]
            previous = width
        layers += [nn.Conv2d(previous, 2, kernel_size=1), nn.PReLU()]
        self.layers = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        """``(B, 2, H, W) -> (B, 2, H, W)``."""
        result: Tensor = self.layers(image)
        return result


class VSharp2D(nn.Module):
    """vSHARP (2D), a :class:`kadapt.nn.modl.ReconModel`: ``model(masked_kspace, mask, sens) -> image``.

    ``num_steps`` T ADMM steps (8, seed 004), ``num_gradient_steps`` learned gradient steps per x-step (3);
    the denoiser ``UNet(6, 2, chans, num_pool_layers, drop_prob)`` is shared across steps unless
    ``share_denoiser=False``; ``rho`` is per step unless ``share_rho=True``; ``rho_init`` / ``step_size_init``
    are the initial penalty and gradient step sizes. ``normalise`` divides the data by the standard
    deviation of ``A^H y`` per item and scales the outputs back (the U-Nets then see unit-scale images).
    """

    def __init__(
        self,
        num_steps: int = 8,
        num_gradient_steps: int = 3,
        chans: int = 32,
        num_pool_layers: int = 4,
        drop_prob: float = 0.0,
        share_denoiser: bool = True,
        share_rho: bool = False,
        rho_init: float = 0.1,
        step_size_init: float = 1.0,
        initializer_channels: Sequence[int] = (32, 32, 64),
        initializer_dilations: Sequence[int] = (1, 2, 4),
        normalise: bool = True,
    ) -> None:
        super().__init__()
        if num_steps < 1 or num_gradient_steps < 1:
            raise InvalidInputError(
                f"VSharp2D needs num_steps, num_gradient_steps >= 1, got {num_steps}, {num_gradient_steps}"
            )
        if not (rho_init > 0.0 and step_size_init > 0.0):
            raise InvalidInputError(
                f"rho_init ({rho_init}) and step_size_init ({step_size_init}) must be > 0"
            )
        self.num_steps = num_steps
        self.num_gradient_steps = num_gradient_steps
        self.share_denoiser = share_denoiser
        self.normalise = normalise
        self.denoisers = nn.ModuleList(
            self._build_denoiser(chans, num_pool_layers, drop_prob)
            for _ in range(1 if share_denoiser else num_steps)
        )
        self.initializer = LagrangeMultiplierInitializer(initializer_channels, initializer_dilations)
        # softplus keeps rho and the step sizes positive with a gradient everywhere (DIRECT keeps them
        # positive only through its truncated-normal initialisation).
        self.rho_raw = nn.Parameter(torch.full((1 if share_rho else num_steps,), _inverse_softplus(rho_init)))
        self.step_size_raw = nn.Parameter(
            torch.full((num_gradient_steps,), _inverse_softplus(step_size_init))
        )

    @property
    def rho(self) -> Tensor:
        """Penalties ``(T,)`` (or ``(1,)`` when shared), positive."""
        return functional.softplus(self.rho_raw)

    @property
    def step_sizes(self) -> Tensor:
        """Gradient step sizes ``(num_gradient_steps,)``, positive."""
        return functional.softplus(self.step_size_raw)

    def step_weights(self) -> list[float]:
        """Seed 004 eq. 5 loss weights of :meth:`unroll_outputs`, ``10^((j - T) / (T - 1))``, ``j = 1..T``."""
        return unrolled_step_weights(self.num_steps)

    # Hooks: the ADMM loop below is shared with the 2D+t model (kadapt.nn.vsharp_dynamic), which overrides
    # these to work on (B, T, ...) tensors.
    def _build_denoiser(self, chans: int, num_pool_layers: int, drop_prob: float) -> nn.Module:
        return UNet(6, 2, chans=chans, num_pool_layers=num_pool_layers, drop_prob=drop_prob)

    def _zero_filled(self, masked_kspace: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
        return sense_adjoint(masked_kspace, sens, mask)

    def _data_gradient(self, x: Tensor, measured: Tensor, rhs: Tensor, sens: Tensor, mask: Tensor) -> Tensor:
        # Gradient of 1/2 ||A x - y||^2; rhs = A^H y (unused here, the 2D+t model uses A^H A x - A^H y).
        return sense_adjoint(sense_forward(x, sens, mask) - measured, sens, mask)

    def _initial_dual(self, x: Tensor) -> Tensor:
        return channels_last_to_image(self.initializer(image_to_channels(x)))

    def _denoise(self, step: int, z: Tensor, x: Tensor, scaled_dual: Tensor) -> Tensor:
        denoiser = self.denoisers[0 if self.share_denoiser else step]
        stacked = torch.cat([z, x, scaled_dual], dim=-1)  # (B, H, W, 6): z, x, u / rho as re/im pairs
        denoised: Tensor = denoiser(stacked.permute(0, 3, 1, 2))
        return channels_last_to_image(denoised)

    def unroll_outputs(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> list[Tensor]:
        """Every ADMM step's image ``[x_1, ..., x_T]``, each ``(B, H, W, 2)``; the last is the reconstruction.

        masked_kspace ``(B, C, H, W, 2)`` (zero where not sampled), mask broadcastable to
        ``(B, 1, H, W, 1)``, sens ``(B, C, H, W, 2)`` (unit RSS over coils).
        """
        zero_filled = self._zero_filled(masked_kspace, sens, mask)
        if self.normalise:
            dims = tuple(range(1, zero_filled.ndim))
            scale = zero_filled.std(dim=dims, keepdim=True).clamp_min(SCALE_FLOOR)
            measured = masked_kspace / scale.unsqueeze(1)
            x = zero_filled / scale
        else:
            scale = torch.ones((), dtype=zero_filled.dtype, device=zero_filled.device)
            measured = masked_kspace
            x = zero_filled
        rhs = x
        z = x
        u = self._initial_dual(x)
        rho_all = self.rho.to(x.dtype)
        step_sizes = self.step_sizes.to(x.dtype)
        outputs: list[Tensor] = []
        for step in range(self.num_steps):
            rho = rho_all[0 if rho_all.shape[0] == 1 else step]
            z = self._denoise(step, z, x, u / rho)
            for gradient_step in range(self.num_gradient_steps):
                # Gradient of 1/2 ||A x - y||^2 + rho/2 ||x - z + u/rho||^2 (the x-step objective).
                data_gradient = self._data_gradient(x, measured, rhs, sens, mask)
                x = x - step_sizes[gradient_step] * (data_gradient + rho * (x - z) + u)
            outputs.append(x * scale)
            u = u + rho * (x - z)
        return outputs

    def forward(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        """``masked_kspace (B, C, H, W, 2)``, ``mask`` broadcastable to ``(B, 1, H, W, 1)``,
        ``sens (B, C, H, W, 2)`` -> image ``(B, H, W, 2)`` (the last ADMM step)."""
        return self.unroll_outputs(masked_kspace, mask, sens)[-1]
