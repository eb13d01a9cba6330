"""The DPS part of ``kadapt bench tasks``: patterns at the score network's size and the test slices.

Seed 003 evaluates its patterns by DPS posterior sampling (Alg. 1) at the score network's matrix. The
learned line bundle is served as the sampler serves it (:func:`served_fixed_plan`), the 2D point scores
as their top-k (:func:`served_pattern`: ACS square plus the best points, exact budget), the baselines as
one seeded mask per cell (:func:`kadapt.trainer.bench_stats.bench_mask`) with the pattern's ``num_acs``.
Coil maps and reference come from :func:`load_diffusion_slices` with the ``maps_acs`` the pattern was
learned with (the same maps for every compared pattern).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kadapt.bundles import Bundle
from kadapt.bundles.sampler_masks import fixed_mask_scores, served_fixed_plan
from kadapt.errors import NotFoundError
from kadapt.masks import line_budget
from kadapt.nn.score import EDMDenoiser, load_denoiser
from kadapt.trainer.bench_stats import bench_mask
from kadapt.trainer.bench_tasks_eval import DpsPattern, TestVolume, spaced_indices
from kadapt.trainer.bench_tasks_report import BASELINES
from kadapt.trainer.diffusion_data import DiffusionSlice, load_diffusion_slices
from kadapt.trainer.diffusion_pattern import served_pattern
from kadapt.trainer.pattern_diffusion import PointScores

__all__ = ["POINTS_NAME", "dps_setup"]

#: The DPS row name of the ``--points`` artefact (the line bundle's rows carry its bundle name).
POINTS_NAME = "diffusion-points"


def dps_setup(
    data: Path,
    diffusion: Bundle | None,
    points: PointScores | None,
    volumes: list[TestVolume],
    *,
    take: int,
    steps: int,
    seed: int,
    accelerations: tuple[float, ...],
) -> tuple[list[DpsPattern], dict[str, Any], EDMDenoiser | None, list[DiffusionSlice]]:
    """The DPS patterns at the score network's size (the diffusion line bundle by its name,
    :data:`POINTS_NAME` for the point scores, ``centre-only`` and ``equispaced`` with the pattern's
    ``num_acs``), their JSON record, the denoiser and ``take`` evenly spaced test slices per volume."""
    training = diffusion.manifest.training if diffusion is not None else {}
    network = training.get("score_network")
    score_path = Path(str(network["path"])) if isinstance(network, dict) and "path" in network else None
    if diffusion is None:
        if points is None:
            return [], {"reason": "no diffusion pattern"}, None, []
        score_path = points.score_network
        size, num_acs, maps = int(points.scores.shape[-1]), points.num_acs, points.maps_acs
    else:
        size, num_acs = diffusion.manifest.geometry.ky, diffusion.manifest.num_acs
        recorded = training.get("maps_acs")
        maps = recorded if isinstance(recorded, int) else max(4, size // 16)
    if score_path is None or not score_path.is_file():
        raise NotFoundError(f"the diffusion pattern's score network {score_path} is missing")
    names = {volume.name for volume in volumes}
    slices = [
        item for item in load_diffusion_slices(data, "test", num_acs=maps, size=size) if item.volume in names
    ]
    chosen = []
    for name in [volume.name for volume in volumes]:
        items = [item for item in slices if item.volume == name]
        chosen += [items[i] for i in spaced_indices(len(items), take)]
    patterns: list[DpsPattern] = []
    if diffusion is not None:
        line_scores = fixed_mask_scores(diffusion)
        trained = tuple(diffusion.manifest.accelerations)
        patterns.append(
            DpsPattern(
                diffusion.manifest.name,
                lambda r, _v, _s: served_fixed_plan(line_scores, num_acs, r),
                lambda r: (
                    None if any(np.isclose(r, t) for t in trained) else f"learned for R in {list(trained)}"
                ),
            )
        )
    if points is not None:
        point_scores, point_rates = points.scores, points.accelerations
        patterns.append(
            DpsPattern(
                POINTS_NAME,
                lambda r, _v, _s: served_pattern(point_scores, "points", num_acs, r),
                lambda r: (
                    None
                    if any(np.isclose(r, t) for t in point_rates)
                    else f"learned for R in {list(point_rates)}"
                ),
            )
        )
    for family in BASELINES:

        def plan(r: float, volume: int, index: int, family: str = family) -> NDArray[np.bool_]:
            return bench_mask(family, width=size, acceleration=r, num_acs=num_acs, seed=seed,
                              split="test", volume=volume, slice_index=index)  # fmt: skip

        patterns.append(DpsPattern(family, plan))
    record = {
        "size": size, "num_acs": num_acs, "maps_acs": maps, "score_network": str(score_path),
        "slices_per_volume": take, "slices": [{"volume": i.volume, "slice": i.slice_index} for i in chosen],
        "steps": steps,
        "budgets": {f"{r:g}": line_budget(size, r, num_acs) for r in accelerations},
    }  # fmt: skip
    return patterns, record, load_denoiser(score_path), chosen
