"""Differentiable training losses (torch) that agree with the numpy metrics of :mod:`kadapt.metrics`.

Layouts: magnitude images ``(B, H, W)``; complex images ``(B, H, W, 2)`` (real, imaginary last); coil
k-space ``(B, C, H, W, 2)`` with readout kx along H and phase encode ky along W; a mask broadcastable to
``(B, 1, H, W, 1)``. Every loss reduces to a scalar: the mean over the batch of a per-item value, so a
batch of slices of one volume gives the mean of slice-level values (SSIM is a mean over slices anyway;
:func:`nrmse` and :func:`hfen` equal the numpy volume metrics on one-slice volumes).

The terms and where they come from:

- :func:`nrmse` -- seed 001 eq. 8, ``||x_gt - x_rec||_2 / ||x_gt||_2`` (MNet / MoDL training objective);
  the square root of :func:`kadapt.metrics.nmse`.
- :func:`ssim_loss` -- ``1 - SSIM`` (seed 004 appendix B, "Loss Function Definitions"), fastMRI's SSIM:
  7 x 7 uniform windows, K1 = 0.01, K2 = 0.03, sample covariance ``N / (N - 1)``, mean over the pixels the
  window fits in (scikit-image's border crop), ``data_range`` the volume maximum of the target.
- :func:`l1` -- seed 004 eq. 5's ``L_1``: mean absolute error.
- :func:`hfen` -- seed 004 eq. 5's ``L_HFEN`` (seed 000 section 4, Ravishankar & Bresler 2011): relative
  l2 error of the Laplacian of Gaussian (sigma 1.5, 15 x 15, zero padding) as :func:`kadapt.metrics.hfen`.
- :func:`kspace_nmae` -- seed 004 eq. 5's k-space term ``L_NMAE(y_hat, y) = ||y_hat - y||_1 / ||y||_1``
  with complex moduli, restricted to the sampled entries when a mask is given.
- :class:`DualDomainLoss` -- seed 004 eq. 5: ``sum_j w_j [SSIM + L1 + HFEN](x_j) + 3 NMAE(A x_T, y)``
  with ``w_j = 10^((j - T) / (T - 1))`` (:func:`unrolled_step_weights`); ``DualDomainLoss.seed001()``
  is seed 001's NRMSE objective (optionally mixed with SSIM, as its ICD loss does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from kadapt.errors import InvalidInputError
from kadapt.nn.physics import sense_forward

#: fastMRI / scikit-image SSIM constants (the same as :mod:`kadapt.metrics.image_quality`).
SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

#: HFEN's Laplacian of Gaussian: sigma 1.5 on a 15 x 15 support, as :func:`kadapt.metrics.hfen`.
HFEN_SIGMA = 1.5
HFEN_RADIUS = 7


def unrolled_step_weights(num_steps: int) -> list[float]:
    """Seed 004 eq. 5 weights of the ``num_steps`` unrolled outputs: ``w_j = 10^((j - T) / (T - 1))``.

    ``j = 1 .. T``; the last step weighs 1, the first 0.1. One step gets weight 1.
    """
    if num_steps < 1:
        raise InvalidInputError(f"num_steps must be at least 1, got {num_steps}")
    if num_steps == 1:
        return [1.0]
    return [10.0 ** ((j - num_steps) / (num_steps - 1)) for j in range(1, num_steps + 1)]


def complex_magnitude(image: torch.Tensor) -> torch.Tensor:
    """Modulus of a real-layout complex tensor ``(..., 2)`` -> ``(...)``, with a zero (not NaN) gradient at 0.

    ``sqrt`` has an infinite derivative at 0; exactly-zero pixels (zero-filled background, identical
    inputs in an error) would turn the whole gradient into NaN, so the square root only sees positives.
    """
    if image.ndim < 1 or image.shape[-1] != 2:
        raise InvalidInputError(f"complex images need a last axis of size 2, got shape {tuple(image.shape)}")
    squared = image.pow(2).sum(dim=-1)
    positive = squared > 0
    safe = torch.where(positive, squared, torch.ones_like(squared))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(squared))


def _require_pair(prediction: torch.Tensor, target: torch.Tensor, name: str, min_dims: int) -> None:
    if prediction.shape != target.shape:
        raise InvalidInputError(
            f"{name}: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if prediction.ndim < min_dims:
        raise InvalidInputError(
            f"{name} needs at least {min_dims} dims (B, ...), got {tuple(prediction.shape)}"
        )
    if not (prediction.is_floating_point() and target.is_floating_point()):
        raise InvalidInputError(
            f"{name} needs real floating tensors, got {prediction.dtype} and {target.dtype}"
        )


def _require_magnitudes(prediction: torch.Tensor, target: torch.Tensor, name: str) -> None:
    _require_pair(prediction, target, name, 3)
    if prediction.ndim != 3:
        raise InvalidInputError(
            f"{name} needs magnitude images (B, H, W), got shape {tuple(prediction.shape)}"
        )


def _relative_error(error: torch.Tensor, reference: torch.Tensor, name: str) -> torch.Tensor:
    # error, reference: (B,) per-item norms. An all-zero reference makes the ratio meaningless.
    if bool((reference <= 0).any()):
        raise InvalidInputError(
            f"{name} is undefined for an all-zero target (reference norms {reference.tolist()})"
        )
    return (error / reference).mean()


def nrmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Seed 001 eq. 8 ``||target - prediction||_2 / ||target||_2`` per item, mean over the batch -> scalar.

    prediction, target ``(B, ...)``: magnitudes ``(B, H, W)`` or complex ``(B, H, W, 2)``. On one item it
    is ``sqrt(kadapt.metrics.nmse)``.
    """
    _require_pair(prediction, target, "nrmse", 2)
    error = torch.linalg.vector_norm((prediction - target).flatten(1), dim=1)
    reference = torch.linalg.vector_norm(target.flatten(1), dim=1)
    return _relative_error(error, reference, "nrmse")


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all entries (seed 004 eq. 5's ``L_1``) -> scalar.

    prediction, target ``(B, H, W)`` magnitudes or ``(B, H, W, 2)`` complex (per real/imaginary channel).
    """
    _require_pair(prediction, target, "l1", 2)
    return functional.l1_loss(prediction, target)


def _per_item_data_range(target: torch.Tensor, data_range: torch.Tensor | float | None) -> torch.Tensor:
    """Data range ``(B, 1, 1, 1)``: each target's maximum by default, or the caller's volume maxima."""
    batch = target.shape[0]
    if data_range is None:
        values = target.detach().flatten(1).amax(dim=1)
    else:
        values = torch.as_tensor(data_range, dtype=target.dtype, device=target.device).detach()
        if values.ndim == 0:
            values = values.expand(batch)
        if values.shape != (batch,):
            raise InvalidInputError(
                f"data_range must be a scalar or have shape ({batch},), got shape {tuple(values.shape)}"
            )
    if bool((values <= 0).any()):
        raise InvalidInputError(f"SSIM data_range must be positive, got {values.tolist()}")
    return values.reshape(batch, 1, 1, 1)


def ssim(
    prediction: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor | float | None = None
) -> torch.Tensor:
    """fastMRI SSIM per item ``(B,)`` of magnitudes prediction, target ``(B, H, W)``.

    Wang et al. 2004 with 7 x 7 uniform windows, K1 = 0.01, K2 = 0.03 and the sample covariance
    ``N / (N - 1)``, averaged over the ``(H - 6) x (W - 6)`` pixels whose window lies inside the image --
    exactly the pixels :func:`kadapt.metrics.ssim` keeps after its border crop, so no padding is needed.
    ``data_range``: scalar or ``(B,)`` (the volume maximum of each item's target, as fastMRI's
    ``evaluate.py``); default: each item's target maximum.
    """
    _require_magnitudes(prediction, target, "ssim")
    if min(prediction.shape[-2:]) < SSIM_WINDOW:
        raise InvalidInputError(f"SSIM needs H and W >= {SSIM_WINDOW}, got shape {tuple(prediction.shape)}")
    data_range_4d = _per_item_data_range(target, data_range)
    window = torch.full(
        (1, 1, SSIM_WINDOW, SSIM_WINDOW),
        1.0 / SSIM_WINDOW**2,
        dtype=prediction.dtype,
        device=prediction.device,
    )
    x = prediction.unsqueeze(1)
    y = target.unsqueeze(1)

    def local_mean(image: torch.Tensor) -> torch.Tensor:
        return functional.conv2d(image, window)

    samples = SSIM_WINDOW**2
    covariance_norm = samples / (samples - 1)
    mean_x = local_mean(x)
    mean_y = local_mean(y)
    var_x = covariance_norm * (local_mean(x * x) - mean_x**2)
    var_y = covariance_norm * (local_mean(y * y) - mean_y**2)
    covariance = covariance_norm * (local_mean(x * y) - mean_x * mean_y)
    c1 = (SSIM_K1 * data_range_4d) ** 2
    c2 = (SSIM_K2 * data_range_4d) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(dim=(1, 2, 3))


def ssim_loss(
    prediction: torch.Tensor, target: torch.Tensor, data_range: torch.Tensor | float | None = None
) -> torch.Tensor:
    """``1 - SSIM`` (seed 004 appendix B) averaged over the batch -> scalar; shapes as :func:`ssim`.

    With ``data_range`` the volume maximum, ``1 - ssim_loss`` of a volume's slices equals
    :func:`kadapt.metrics.ssim` of that volume.
    """
    return 1.0 - ssim(prediction, target, data_range).mean()


def _log_kernel() -> np.ndarray:
    # scipy.ndimage.gaussian_laplace = d2/dx2 + d2/dy2 of separable Gaussians normalised to unit sum;
    # the second-derivative taps are (x^2 / s^4 - 1 / s^2) * phi(x), as scipy's _gaussian_kernel1d.
    offsets = np.arange(-HFEN_RADIUS, HFEN_RADIUS + 1, dtype=np.float64)
    sigma2 = HFEN_SIGMA**2
    gaussian = np.exp(-0.5 * offsets**2 / sigma2)
    gaussian /= gaussian.sum()
    second = (offsets**2 / sigma2**2 - 1.0 / sigma2) * gaussian
    kernel: np.ndarray = np.outer(second, gaussian) + np.outer(gaussian, second)
    return kernel


_LOG_KERNEL = _log_kernel()


def laplacian_of_gaussian(images: torch.Tensor) -> torch.Tensor:
    """HFEN's LoG (sigma 1.5, 15 x 15, zero padding) per image: ``(B, H, W)`` -> ``(B, H, W)``.

    Equal to :func:`kadapt.metrics.laplacian_of_gaussian` (scipy's ``gaussian_laplace``, mode constant).
    """
    if images.ndim != 3 or not images.is_floating_point():
        raise InvalidInputError(
            f"laplacian_of_gaussian needs real images (B, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    kernel = torch.as_tensor(_LOG_KERNEL, dtype=images.dtype, device=images.device)
    # The kernel is symmetric, so conv2d's cross-correlation equals scipy's convolution.
    return functional.conv2d(images.unsqueeze(1), kernel[None, None], padding=HFEN_RADIUS).squeeze(1)


def hfen(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||LoG(prediction) - LoG(target)|| / ||LoG(target)||`` per item, mean over the batch -> scalar.

    prediction, target magnitudes ``(B, H, W)``; one item equals :func:`kadapt.metrics.hfen` of it.
    """
    _require_magnitudes(prediction, target, "hfen")
    log_prediction = laplacian_of_gaussian(prediction)
    log_target = laplacian_of_gaussian(target)
    error = torch.linalg.vector_norm((log_prediction - log_target).flatten(1), dim=1)
    reference = torch.linalg.vector_norm(log_target.flatten(1), dim=1)
    return _relative_error(error, reference, "hfen")


def kspace_nmae(
    predicted_kspace: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Seed 004 eq. 5 k-space term ``sum |y_hat - y| / sum |y|`` (complex moduli) per item -> scalar.

    predicted_kspace, kspace ``(B, C, H, W, 2)``; mask (1 = sampled) broadcastable to ``(B, 1, H, W, 1)``
    restricts both sums to the sampled entries (``||A x - y||_1 / ||y||_1`` with ``A`` the masked SENSE
    operator); ``None`` uses every entry (a fully sampled target k-space).
    """
    _require_pair(predicted_kspace, kspace, "kspace_nmae", 5)
    if predicted_kspace.ndim != 5 or predicted_kspace.shape[-1] != 2:
        raise InvalidInputError(
            f"kspace_nmae needs k-space (B, C, H, W, 2), got shape {tuple(predicted_kspace.shape)}"
        )
    difference = predicted_kspace - kspace
    reference = kspace
    if mask is not None:
        difference = difference * mask
        reference = reference * mask
    error = complex_magnitude(difference).flatten(1).sum(dim=1)
    norm = complex_magnitude(reference).flatten(1).sum(dim=1)
    return _relative_error(error, norm, "kspace_nmae")


class DualDomainLoss(nn.Module):
    """Seed 004 eq. 5: ``sum_j w_j [a SSIM_loss + b L1 + c HFEN + d NRMSE](|x_j|) + e NMAE(A x_T, y)``.

    Defaults are seed 004's (a = b = c = 1, d = 0, e = 3, the vSHARP CMRxRecon protocol);
    :meth:`seed001` is seed 001's NRMSE objective. Image terms compare magnitudes ``(B, H, W)``; the
    k-space term is on the last output only, pushed through the masked SENSE operator
    (:func:`kadapt.nn.physics.sense_forward`).
    """

    def __init__(
        self,
        *,
        ssim_weight: float = 1.0,
        l1_weight: float = 1.0,
        hfen_weight: float = 1.0,
        nrmse_weight: float = 0.0,
        kspace_weight: float = 3.0,
    ) -> None:
        super().__init__()
        weights = {
            "ssim": ssim_weight,
            "l1": l1_weight,
            "hfen": hfen_weight,
            "nrmse": nrmse_weight,
            "kspace_nmae": kspace_weight,
        }
        negative = {name: value for name, value in weights.items() if value < 0}
        if negative:
            raise InvalidInputError(f"loss weights must be non-negative, got {negative}")
        if not any(value > 0 for value in weights.values()):
            raise InvalidInputError(f"at least one loss weight must be positive, got {weights}")
        self.weights = weights

    @classmethod
    def seed004(cls) -> DualDomainLoss:
        """Seed 004 eq. 5 (2D): SSIM + L1 + HFEN per step, plus 3 x k-space NMAE."""
        return cls()

    @classmethod
    def seed001(cls, ssim_weight: float = 0.0) -> DualDomainLoss:
        """Seed 001 eq. 8: NRMSE, optionally mixed with ``ssim_weight * (1 - SSIM)``; no k-space term."""
        return cls(
            ssim_weight=ssim_weight, l1_weight=0.0, hfen_weight=0.0, nrmse_weight=1.0, kspace_weight=0.0
        )

    def terms(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        *,
        kspace: torch.Tensor | None = None,
        sens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        data_range: torch.Tensor | float | None = None,
        step_weights: Sequence[float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted-over-steps, unscaled terms (scalars) by name, plus ``"total"`` (the weighted sum).

        images: one complex image ``(B, H, W, 2)`` or the unrolled steps' list (the last is the output);
        target: magnitude ``(B, H, W)`` or complex ``(B, H, W, 2)``; kspace ``(B, C, H, W, 2)``, sens
        ``(B, C, H, W, 2)`` and mask (broadcastable to ``(B, 1, H, W, 1)``) are needed when the k-space
        weight is positive; data_range as :func:`ssim`; step_weights default
        :func:`unrolled_step_weights`.
        """
        steps = [images] if isinstance(images, torch.Tensor) else list(images)
        if not steps:
            raise InvalidInputError("DualDomainLoss needs at least one image")
        weights = unrolled_step_weights(len(steps)) if step_weights is None else list(step_weights)
        if len(weights) != len(steps):
            raise InvalidInputError(f"{len(weights)} step weights for {len(steps)} images")
        target_magnitude = complex_magnitude(target) if target.ndim == 4 else target
        image_losses: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "ssim": lambda p: ssim_loss(p, target_magnitude, data_range),
            "l1": lambda p: l1(p, target_magnitude),
            "hfen": lambda p: hfen(p, target_magnitude),
            "nrmse": lambda p: nrmse(p, target_magnitude),
        }
        terms: dict[str, torch.Tensor] = {}
        magnitudes = [complex_magnitude(step) for step in steps]
        for name, loss in image_losses.items():
            if self.weights[name] > 0:
                terms[name] = sum(
                    (w * loss(m) for w, m in zip(weights, magnitudes, strict=True)),
                    start=torch.zeros((), dtype=target.dtype, device=target.device),
                )
        if self.weights["kspace_nmae"] > 0:
            if kspace is None or sens is None or mask is None:
                raise InvalidInputError(
                    "the k-space NMAE term needs kspace, sens and mask (or set kspace_weight=0)"
                )
            predicted = sense_forward(steps[-1], sens, mask)
            terms["kspace_nmae"] = kspace_nmae(predicted, kspace, mask)
        terms["total"] = sum(
            (self.weights[name] * value for name, value in terms.items()),
            start=torch.zeros((), dtype=target.dtype, device=target.device),
        )
        return terms

    def forward(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        *,
        kspace: torch.Tensor | None = None,
        sens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        data_range: torch.Tensor | float | None = None,
        step_weights: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """The total loss (scalar); arguments and shapes as :meth:`terms`."""
        return self.terms(
            images,
            target,
            kspace=kspace,
            sens=sens,
            mask=mask,
            data_range=data_range,
            step_weights=step_weights,
        )["total"]
