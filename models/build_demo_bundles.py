"""Build the demo bundles shipped in ``models/`` (run from the repository root:
``.venv/bin/python models/build_demo_bundles.py``).

``centre-weighted/1`` is a ``fixed-mask`` bundle whose ``mask.npy`` is ANALYTIC, not learned: line scores
``(W,)`` that order the ky lines so that the top-k lines at any R form a variable-density pattern. It
exists to exercise the sampler's fixed-mask path end to end before the trainer writes learned
population bundles (LOUPE-style, seed 000 section 1.4) into the same repository.

The ordering: draw a golden-ratio (Kronecker) sequence ``u_n = frac(n / phi)``, map it through the inverse
CDF of the density ``p(ky) ∝ max(floor, (1 - |x|) ** decay)`` (``x`` in ``[-1, 1]`` across ky), and give
each line the rank at which it was first hit (taking the nearest free line on collisions). Low-discrepancy
sequences keep every prefix evenly spread, so every budget gets a well-spaced variable-density mask.
"""

from __future__ import annotations

import argparse
from io import BytesIO
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from kadapt.bundles import BundleGeometry, Manifest, TensorSpec, utc_now, write_bundle

GOLDEN = (1.0 + 5.0**0.5) / 2.0


def golden_ratio_vd_scores(width: int, decay: float = 2.0, floor: float = 0.05) -> NDArray[np.float32]:
    """Scores ``(W,)`` in ``(0, 1]``, higher = acquired earlier; top-k is a variable-density ky set."""
    x = (np.arange(width) - width // 2) / (width / 2.0)
    density = np.maximum(floor, (1.0 - np.abs(x)).clip(0.0) ** decay)
    cdf = np.cumsum(density) / density.sum()
    order: list[int] = []
    taken = np.zeros(width, dtype=bool)
    n = 0
    while len(order) < width:
        n += 1
        u = (n / GOLDEN) % 1.0
        ky = int(np.searchsorted(cdf, u))
        ky = min(ky, width - 1)
        if taken[ky]:
            free = np.flatnonzero(~taken)
            ky = int(free[np.argmin(np.abs(free - ky))])
        taken[ky] = True
        order.append(ky)
    scores = np.empty(width, dtype=np.float32)
    scores[np.asarray(order)] = np.arange(width, 0, -1, dtype=np.float32) / width
    return scores


def npy_bytes(array: NDArray[np.float32]) -> bytes:
    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def centre_weighted_manifest(width: int) -> Manifest:
    return Manifest(
        name="centre-weighted",
        version="1",
        kind="fixed-mask",
        geometry=BundleGeometry(ky=width),
        accelerations=(2.0, 3.0, 4.0, 5.0, 6.0, 8.0),
        num_acs=16,
        outputs=(TensorSpec(name="scores", shape=(width,), dtype="float32"),),
        normalisation="none",
        training={
            "description": "ANALYTIC demo pattern, not learned: golden-ratio ordering of ky lines under a "
            "(1-|x|)^2 variable density (floor 0.05); top-k lines at any R",
            "data": "none",
            "profile": {"decay": 2.0, "floor": 0.05},
        },
        validation={},
        code_version="kadapt 0.1.0 models/build_demo_bundles.py",
        created=utc_now(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    scores = golden_ratio_vd_scores(args.width)
    bundle = write_bundle(
        args.out,
        centre_weighted_manifest(args.width),
        {"mask.npy": npy_bytes(scores)},
        overwrite=args.overwrite,
    )
    print(f"wrote {bundle.manifest.ref} to {bundle.path}")


if __name__ == "__main__":
    main()
