"""Where each kadapt image lies in the patient: DICOM's image plane from MRD geometry.

Axes. kadapt's magnitude images are ``(H, W)`` with H the readout (kx, MRD x, along ``read_dir``) and W
the phase encode (ky, MRD y, along ``phase_dir``). The MRD images kadapt emits are transposed to put the
readout along x (``kadapt.mrd.builders.make_image_messages``); the DICOM images follow them: pixel
rows run along the phase encode and columns along the readout, so a stored image is ``(Rows = W,
Columns = H)`` = ``magnitude[s, f].T``. Hence Image Orientation (Patient) is ``read_dir`` (the
direction of increasing column index) followed by ``phase_dir`` (increasing row index), and Pixel
Spacing is ``(row spacing = phase spacing, column spacing = readout spacing)``.

Coordinates. MRD positions and direction cosines are in the patient coordinate system DICOM uses
(LPS: +x to the patient's left, +y posterior, +z head), and an MRD ``position`` is the centre of the
slice (the MRD image-header documentation). Image Position (Patient) is the centre of the first
(top-left) pixel: ``centre - (H - 1) / 2 * dx * read_dir - (W - 1) / 2 * dy * phase_dir`` — the
geometric FOV centre lies between the two middle pixels of an even matrix.

Without geometry. Slice orientation and position travel in the acquisition headers, not in the XML.
When none is given (the REST path keeps only the XML), slices are axial — ``read_dir = (1, 0, 0)``,
``phase_dir = (0, 1, 0)``, ``slice_dir = (0, 0, 1)``, the defaults of kadapt's MRD builders — and
stacked along +z through the isocentre, ``centre_s = (s - (S - 1) / 2) * spacing * slice_dir`` with
the spacing equal to the slice thickness (contiguous slices; the XML records no gap).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import GeometryMismatchError
from kadapt.mrd.header import EncodingInfo

Vector3 = tuple[float, float, float]
AXIAL_READ: Vector3 = (1.0, 0.0, 0.0)
AXIAL_PHASE: Vector3 = (0.0, 1.0, 0.0)
AXIAL_SLICE: Vector3 = (0.0, 0.0, 1.0)
_UNIT_TOLERANCE = 1e-3


@dataclass(frozen=True, slots=True)
class SliceGeometry:
    """One slice's centre (mm, LPS) and direction cosines, as in its MRD acquisition headers."""

    position: Vector3
    read_dir: Vector3
    phase_dir: Vector3
    slice_dir: Vector3


@dataclass(frozen=True, slots=True)
class ImagePlane:
    """DICOM Image Plane values of one slice: orientation (6), position of the first pixel (3), slice
    location (mm along the plane normal)."""

    orientation: tuple[float, float, float, float, float, float]
    position: Vector3
    slice_location: float


def _vector(values: NDArray[np.floating] | Vector3) -> Vector3:
    x, y, z = (float(v) for v in np.asarray(values, dtype=np.float64).reshape(3))
    return (x, y, z)


def _orthonormal(read: Vector3, phase: Vector3) -> bool:
    r, p = np.asarray(read), np.asarray(phase)
    return bool(
        abs(np.linalg.norm(r) - 1.0) < _UNIT_TOLERANCE
        and abs(np.linalg.norm(p) - 1.0) < _UNIT_TOLERANCE
        and abs(float(r @ p)) < _UNIT_TOLERANCE
    )


def pixel_spacing_mm(encoding: EncodingInfo) -> tuple[float, float]:
    """``(phase spacing, readout spacing)`` in mm = DICOM Pixel Spacing (row spacing, column spacing).

    The readout spans the recon FOV x over the recon matrix x (H, oversampling removed); the W
    phase-encode lines span the encoded FOV y (equal to the recon FOV y unless the header asks for
    phase oversampling or partial phase resolution, which kadapt's images do not undo).
    """
    return (
        encoding.encoded_fov_mm[1] / encoding.encoded_matrix[1],
        encoding.recon_fov_mm[0] / encoding.recon_matrix[0],
    )


def slice_thickness_mm(encoding: EncodingInfo) -> float:
    """Slice thickness: the recon FOV z over the recon matrix z (one partition for a 2D scan)."""
    return encoding.recon_fov_mm[2] / encoding.recon_matrix[2]


def default_slice_geometry(slices: int, spacing_mm: float) -> dict[int, SliceGeometry]:
    """Axial slices ``0 .. slices - 1`` stacked along +z, centred on the isocentre (module docstring)."""
    offsets = (np.arange(slices) - (slices - 1) / 2.0) * spacing_mm
    return {
        s: SliceGeometry((0.0, 0.0, float(offset)), AXIAL_READ, AXIAL_PHASE, AXIAL_SLICE)
        for s, offset in enumerate(offsets)
    }


def slice_geometry_from_acquisitions(heads: NDArray[np.void]) -> dict[int, SliceGeometry] | None:
    """Per-slice geometry from MRD acquisition headers ``(n,)`` of ``ACQ_HEADER_DTYPE``: the first readout
    of each ``idx.slice`` gives its centre and directions.

    Returns None when any slice's ``read_dir`` / ``phase_dir`` are not orthonormal (zero-filled headers
    from synthetic files), so callers fall back to :func:`default_slice_geometry` as a whole.
    """
    geometry: dict[int, SliceGeometry] = {}
    slice_indices = np.asarray(heads["idx"]["slice"])
    for s in np.unique(slice_indices):
        head = heads[int(np.flatnonzero(slice_indices == s)[0])]
        read, phase = _vector(head["read_dir"]), _vector(head["phase_dir"])
        if not _orthonormal(read, phase):
            return None
        geometry[int(s)] = SliceGeometry(_vector(head["position"]), read, phase, _vector(head["slice_dir"]))
    return geometry or None


def slice_spacing_mm(geometry: Mapping[int, SliceGeometry], thickness_mm: float) -> float:
    """Spacing Between Slices: the median distance of consecutive slice centres along the slice normal,
    the thickness for a single slice."""
    if len(geometry) < 2:
        return thickness_mm
    ordered = [geometry[s] for s in sorted(geometry)]
    normal = np.cross(ordered[0].read_dir, ordered[0].phase_dir)
    locations = np.array([float(np.dot(g.position, normal)) for g in ordered])
    return float(np.median(np.abs(np.diff(locations))))


def image_plane(geometry: SliceGeometry, height: int, width: int, spacing: tuple[float, float]) -> ImagePlane:
    """The image plane of one ``(H, W)`` image stored as ``(Rows = W, Columns = H)``.

    ``spacing`` is :func:`pixel_spacing_mm` (phase, readout); raises :class:`GeometryMismatchError` when
    the direction cosines are not orthonormal.
    """
    if not _orthonormal(geometry.read_dir, geometry.phase_dir):
        raise GeometryMismatchError(
            f"read_dir {geometry.read_dir} and phase_dir {geometry.phase_dir} are not orthonormal"
        )
    read, phase = np.asarray(geometry.read_dir), np.asarray(geometry.phase_dir)
    phase_step, readout_step = spacing
    first = (
        np.asarray(geometry.position)
        - (height - 1) / 2.0 * readout_step * read
        - (width - 1) / 2.0 * phase_step * phase
    )
    normal = np.cross(read, phase)
    return ImagePlane(
        orientation=(*_vector(read), *_vector(phase)),
        position=_vector(first),
        slice_location=float(np.dot(geometry.position, normal)),
    )
