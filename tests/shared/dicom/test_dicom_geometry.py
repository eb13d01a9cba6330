"""Image plane geometry: spacing from the header, per-slice geometry from MRD acquisition headers."""

from __future__ import annotations

import numpy as np
import pytest

from kadapt.dicom.geometry import (
    SliceGeometry,
    default_slice_geometry,
    image_plane,
    pixel_spacing_mm,
    slice_geometry_from_acquisitions,
    slice_spacing_mm,
    slice_thickness_mm,
)
from kadapt.mrd.header import make_header, parse_header
from kadapt.mrd.stream import make_acquisition_heads


def test_spacing_uses_the_recon_readout_and_the_encoded_phase() -> None:
    # 2x readout oversampling: 128 samples over 2 x 240 mm encoded, 64 recon samples over 240 mm.
    encoding = parse_header(make_header(readout=128, recon_readout=64, width=48, fov_mm=(240.0, 192.0, 3.0)))
    assert pixel_spacing_mm(encoding) == (192.0 / 48, 240.0 / 64)
    assert slice_thickness_mm(encoding) == 3.0


def test_default_stack_is_axial_and_centred() -> None:
    geometry = default_slice_geometry(4, 5.0)
    assert [g.position[2] for g in geometry.values()] == [-7.5, -2.5, 2.5, 7.5]
    assert {(g.read_dir, g.phase_dir, g.slice_dir) for g in geometry.values()} == {
        ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    }
    assert slice_spacing_mm(geometry, 3.0) == 5.0
    assert slice_spacing_mm(default_slice_geometry(1, 5.0), 3.0) == 3.0


def test_geometry_from_acquisition_headers() -> None:
    heads = make_acquisition_heads(6, coils=2, samples=16)
    heads["idx"]["slice"] = [0, 0, 1, 1, 2, 2]
    heads["read_dir"] = (0.0, 1.0, 0.0)  # sagittal: readout anterior-posterior, phase head-foot
    heads["phase_dir"] = (0.0, 0.0, -1.0)
    heads["slice_dir"] = (-1.0, 0.0, 0.0)
    heads["position"] = [(-4.0 * s, 2.0, 1.0) for s in (0, 0, 1, 1, 2, 2)]
    geometry = slice_geometry_from_acquisitions(heads)
    assert geometry is not None
    assert sorted(geometry) == [0, 1, 2]
    assert geometry[2] == SliceGeometry((-8.0, 2.0, 1.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0))
    assert slice_spacing_mm(geometry, 3.0) == pytest.approx(4.0)


def test_zero_filled_acquisition_headers_give_no_geometry() -> None:
    heads = make_acquisition_heads(2, coils=2, samples=16)
    heads["read_dir"] = 0.0  # synthetic files (ismrmrd_generate_cartesian_shepp_logan) leave them zero
    assert slice_geometry_from_acquisitions(heads) is None


def test_image_plane_puts_the_fov_centre_between_the_middle_pixels() -> None:
    centre = (5.0, -3.0, 12.0)
    plane = image_plane(
        SliceGeometry(centre, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
        height=4,
        width=2,
        spacing=(2.0, 1.0),
    )
    assert plane.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    # 4 readout samples 1 mm apart and 2 phase lines 2 mm apart around the centre.
    np.testing.assert_allclose(plane.position, (5.0 - 1.5, -3.0 - 1.0, 12.0))
    assert plane.slice_location == 12.0
