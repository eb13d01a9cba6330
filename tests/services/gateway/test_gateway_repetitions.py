"""Headers with several repetitions: a (slice, frame, ky) line is acquired once, by its first readout; the
same line in a later repetition is skipped, the same line twice in one repetition (or again in
repetition 0) is a duplicate — whether the readouts share a request or not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from kadapt.mrd.stream import decode_acquisitions, encode_acquisitions

if TYPE_CHECKING:
    from conftest import Gateway, Scanner


def with_repetitions(payload: bytes, repetitions: Sequence[int], scale: float = 1.0) -> bytes:
    """``payload``'s readouts with ``idx.repetition`` set (one value per readout), samples scaled."""
    batch = decode_acquisitions(payload)
    heads = batch.heads.copy()
    heads["idx"]["repetition"] = list(repetitions)
    return encode_acquisitions(heads, (np.asarray(batch.data) * scale).astype(np.complex64))


async def create(gateway: Gateway, scanner: Scanner, repetitions: int) -> str:
    response = await gateway.client.post(
        "/v1/scans",
        json={"header_xml": scanner.header(repetitions=repetitions), "policy": {"num_acs": 4}},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["scan_id"])


async def test_a_line_repeated_in_a_later_repetition_is_stored_once(
    gateway: Gateway, scanner: Scanner
) -> None:
    scan_id = await create(gateway, scanner, repetitions=4)
    first = with_repetitions(scanner.readouts(scanner.lines_for([3, 5])), [0, 0])
    assert (await gateway.send(scan_id, first)).json()["accepted"] == 2
    # Later repetitions bring line 3 again (skipped, its first samples stay) and line 7 (new).
    again = with_repetitions(scanner.readouts(scanner.lines_for([3, 7])), [1, 1], scale=10.0)
    report = await gateway.send(scan_id, again)
    assert report.status_code == 200, report.text
    assert report.json()["accepted"] == 1
    assert (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["acquired_lines"] == 3
    stored = gateway.stored_kspace(scan_id)[0, 0]
    np.testing.assert_allclose(stored[..., 3], scanner.expected[0, 0][..., 3], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stored[..., 7], 10 * scanner.expected[0, 0][..., 7], rtol=1e-4, atol=1e-3)


async def test_repetitions_of_a_line_within_one_request_keep_the_first(
    gateway: Gateway, scanner: Scanner
) -> None:
    scan_id = await create(gateway, scanner, repetitions=3)
    payload = with_repetitions(scanner.readouts(scanner.lines_for([2, 2, 2, 9])), [0, 1, 2, 1])
    report = await gateway.send(scan_id, payload)
    assert report.status_code == 200, report.text
    assert report.json()["accepted"] == 2
    stored = gateway.stored_kspace(scan_id)[0, 0]
    np.testing.assert_allclose(stored[..., 2], scanner.expected[0, 0][..., 2], rtol=1e-4, atol=1e-4)


async def test_a_line_twice_in_one_repetition_or_again_in_repetition_zero_is_a_duplicate(
    gateway: Gateway, scanner: Scanner
) -> None:
    scan_id = await create(gateway, scanner, repetitions=2)
    same_repetition = with_repetitions(scanner.readouts(scanner.lines_for([4, 4])), [1, 1])
    response = await gateway.send(scan_id, same_repetition)
    assert response.status_code == 409
    assert "repetition 1" in response.json()["detail"]
    back_to_zero = with_repetitions(scanner.readouts(scanner.lines_for([4, 4])), [1, 0])
    assert (await gateway.send(scan_id, back_to_zero)).status_code == 409

    assert (
        await gateway.send(scan_id, with_repetitions(scanner.readouts(scanner.lines_for([4])), [0]))
    ).is_success
    again = await gateway.send(scan_id, with_repetitions(scanner.readouts(scanner.lines_for([4])), [0]))
    assert again.status_code == 409
    assert again.json()["type"].endswith("/duplicate-line")
    assert (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["acquired_lines"] == 1


async def test_retrospective_scan_over_repetitions_keeps_the_planned_lines(
    gateway: Gateway, scanner: Scanner
) -> None:
    response = await gateway.client.post(
        "/v1/scans",
        json={
            "header_xml": scanner.header(repetitions=2),
            "policy": {"num_acs": 4, "acceleration": 2.0, "retrospective": True},
        },
    )
    scan_id = response.json()["scan_id"]
    # Two repetitions, each with the ACS block and every other line (like `-a 2 -w 4` files).
    acs = scanner.acs_columns(4)
    columns = [sorted({*range(r, scanner.width, 2), *acs}) for r in (0, 1)]
    for repetition, lines in enumerate(columns):
        payload = scanner.readouts(scanner.lines_for(lines))
        sent = await gateway.send(scan_id, with_repetitions(payload, [repetition] * len(lines)))
        assert sent.status_code == 200, sent.text
    plan = (await gateway.client.get(f"/v1/scans/{scan_id}/plan")).json()
    mask = (await gateway.client.get(f"/v1/scans/{scan_id}")).json()
    assert mask["acquired_lines"] == len(plan["lines"]) == 16
