"""One PNG per replayed volume: sampling mask, reconstruction, reference and error map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import NDArray


def save_volume_figure(
    path: Path,
    *,
    mask: NDArray[np.bool_],
    reconstruction: NDArray[np.floating],
    reference: NDArray[np.floating],
    title: str,
) -> None:
    """``mask`` (W,) or (H, W) lines; ``reconstruction`` and ``reference`` magnitude (H, W) of the middle
    slice. The error map is |recon - reference| on the reference's scale (x5 for visibility)."""
    vmax = float(np.percentile(reference, 99.5)) or 1.0
    mask_image = np.broadcast_to(mask, reference.shape) if mask.ndim == 1 else mask
    error = np.abs(reconstruction - reference)
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    panels = (
        (mask_image, "mask (ky along x)", "gray", 0.0, 1.0),
        (reconstruction, "reconstruction", "gray", 0.0, vmax),
        (reference, "fully sampled", "gray", 0.0, vmax),
        (error, "|error| x5", "inferno", 0.0, vmax / 5),
    )
    for ax, (image, label, cmap, lo, hi) in zip(axes, panels, strict=True):
        ax.imshow(np.asarray(image, dtype=np.float32), cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
