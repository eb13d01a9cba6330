"""Neural-network reconstruction models and their physics, in torch (issue 3).

- :mod:`kadapt.nn.physics` — complex arithmetic on real ``(..., 2)`` tensors, the SENSE operator
  (``sense_forward`` / ``sense_adjoint`` / ``sense_normal``) and a fixed-iteration conjugate gradient;
- :mod:`kadapt.nn.unet` — fastMRI's U-Net on ``(B, C, H, W)`` real tensors;
- :mod:`kadapt.nn.modl` — MoDL (seed 000 section 3.1, seed 001 eq. 5-7) and the :class:`ReconModel`
  convention every reconstruction model follows: ``model(masked_kspace, mask, sens)`` with real tensors
  ``(B, C, H, W, 2)``, ``(B, 1, H, W, 1)``-broadcastable, ``(B, C, H, W, 2)`` -> image ``(B, H, W, 2)``;
- :mod:`kadapt.nn.export` — ONNX (dynamo) and TorchScript export with an ONNX Runtime / TorchScript parity
  report (import it directly; it pulls in onnx and onnxruntime).

This package imports torch: the gateway never imports it (import-linter contract). Only the light,
torch-only names are re-exported here.
"""

from kadapt.nn.modl import MoDL, ReconModel, ResidualDenoiser, magnitude
from kadapt.nn.unet import UNet, UNetRecon

__all__ = ["MoDL", "ReconModel", "ResidualDenoiser", "UNet", "UNetRecon", "magnitude"]
