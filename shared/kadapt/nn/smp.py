"""Sensitivity Map Predictor (SMP, seed 004 section 2.2): a U-Net refining ACS-based coil sensitivities.

Layout: coil k-space and maps ``(B, C, H, W, 2)`` real tensors (real, imaginary last), readout kx along H,
phase encode ky along W. Seed 004 estimates the maps from the fully sampled centre (the ACS) and refines
them with a 2D U-Net (4 scales, 16-128 channels there); the refined maps are normalised so that
``sum_c |S_c|^2 = 1``, the convention of :mod:`kadapt.kspace.coils` that makes the SENSE reduction of
fully sampled coil images the (phase-carrying) RSS image.

:func:`acs_sensitivity_estimate` is the torch twin of :func:`kadapt.kspace.coils.acs_sensitivities`
(Hann-tapered centred ACS block, zero-filled, inverse FFT, divided by the RSS, zero below a relative
threshold); it exports to ONNX (the ACS window is a constant of the graph).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kadapt.errors import InvalidInputError
from kadapt.kspace.preprocess import acs_start
from kadapt.kspace.torch_fft import ifft2c_real
from kadapt.nn.losses import complex_magnitude
from kadapt.nn.unet import UNet

__all__ = ["SensitivityMapPredictor", "acs_sensitivity_estimate", "normalise_sensitivities"]

#: Pixels whose coil RSS squared is at most this are treated as "no signal" (maps set to zero there).
RSS_SQUARED_FLOOR = 1e-12


def _require_coil_tensor(x: Tensor, name: str) -> None:
    if x.is_complex() or not x.is_floating_point() or x.ndim != 5 or x.shape[-1] != 2:
        raise InvalidInputError(
            f"{name} needs a real floating tensor (B, C, H, W, 2), got {x.dtype} {tuple(x.shape)}"
        )


def _acs_window(width: int, num_acs: int, like: Tensor) -> Tensor:
    """Weights ``(W,)`` along ky: the Hann taper on the centred ACS block, zero elsewhere.

    Same window as :func:`kadapt.kspace.coils.acs_sensitivities`: a Hann window two samples longer than
    the block, trimmed at both ends, so no ACS line gets zero weight.
    """
    start = acs_start(width, num_acs)
    taper = torch.hann_window(num_acs + 2, periodic=False, dtype=torch.float64)[1:-1]
    window = torch.zeros(width, dtype=torch.float64)
    window[start : start + num_acs] = taper
    return window.to(dtype=like.dtype, device=like.device)


def normalise_sensitivities(maps: Tensor, support: Tensor | None = None) -> Tensor:
    """Scale maps ``(B, C, H, W, 2)`` so that ``sum_c |S_c|^2 = 1`` at every pixel with signal.

    Pixels whose RSS is (numerically) zero, or outside ``support`` (bool ``(B, H, W)``) when given, get
    zero maps. Gradients stay finite everywhere (the division only ever sees positive RSS).
    """
    _require_coil_tensor(maps, "normalise_sensitivities")
    rss_squared = (maps * maps).sum(dim=(1, 4))  # (B, H, W)
    keep = rss_squared > RSS_SQUARED_FLOOR
    if support is not None:
        if support.shape != rss_squared.shape:
            raise InvalidInputError(
                f"support must have shape (B, H, W) = {tuple(rss_squared.shape)}, got {tuple(support.shape)}"
            )
        keep = keep & support
    safe_rss = torch.where(keep, rss_squared, torch.ones_like(rss_squared)).sqrt()
    keep_5d = keep[:, None, :, :, None]
    return torch.where(keep_5d, maps / safe_rss[:, None, :, :, None], torch.zeros_like(maps))


def acs_sensitivity_estimate(masked_kspace: Tensor, num_acs: int, relative_threshold: float = 0.05) -> Tensor:
    """ACS-based coil maps: k-space ``(B, C, H, W, 2)`` -> maps ``(B, C, H, W, 2)``, unit RSS on the object.

    The centred ACS columns (``W // 2 - num_acs // 2 ...``) are tapered by a Hann window along ky (to
    suppress the ringing of the low-resolution images), transformed to coil images and divided by their
    RSS; pixels with RSS at most ``relative_threshold`` times the item's maximum are background (zero
    maps). Matches :func:`kadapt.kspace.coils.acs_sensitivities` per item. Only the ACS block is read,
    so fully sampled or masked k-space give the same maps.
    """
    _require_coil_tensor(masked_kspace, "acs_sensitivity_estimate")
    if not 0.0 <= relative_threshold < 1.0:
        raise InvalidInputError(f"relative_threshold must lie in [0, 1), got {relative_threshold}")
    width = masked_kspace.shape[-2]
    window = _acs_window(width, num_acs, masked_kspace)
    coil_images = ifft2c_real(masked_kspace * window[:, None])
    rss = complex_magnitude(coil_images).pow(2).sum(dim=1).sqrt()  # (B, H, W)
    peak = rss.flatten(1).amax(dim=1)
    support = rss > relative_threshold * peak[:, None, None]
    return normalise_sensitivities(coil_images, support)


class SensitivityMapPredictor(nn.Module):
    """SMP (seed 004 section 2.2): one 2D U-Net shared by all coils refines maps ``(B, C, H, W, 2)``.

    Coils are folded into the batch (``(B * C, 2, H, W)``), so one trained model serves any coil count.
    ``residual=True`` refines ``S + U(S)``, ``False`` predicts ``U(S)`` directly. The output is normalised
    to unit RSS over coils on the input's support (where the ACS estimate has signal; zero elsewhere, the
    convention of :mod:`kadapt.kspace.coils`).
    """

    def __init__(
        self,
        chans: int = 16,
        num_pool_layers: int = 4,
        drop_prob: float = 0.0,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if chans < 1 or num_pool_layers < 1:
            raise InvalidInputError(f"chans ({chans}) and num_pool_layers ({num_pool_layers}) must be >= 1")
        self.unet = UNet(
            in_chans=2, out_chans=2, chans=chans, num_pool_layers=num_pool_layers, drop_prob=drop_prob
        )
        self.residual = residual

    def forward(self, maps: Tensor) -> Tensor:
        """Refine ACS-based maps ``(B, C, H, W, 2)`` -> maps ``(B, C, H, W, 2)`` with unit RSS on the support.

        H and W must be divisible by ``2 ** num_pool_layers`` only as fastMRI's U-Net requires (it pads
        odd sizes itself).
        """
        _require_coil_tensor(maps, "SensitivityMapPredictor")
        batch, coils, height, width, _ = maps.shape
        folded = maps.reshape(batch * coils, height, width, 2).permute(0, 3, 1, 2)
        refined = self.unet(folded)
        if self.residual:
            refined = refined + folded
        unfolded = refined.permute(0, 2, 3, 1).reshape(batch, coils, height, width, 2)
        support = (maps * maps).sum(dim=(1, 4)) > RSS_SQUARED_FLOOR
        return normalise_sensitivities(unfolded, support)

    def from_kspace(self, masked_kspace: Tensor, num_acs: int) -> Tensor:
        """ACS estimate then refinement: k-space ``(B, C, H, W, 2)`` -> maps ``(B, C, H, W, 2)``."""
        refined: Tensor = self(acs_sensitivity_estimate(masked_kspace, num_acs))
        return refined


class SensitivityRefinedRecon(nn.Module):
    """``--smp``: the SMP (seed 004 section 2.2) refines the ``sens`` input and the wrapped reconstruction
    runs on the refined maps; both are trained end to end with the reconstruction's loss.

    Same calling convention as the wrapped :class:`kadapt.nn.modl.ReconModel`: ``masked_kspace
    (B, C, H, W, 2)``, ``mask (B, 1, 1, W, 1)``, ``sens (B, C, H, W, 2)`` -> image ``(B, H, W, 2)``, so the
    exported graph keeps the bundle's inputs (ACS maps in) and output and the recon service serves it
    unchanged. The SMP folds coils into the batch, so it adds no coil-count constraint.
    """

    def __init__(self, recon: nn.Module, smp: SensitivityMapPredictor) -> None:
        super().__init__()
        self.recon = recon
        self.smp = smp

    def forward(self, masked_kspace: Tensor, mask: Tensor, sens: Tensor) -> Tensor:
        """``(B, C, H, W, 2), (B, 1, 1, W, 1), (B, C, H, W, 2) -> (B, H, W, 2)``."""
        image: Tensor = self.recon(masked_kspace, mask, self.smp(sens))
        return image
