"""The package-shipped anatomy sources (no downloads: every file is inside an installed package).

Found on the project's machines (Debian 12, the project's venv):

| source | package | data | subject |
|---|---|---|---|
| ``nilearn-mni152`` | nilearn wheel | MNI ICBM152 2009a T1 + GM + WM, 197x233x189 @ 1 mm | ``mni152`` |
| ``mricron-colin27`` | Debian mricron-data | Colin27 head ``ch2.nii.gz`` 181x217x181 @1 mm | ``colin27`` |
| ``mricron-inia19`` | Debian mricron-data | INIA19 macaque brain, 168x206x128 @ 0.5 mm | ``inia19-macaque`` |
| ``pydicom-shoulder`` | pydicom-data | shoulder MR ``MR2_UNCR.dcm``, 1024^2 @ 0.2 mm | ``pydicom-shoulder`` |
| ``pydicom-abdomen`` | pydicom-data | abdomen ``MR-SIEMENS-DICOM-WithOverlays`` 484^2 | ``pydicom-abdomen`` |
| ``pydicom-emri-head`` | pydicom-data | head MR ``emri_small.dcm``, 10 frames of 64^2 | ``pydicom-emri`` |
| ``dipy-t1-coronal`` | dipy wheel | T1 coronal slice ``t1_coronal_slice.npy``, 256^2 | ``dipy-examples`` |
| ``dipy-b0-slab`` | dipy wheel | b0 brain ``S0_10slices.nii.gz``, 128^2 x 10 @ 2 mm | ``dipy-examples`` |
| ``dipy-piesno-slab`` | dipy wheel | brain ``test_piesno.nii.gz``, 96^2 x 14 | ``dipy-examples`` |
| ``dipy-aniso-slab`` | dipy wheel | brain ``aniso_vox.nii.gz``, 58^2 x 24 @ 4x4x5 mm | ``dipy-examples`` |
| ``nibabel-anatomical`` | nibabel wheel | brain ``anatomical.nii``, 33x41x25 @ 2 mm | ``nibabel-anat`` |

Not used: mricron's label atlases (aal, brodmann, jhu189, natbrainlab, ...: labels, not images),
``ch2bet`` / ``ch2better`` (the same Colin27 subject again), pydicom's ``MR_small`` (a 64^2 crop) and
DICOMDIR localisers (16^2). dipy's wheel does not say whether its example brains are one person, so they
share one subject id (never split across train / val / test). Package directories are found with
``importlib.util.find_spec`` so that locating files imports none of those packages.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from kadapt.data.anatomy import (
    QUANTILE_TISSUES,
    Anatomy,
    AnatomySource,
    probabilistic_tissue_maps,
    quantile_tissue_maps,
    resample_plane,
)

Loader = Callable[[list[Path]], Anatomy]
MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")
# Largest side kept for single images: 3x the default 128 matrix is enough for anti-aliased slicing.
MAX_PLANE_MATRIX = 384

MNI_NOTICE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
    "Institute, McGill University. Permission to use, copy, modify, and distribute this software and its "
    "documentation for any purpose and without fee is hereby granted, provided that the above copyright "
    "notice appear in all copies. The authors and McGill University make no representations about the "
    "suitability of this software for any purpose. It is provided 'as is' without express or implied "
    "warranty."
)
COLIN_NOTICE = (
    "Colin27 (Holmes et al. 1998), MNI. "
    + MNI_NOTICE.replace("1993-2009", "1993-2004")
    + " Packaged by Debian mricron-data (BSD-3-clause per debian/copyright)."
)


def _package_dir(package: str) -> Path | None:
    """The folder of an installed top-level package, without importing it (None when absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _in_package(package: str, *parts: str) -> list[Path] | None:
    root = _package_dir(package)
    return None if root is None else [root.joinpath(*parts)]


def _in_mricron(*names: str) -> list[Path] | None:
    return [MRICRON_TEMPLATES / name for name in names] if MRICRON_TEMPLATES.is_dir() else None


def _nifti(path: Path) -> tuple[NDArray[np.float32], tuple[float, float, float]]:
    """A NIfTI volume ``(X, Y, Z)`` (trailing singleton axes dropped) and its voxel size in mm."""
    import nibabel as nib

    image = nib.nifti1.load(path)  # type: ignore[no-untyped-call]
    data = np.asarray(image.get_fdata(dtype=np.float32))
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return data, (zooms[0], zooms[1], zooms[2])


def _dicom_pixels(path: Path) -> tuple[NDArray[np.float32], float]:
    """DICOM pixels ``(rows, cols)`` or ``(frames, rows, cols)`` and the in-plane pixel size in mm."""
    import pydicom

    with warnings.catch_warnings():
        # pydicom warns about harmless VR quirks of these sample files; the pixels are what we use.
        warnings.simplefilter("ignore", UserWarning)
        dataset = pydicom.dcmread(path)
        pixels = np.asarray(dataset.pixel_array, dtype=np.float32)
    spacing = dataset.get("PixelSpacing")
    if spacing is None and "SharedFunctionalGroupsSequence" in dataset:
        measures = dataset.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        spacing = measures[0].get("PixelSpacing") if measures else None
    # Without a recorded spacing, 1 mm: only the FOV in the header depends on it.
    return pixels, float(spacing[0]) if spacing else 1.0


def _single_image(source: str, subject: str, image: NDArray[np.float32], pixel_mm: float) -> Anatomy:
    plane, factor = resample_plane(image, MAX_PLANE_MATRIX)
    volume = plane[:, :, np.newaxis]
    pixel = pixel_mm / factor
    return Anatomy(source, subject, quantile_tissue_maps(volume), QUANTILE_TISSUES, (pixel, pixel, 1.0), 2)


def _locate_mni152() -> list[Path] | None:
    root = _package_dir("nilearn")
    if root is None:
        return None
    folder = root / "datasets" / "data"
    return [folder / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")]


def _load_mni152(files: list[Path]) -> Anatomy:
    t1, voxel = _nifti(files[0])
    grey, _ = _nifti(files[1])
    white, _ = _nifti(files[2])
    # nilearn ships the 2009a maps rescaled to 0..255.
    maps = probabilistic_tissue_maps(t1, grey / 255.0, white / 255.0)
    return Anatomy("nilearn-mni152", "mni152", maps, ("csf", "gm", "wm", "fat"), voxel, None)


def _load_volume(
    source: str, subject: str, slab_axis: int | None, voxel_mm: tuple[float, float, float] | None = None
) -> Loader:
    def load(files: list[Path]) -> Anatomy:
        data, recorded = _nifti(files[0])
        voxel = recorded if voxel_mm is None else voxel_mm
        return Anatomy(source, subject, quantile_tissue_maps(data), QUANTILE_TISSUES, voxel, slab_axis)

    return load


def _load_dicom_image(source: str, subject: str) -> Loader:
    def load(files: list[Path]) -> Anatomy:
        pixels, pixel_mm = _dicom_pixels(files[0])
        if pixels.ndim == 3:
            # Multi-frame: (frames, rows, cols) -> (rows, cols, frames), frames stacked along the slab.
            volume = np.moveaxis(pixels, 0, -1)
            maps = quantile_tissue_maps(volume)
            return Anatomy(source, subject, maps, QUANTILE_TISSUES, (pixel_mm, pixel_mm, pixel_mm), 2)
        return _single_image(source, subject, pixels, pixel_mm)

    return load


def _load_dipy_t1(files: list[Path]) -> Anatomy:
    # The .npy carries no voxel size: 1 mm assumed (only the header FOV depends on it).
    image = np.asarray(np.load(files[0]), dtype=np.float32)
    return _single_image("dipy-t1-coronal", "dipy-examples", image, 1.0)


def _source(
    name: str,
    subject: str,
    package: str,
    matrix: int,
    description: str,
    licence: str,
    locate: Callable[[], list[Path] | None],
    load: Loader,
) -> AnatomySource:
    return AnatomySource(name, subject, package, description, licence, matrix, locate, load)


def anatomy_sources() -> tuple[AnatomySource, ...]:
    """Every known source, installed or not, in a fixed order (the split assignment depends on it)."""
    quantile = "pseudo-tissue classes from intensity quantiles"
    pydicom_licence = "pydicom-data, MIT licence (pydicom project test data)"
    dipy_licence = "dipy, BSD-3-clause (example data shipped in the wheel)"

    def dipy(name: str) -> list[Path] | None:
        return _in_package("dipy", "data", "files", name)

    def pydicom_data(name: str) -> list[Path] | None:
        return _in_package("data_store", "data", name)

    return (
        _source(
            "nilearn-mni152",
            "mni152",
            "nilearn (wheel)",
            189,
            "MNI ICBM152 2009a nonlinear symmetric template: T1 with GM / WM probability maps",
            MNI_NOTICE,
            _locate_mni152,
            _load_mni152,
        ),
        _source(
            "mricron-colin27",
            "colin27",
            "mricron-data (Debian)",
            181,
            f"Colin27 single-subject whole head T1, 1 mm ({quantile})",
            COLIN_NOTICE,
            lambda: _in_mricron("ch2.nii.gz"),
            _load_volume("mricron-colin27", "colin27", None),
        ),
        _source(
            "mricron-inia19",
            "inia19-macaque",
            "mricron-data (Debian)",
            128,
            f"INIA19 macaque brain T1 template, 0.5 mm ({quantile})",
            "INIA19, Rohlfing et al., Front. Neuroinform. 2012; shipped by Debian mricron-data "
            "(BSD-3-clause per debian/copyright); cite the INIA19 paper.",
            lambda: _in_mricron("inia19-t1-brain.nii.gz"),
            _load_volume("mricron-inia19", "inia19-macaque", None),
        ),
        _source(
            "pydicom-shoulder",
            "pydicom-shoulder",
            "pydicom-data",
            MAX_PLANE_MATRIX,
            f"shoulder MR, one 1024^2 image ({quantile})",
            pydicom_licence,
            lambda: pydicom_data("MR2_UNCR.dcm"),
            _load_dicom_image("pydicom-shoulder", "pydicom-shoulder"),
        ),
        _source(
            "pydicom-abdomen",
            "pydicom-abdomen",
            "pydicom-data",
            MAX_PLANE_MATRIX,
            f"abdomen (liver) MR, one 484^2 image ({quantile})",
            pydicom_licence,
            lambda: pydicom_data("MR-SIEMENS-DICOM-WithOverlays.dcm"),
            _load_dicom_image("pydicom-abdomen", "pydicom-abdomen"),
        ),
        _source(
            "pydicom-emri-head",
            "pydicom-emri",
            "pydicom-data",
            64,
            f"head MR, 10 frames of 64^2 ({quantile})",
            pydicom_licence,
            lambda: pydicom_data("emri_small.dcm"),
            _load_dicom_image("pydicom-emri-head", "pydicom-emri"),
        ),
        _source(
            "dipy-t1-coronal",
            "dipy-examples",
            "dipy (wheel)",
            256,
            f"brain T1, one coronal 256^2 slice ({quantile})",
            dipy_licence,
            lambda: dipy("t1_coronal_slice.npy"),
            _load_dipy_t1,
        ),
        _source(
            "dipy-b0-slab",
            "dipy-examples",
            "dipy (wheel)",
            128,
            f"brain b0 (T2-like), 10 slices of 128^2 ({quantile})",
            dipy_licence,
            lambda: dipy("S0_10slices.nii.gz"),
            # Its recorded slice zoom (53 mm) is not a plausible spacing: 2 mm like its in-plane size.
            _load_volume("dipy-b0-slab", "dipy-examples", 2, (2.0, 2.0, 2.0)),
        ),
        _source(
            "dipy-piesno-slab",
            "dipy-examples",
            "dipy (wheel)",
            96,
            f"brain, 14 slices of 96^2 ({quantile})",
            dipy_licence,
            lambda: dipy("test_piesno.nii.gz"),
            _load_volume("dipy-piesno-slab", "dipy-examples", 2),
        ),
        _source(
            "dipy-aniso-slab",
            "dipy-examples",
            "dipy (wheel)",
            58,
            f"brain, 24 slices of 58^2 at 4x4x5 mm ({quantile})",
            dipy_licence,
            lambda: dipy("aniso_vox.nii.gz"),
            _load_volume("dipy-aniso-slab", "dipy-examples", 2),
        ),
        _source(
            "nibabel-anatomical",
            "nibabel-anat",
            "nibabel (wheel)",
            33,
            f"brain, 33x41x25 at 2 mm ({quantile})",
            "nibabel test data, MIT licence",
            lambda: _in_package("nibabel", "tests", "data", "anatomical.nii"),
            _load_volume("nibabel-anatomical", "nibabel-anat", 2),
        ),
    )
