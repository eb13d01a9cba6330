"""Image-quality metrics (numpy), fastMRI ``evaluate.py`` conventions plus NMAE and HFEN.

Magnitude volumes ``(slices, H, W)``; volume-level NMSE / PSNR / NMAE / HFEN, SSIM as the mean over slices,
``data_range = gt.max()`` over the volume. See :mod:`kadapt.metrics.image_quality`.
"""

from kadapt.metrics.crop import center_crop
from kadapt.metrics.image_quality import (
    evaluate_volume,
    hfen,
    laplacian_of_gaussian,
    nmae,
    nmse,
    psnr,
    ssim,
    ssim_map,
)

__all__ = [
    "center_crop",
    "evaluate_volume",
    "hfen",
    "laplacian_of_gaussian",
    "nmae",
    "nmse",
    "psnr",
    "ssim",
    "ssim_map",
]
