"""Ingest stages without HTTP: decode, validate, readout handling (oversampling, reverse, noise)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from kadapt.errors import DuplicateLineError, EncodeOutOfRangeError, GeometryMismatchError
from kadapt.gateway.domain.creation import new_session
from kadapt.gateway.domain.ingest import decode_request, parse_request, prepare_lines
from kadapt.gateway.domain.session import ScanSession
from kadapt.mrd.constants import AcquisitionFlag, flag_mask
from kadapt.mrd.messages import Text
from kadapt.mrd.stream import encode_message
from kadapt.schemas import ScanCreate, ScanPolicy

if TYPE_CHECKING:
    from conftest import Scanner


def session_for(scanner: Scanner, **header: object) -> ScanSession:
    return new_session(ScanCreate(header_xml=scanner.header(**header), policy=ScanPolicy(num_acs=4)))


def test_oversampling_removal_recovers_the_centre_of_the_readout(scanner: Scanner) -> None:
    session = session_for(scanner)
    parsed = parse_request(scanner.readouts(scanner.all_lines()), session)
    lines = prepare_lines(parsed.data, parsed.reverse, session.geometry.height)
    assert lines.shape == (32, 4, 32)
    assert lines.dtype == np.complex64
    expected = np.moveaxis(scanner.expected[0, 0], -1, 0)  # (W, coil, H)
    np.testing.assert_allclose(lines[parsed.columns], expected, atol=1e-4)


def test_reversed_readouts_are_flipped(scanner: Scanner) -> None:
    session = session_for(scanner)
    data = np.stack([scanner.raw[0, 0, :, ::-1, 3]])  # the scanner sampled it backwards
    reverse = flag_mask(AcquisitionFlag.ACQ_IS_REVERSE)
    parsed = parse_request(scanner.readouts([(3, 0, 0)], data=data, flags=[reverse]), session)
    assert parsed.reverse.tolist() == [True]
    lines = prepare_lines(parsed.data, parsed.reverse, 32)
    np.testing.assert_allclose(lines[0], scanner.expected[0, 0, :, :, 3], atol=1e-4)


def test_noise_and_navigators_are_set_aside_and_other_messages_ignored(scanner: Scanner) -> None:
    session = session_for(scanner)
    navigator = flag_mask(AcquisitionFlag.ACQ_IS_NAVIGATION_DATA)
    payload = (
        encode_message(Text('{"hello": 1}'))
        + scanner.noise(3, samples=128)
        + scanner.readouts([(1, 0, 0), (1, 0, 0)], flags=[0, navigator])  # same ky: the navigator is no line
        + scanner.close()
    )
    parsed = parse_request(payload, session)
    assert parsed.lines == 1
    assert parsed.skipped == 4
    assert parsed.close
    assert [block.shape for block in parsed.noise] == [(3, 4, 128)]


def test_decode_request_groups_readouts_by_shape(scanner: Scanner) -> None:
    decoded = decode_request(scanner.readouts([(0, 0, 0), (1, 0, 0)]) + scanner.noise(1, samples=16))
    assert decoded.count == 3
    assert not decoded.close
    assert [(indices.tolist(), batch.data.shape) for indices, batch in decoded.groups] == [
        ([0, 1], (2, 4, 64)),
        ([2], (1, 4, 16)),
    ]
    assert decode_request(b"").count == 0


def test_header_ky_limits_and_offset_are_honoured(scanner: Scanner) -> None:
    # Partial Fourier: ky 0..23 acquired, the k-space centre at ky 12 -> column = ky + 4.
    session = session_for(scanner, center_line=12, ky_maximum=23)
    parsed = parse_request(scanner.readouts([(0, 0, 0), (23, 0, 0)]), session)
    assert parsed.columns.tolist() == [4, 27]
    with pytest.raises(EncodeOutOfRangeError, match="ky=24"):
        parse_request(scanner.readouts([(24, 0, 0)]), session)


def test_validation_order_names_the_first_bad_readout(scanner: Scanner) -> None:
    session = session_for(scanner)
    with pytest.raises(GeometryMismatchError, match="readout 1 has 2 coils"):
        parse_request(scanner.readouts([(0, 0, 0)]) + scanner.readouts([(1, 0, 0)], coils=2), session)
    with pytest.raises(DuplicateLineError, match="ky=0"):
        parse_request(scanner.readouts([(0, 0, 0), (0, 0, 0)]), session)
