"""parse_header / make_header: values, derived geometry, tolerance, and errors naming the element."""

from __future__ import annotations

import ismrmrd
import pytest

from kadapt.errors import InvalidHeaderError
from kadapt.mrd.header import EncodingLimit, make_header, parse_header


def test_make_header_is_valid_for_ismrmrd_and_parses_back() -> None:
    xml = make_header(
        readout=320, width=160, recon_readout=160, slices=3, frames=12, coils=16, fov_mm=(300.0, 250.0, 8.0),
        center_line=76, acceleration=4,
    )  # fmt: skip
    header = ismrmrd.xsd.CreateFromDocument(xml)
    assert header.encoding[0].encodedSpace.matrixSize.x == 320
    assert header.encoding[0].encodingLimits.phase.maximum == 11
    assert header.encoding[0].parallelImaging.accelerationFactor.kspace_encoding_step_1 == 4
    info = parse_header(xml)
    assert info.encoded_matrix == (320, 160, 1)
    assert info.recon_matrix == (160, 160, 1)
    assert info.encoded_fov_mm == (600.0, 250.0, 8.0)
    assert info.recon_fov_mm == (300.0, 250.0, 8.0)
    assert info.ky == EncodingLimit(0, 159, 76)
    assert (info.slices, info.phases, info.frames, info.repetitions, info.contrasts) == (3, 12, 12, 1, 1)
    assert info.receiver_channels == 16
    assert info.trajectory == "cartesian"
    assert info.readout_oversampling == 2.0
    assert (info.height, info.width, info.encoded_readout) == (160, 160, 320)
    assert info.ky_offset == 4  # column = ky - 76 + 80


def test_ismrmrd_serialised_header_parses_the_same() -> None:
    xml = make_header(readout=256, width=128, recon_readout=128, coils=8)
    again = ismrmrd.xsd.CreateFromDocument(xml).toXML()
    assert parse_header(again) == parse_header(xml)


def test_nul_terminated_header_without_namespace_and_without_limits() -> None:
    xml = (
        "<ismrmrdHeader><experimentalConditions><H1resonanceFrequency_Hz>1</H1resonanceFrequency_Hz>"
        "</experimentalConditions><encoding>"
        "<encodedSpace><matrixSize><x>64</x><y>48</y><z>1</z></matrixSize>"
        "<fieldOfView_mm><x>200</x><y>150</y><z>5</z></fieldOfView_mm></encodedSpace>"
        "<reconSpace><matrixSize><x>64</x><y>48</y><z>1</z></matrixSize>"
        "<fieldOfView_mm><x>200</x><y>150</y><z>5</z></fieldOfView_mm></reconSpace>"
        "</encoding></ismrmrdHeader>\0garbage"
    )
    info = parse_header(xml)
    assert info.ky == EncodingLimit(0, 47, 24)
    assert info.receiver_channels is None
    assert (info.slices, info.phases, info.readout_oversampling, info.ky_offset) == (1, 1, 1.0, 0)


@pytest.mark.parametrize(
    ("broken", "named"),
    [
        ("<ismrmrdHeader><encoding>", "not well-formed XML"),
        ("<other/>", "root is <other>"),
        ("<ismrmrdHeader/>", "encoding 0 is missing"),
        ("<ismrmrdHeader><encoding/></ismrmrdHeader>", "no <encodedSpace>"),
        (
            "<ismrmrdHeader><encoding><encodedSpace/></encoding></ismrmrdHeader>",
            "no <matrixSize> in <encodedSpace>",
        ),
    ],
)
def test_broken_headers_name_the_problem(broken: str, named: str) -> None:
    with pytest.raises(InvalidHeaderError, match=named):
        parse_header(broken)


def test_missing_recon_space_and_bad_numbers_are_named() -> None:
    xml = make_header(readout=64, width=32)
    without_recon = xml.split("<reconSpace>")[0] + xml.split("</reconSpace>")[1]
    with pytest.raises(InvalidHeaderError, match="no <reconSpace> in <encoding>"):
        parse_header(without_recon)
    with pytest.raises(InvalidHeaderError, match=r"<encodedSpace/matrixSize/x> is 'abc'"):
        parse_header(xml.replace("<x>64</x>", "<x>abc</x>", 1))
    with pytest.raises(InvalidHeaderError, match="every size must be >= 1"):
        parse_header(xml.replace("<y>32</y>", "<y>0</y>", 1))


def test_make_header_rejects_a_centre_outside_the_limits() -> None:
    with pytest.raises(InvalidHeaderError, match="center_line=40"):
        make_header(readout=64, width=32, center_line=40)
