"""MoDL: model-based deep learning with K unrolls of a shared denoiser and CG data consistency.

Seed 001 eq. 5-7 and seed 000 section 3.1 (MNet's reconstructor): with ``A = M F S`` the SENSE operator
(:mod:`kadapt.nn.physics`), MoDL alternates a learned denoiser ``D`` and the regularised data-consistency
solve

    ``x_{k+1} = (A^H A + lambda I)^-1 (A^H y + lambda D(x_k))``,     ``x_0 = A^H y``,

for ``K`` unrolls with the same ``D`` weights in every unroll and a learnable ``lambda > 0`` (0.05 at
initialisation in the reference code). The inverse is a conjugate gradient with a fixed iteration count
(seed 000 stopped at tolerance 5e-5; a fixed count keeps the graph exportable).

Every reconstruction model in kadapt follows :class:`ReconModel`: ``model(masked_kspace, mask, sens)``
with real tensors -> complex image ``(B, H, W, 2)``; :func:`magnitude` turns that into ``(B, H, W)``.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional

from kadapt.errors import InvalidInputError
from kadapt.nn.physics import complex_abs, conjugate_gradient, sense_adjoint, sense_normal
from kadapt.nn.unet import UNet, channels_last_to_image, image_to_channels

__all__ = ["MoDL", "ReconModel", "ResidualDenoiser", "conv_stack", "magnitude"]

DenoiserKind = Literal["cnn", "unet"]


class ReconModel(Protocol):
    """The calling convention of every kadapt reconstruction model (MoDL, U-Net, vSHARP, ...).

    ``masked_kspace`` ``(B, C, H, W, 2)`` acquired multi-coil k-space, zero where not sampled;
    ``mask`` float 0/1 broadcastable to ``(B, 1, H, W, 1)`` (``(B, 1, 1, W, 1)`` for line masks);
    ``sens`` ``(B, C, H, W, 2)`` coil sensitivities. Returns the complex image ``(B, H, W, 2)``.
    """

    def __call__(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor: ...


def magnitude(image: Tensor) -> Tensor:
    """Magnitude image ``(B, H, W)`` of a model output ``(B, H, W, 2)``."""
    return complex_abs(image)


def conv_stack(channels: int = 64, num_layers: int = 5) -> nn.Sequential:
    """MoDL's CNN body without BatchNorm: ``num_layers`` 3x3 convs, ReLU between them.

    ``(B, 2, H, W) -> (B, 2, H, W)``: conv 2->channels, (num_layers - 2) x conv channels->channels,
    conv channels->2, a ReLU after every conv but the last. The last conv starts at zero, so a fresh
    :class:`ResidualDenoiser` is the identity and an untrained MoDL starts as regularised SENSE.
    """
    if num_layers < 2 or channels < 1:
        raise InvalidInputError(
            f"conv_stack needs num_layers >= 2 and channels >= 1, got {num_layers}, {channels}"
        )
    layers: list[nn.Module] = [nn.Conv2d(2, channels, kernel_size=3, padding=1), nn.ReLU()]
    for _ in range(num_layers - 2):
        layers += [nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.ReLU()]
    last = nn.Conv2d(channels, 2, kernel_size=3, padding=1)
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class ResidualDenoiser(nn.Module):
    """``D(x) = x + body(x)`` on complex images: ``(B, H, W, 2) -> (B, H, W, 2)``.

    ``body`` maps ``(B, 2, H, W) -> (B, 2, H, W)`` (channel 0 real, 1 imaginary), e.g. :func:`conv_stack`
    or ``UNet(2, 2, ...)``.
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, image: Tensor) -> Tensor:
        """``(B, H, W, 2) -> (B, H, W, 2)``."""
        return image + channels_last_to_image(self.body(image_to_channels(image)))


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class MoDL(nn.Module):
    """MoDL reconstruction (seed 001 eq. 7, seed 000 section 3.1), a :class:`ReconModel`.

    ``num_unrolls`` K (5 by default; seed 000 used 4), ``cg_iterations`` per data-consistency solve,
    ``lambda_init`` the initial regularisation weight (kept positive through a softplus), and the
    denoiser: ``"cnn"`` (:func:`conv_stack` with ``denoiser_channels`` / ``denoiser_layers``) or
    ``"unet"`` (``UNet(2, 2, chans=denoiser_channels, num_pool_layers=unet_pool_layers)``), residual in
    both cases and shared across unrolls.
    """

    def __init__(
        self,
        num_unrolls: int = 5,
        cg_iterations: int = 10,
        lambda_init: float = 0.05,
        denoiser: DenoiserKind = "cnn",
        denoiser_channels: int = 64,
        denoiser_layers: int = 5,
        unet_pool_layers: int = 4,
    ) -> None:
        super().__init__()
        if num_unrolls < 1 or cg_iterations < 1:
            raise InvalidInputError(
                f"MoDL needs num_unrolls >= 1 and cg_iterations >= 1, got {num_unrolls}, {cg_iterations}"
            )
        if not lambda_init > 0.0:
            raise InvalidInputError(f"MoDL lambda_init must be > 0, got {lambda_init}")
        body: nn.Module
        if denoiser == "cnn":
            body = conv_stack(denoiser_channels, denoiser_layers)
        elif denoiser == "unet":
            body = UNet(2, 2, chans=denoiser_channels, num_pool_layers=unet_pool_layers)
        else:
            raise InvalidInputError(f"MoDL denoiser must be 'cnn' or 'unet', got {denoiser!r}")
        self.num_unrolls = num_unrolls
        self.cg_iterations = cg_iterations
        self.denoiser = ResidualDenoiser(body)
        # softplus keeps lambda > 0 with a smooth gradient everywhere (abs would stall at 0).
        self.lambda_raw = nn.Parameter(torch.tensor(_inverse_softplus(lambda_init)))

    @property
    def regularisation(self) -> Tensor:
        """The current lambda, a positive scalar tensor ``()``."""
        return functional.softplus(self.lambda_raw)

    def unroll_outputs(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> list[Tensor]:
        """All iterates ``[x_1, ..., x_K]``, each ``(B, H, W, 2)`` (inputs as in :meth:`forward`).

        Intermediate outputs feed deep-supervision losses; the last one is the reconstruction.
        """
        lam = self.regularisation.to(masked_kspace.dtype)
        zero_filled = sense_adjoint(masked_kspace, sens, mask)

        def normal_plus_lambda(image: Tensor) -> Tensor:
            return sense_normal(image, sens, mask) + lam * image

        image = zero_filled
        outputs: list[Tensor] = []
        for _ in range(self.num_unrolls):
            denoised = self.denoiser(image)
            rhs = zero_filled + lam * denoised
            # Warm start at the denoised image: with lambda large the solution is close to it.
            image = conjugate_gradient(normal_plus_lambda, rhs, denoised, self.cg_iterations)
            outputs.append(image)
        return outputs

    def forward(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        """``masked_kspace (B, C, H, W, 2)``, ``mask`` broadcastable to ``(B, 1, H, W, 1)``,
        ``sens (B, C, H, W, 2)`` -> image ``(B, H, W, 2)`` (the last unroll)."""
        return self.unroll_outputs(masked_kspace, mask, sens)[-1]
