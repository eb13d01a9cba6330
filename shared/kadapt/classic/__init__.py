"""Classic (model-free) reconstructions of undersampled multi-coil Cartesian k-space, CPU only.

- :mod:`kadapt.classic.sigpy_recon`: ``zero-filled``, ``sense``, ``cg-sense``, ``l1-wavelet`` (numpy + sigpy)
  on k-space ``(slice, frame, coil, H, W)`` with line masks ``(slice, frame, W)``; what the recon service
  serves and the trainer's benchmark compares against.
- :mod:`kadapt.classic.bart`: BART's ESPIRiT + L1-wavelet ``pics`` per slice through the ``bart``
  executable (an independent reference implementation; not imported here, so importing this package never
  looks for the binary).
"""

from kadapt.classic.sigpy_recon import (
    CLASSIC_METHODS,
    DEFAULT_PARAMETERS,
    ClassicMethod,
    ClassicParameters,
    cg_sense,
    check_recon_inputs,
    iterative_coil_maps,
    l1_wavelet,
    reconstruct,
    sense,
    zero_filled,
)

__all__ = [
    "CLASSIC_METHODS",
    "DEFAULT_PARAMETERS",
    "ClassicMethod",
    "ClassicParameters",
    "cg_sense",
    "check_recon_inputs",
    "iterative_coil_maps",
    "l1_wavelet",
    "reconstruct",
    "sense",
    "zero_filled",
]
