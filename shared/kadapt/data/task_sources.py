"""The labelled anatomy of the task data: three brains (subjects) with per-voxel tissue labels.

| source | subject | image | labels |
|---|---|---|---|
| ``nilearn-mni152`` | ``mni152`` | MNI152 2009a T1 + GM / WM maps (as by default) | their arg-max |
| ``mricron-colin27-tissue`` | ``colin27`` | Colin27 brain ``ch2bet.nii.gz``, 1 mm | 3-class model |
| ``mricron-inia19-tissue`` | ``inia19-macaque`` | INIA19 ``inia19-t1-brain.nii.gz``, 0.5 mm | 3-class model |

"3-class model": :func:`kadapt.data.labels.tissue_model_maps` (k-means class means + partial-volume
tents). All three are brain-only, so background / CSF / GM / WM covers every pixel; Colin27's whole-head
``ch2`` (the default build's) would add scalp, skull and muscle, a class the template never shows.

Atlases considered and not used for tissue labels (measured, see docs/data.md): mricron's ``aal.nii.gz`` is
on the Colin27 grid but its regions are dilated grey matter (29% of its voxels fall in the model's WM,
9% outside ``ch2bet``'s brain), so it is not a GM map; ``inia19-NeuroMaps.nii.gz`` labels structures
without a name table, so it cannot say which are grey or white — it agrees with the model in that 90% of
the brain voxels it leaves unlabelled are the model's CSF. HarvardOxford is in MNI152 space, not Colin27's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kadapt.data.anatomy import AnatomySource
from kadapt.data.labels import LabelledAnatomy, labels_from_maps, tissue_model_maps
from kadapt.data.sources import COLIN_NOTICE, MNI_NOTICE, _in_mricron, _load_mni152, _locate_mni152, _nifti

TISSUE_NAMES = ("csf", "gm", "wm", "fat")
INIA19_LICENCE = (
    "INIA19, Rohlfing et al., Front. Neuroinform. 2012; shipped by Debian mricron-data "
    "(BSD-3-clause per debian/copyright); cite the INIA19 paper."
)


def _load_labelled_mni152(files: list[Path]) -> LabelledAnatomy:
    anatomy = _load_mni152(files)
    return LabelledAnatomy(
        anatomy.source,
        anatomy.subject,
        anatomy.tissue_maps,
        anatomy.tissue_names,
        anatomy.voxel_mm,
        anatomy.slab_axis,
        labels=labels_from_maps(anatomy.tissue_maps),
        label_method="arg-max of the MNI152 2009a GM / WM probability maps (CSF = brain - GM - WM)",
    )


def _tissue_model_loader(source: str, subject: str) -> Callable[[list[Path]], LabelledAnatomy]:
    def load(files: list[Path]) -> LabelledAnatomy:
        brain, voxel = _nifti(files[0])
        maps, means = tissue_model_maps(brain)
        method = (
            "3-class intensity model of the skull-stripped T1: k-means class means "
            f"CSF {means[0]:.1f} / GM {means[1]:.1f} / WM {means[2]:.1f}, partial-volume tents, arg-max"
        )
        return LabelledAnatomy(
            source,
            subject,
            maps,
            TISSUE_NAMES,
            voxel,
            None,
            labels=labels_from_maps(maps),
            label_method=method,
        )

    return load


def task_sources() -> tuple[AnatomySource, ...]:
    """The labelled sources, installed or not, in a fixed order; ``load`` returns a
    :class:`~kadapt.data.labels.LabelledAnatomy`."""
    return (
        AnatomySource(
            "nilearn-mni152",
            "mni152",
            "nilearn (wheel)",
            "MNI ICBM152 2009a symmetric template: T1 with GM / WM probability maps; labels: their arg-max",
            MNI_NOTICE,
            189,
            _locate_mni152,
            _load_labelled_mni152,
        ),
        AnatomySource(
            "mricron-colin27-tissue",
            "colin27",
            "mricron-data (Debian)",
            "Colin27 brain-extracted T1 (ch2bet), 1 mm; tissue maps and labels: 3-class intensity model",
            COLIN_NOTICE,
            181,
            lambda: _in_mricron("ch2bet.nii.gz"),
            _tissue_model_loader("mricron-colin27-tissue", "colin27"),
        ),
        AnatomySource(
            "mricron-inia19-tissue",
            "inia19-macaque",
            "mricron-data (Debian)",
            "INIA19 macaque brain T1, 0.5 mm; tissue maps and labels from a 3-class intensity model",
            INIA19_LICENCE,
            128,
            lambda: _in_mricron("inia19-t1-brain.nii.gz"),
            _tissue_model_loader("mricron-inia19-tissue", "inia19-macaque"),
        ),
    )
