"""The replay client's defaults for cine scans."""

from __future__ import annotations

from kadapt.masks import get_family
from kadapt.replay.run import default_fallback


def test_cine_scans_fall_back_to_a_kt_family_single_frame_scans_to_vd_random() -> None:
    assert default_fallback(1) == "vd-random"
    assert default_fallback(8) == "kt-equispaced"
    # A kt family gives each frame its own lines, as the ADS policy would.
    assert get_family(default_fallback(8)).dims == "kt"
