"""Every bad input is a 4xx problem+json with a stable type, stores nothing, and breaks nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest

from kadapt.errors import PROBLEM_BASE

if TYPE_CHECKING:
    from conftest import Gateway, GatewayFactory, Scanner

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem: dict[str, object] = response.json()
    assert problem["type"] == PROBLEM_BASE + slug
    assert problem["status"] == status
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    return problem


def nan_payload(scanner: Scanner) -> bytes:
    data = np.stack([scanner.raw[0, 0, :, :, ky] for ky in (5, 6)])
    data[1, 2, 7] = np.complex64(complex(np.nan, 0.0))
    return scanner.readouts([(5, 0, 0), (6, 0, 0)], data=data)


def inf_payload(scanner: Scanner) -> bytes:
    data = np.stack([scanner.raw[0, 0, :, :, 5]])
    data[0, 0, 0] = np.complex64(complex(0.0, np.inf))
    return scanner.readouts([(5, 0, 0)], data=data)


# name -> (payload builder, status, slug, detail fragment). Every payload also carries good new lines
# (ky 5 first), so "nothing stored" proves the request was refused as a whole.
BAD_PAYLOADS: dict[str, tuple[Callable[[Scanner], bytes], int, str, str]] = {
    "malformed bytes": (lambda s: s.readouts([(5, 0, 0)]) + b"\x39\x30garbage", 400, "mrd-malformed", "id"),
    "truncated message": (
        lambda s: s.readouts([(5, 0, 0), (6, 0, 0)])[:-100],
        400,
        "mrd-truncated",
        "truncated",
    ),
    "wrong coil count": (
        lambda s: s.readouts([(5, 0, 0)]) + s.readouts([(6, 0, 0)], coils=3),
        422,
        "geometry-mismatch",
        "3 coils",
    ),
    "wrong sample count": (
        lambda s: s.readouts([(5, 0, 0)], samples=60),
        422,
        "geometry-mismatch",
        "60 samples",
    ),
    "NaN data": (nan_payload, 422, "non-finite-data", "readout 1"),
    "Inf data": (inf_payload, 422, "non-finite-data", "readout 0"),
    "ky outside limits": (lambda s: s.readouts([(5, 0, 0), (40, 0, 0)]), 422, "encode-out-of-range", "ky=40"),
    "slice outside limits": (
        lambda s: s.readouts([(5, 0, 0), (6, 1, 0)]),
        422,
        "encode-out-of-range",
        "slice=1",
    ),
    "frame outside limits": (
        lambda s: s.readouts([(5, 0, 0), (6, 0, 2)]),
        422,
        "encode-out-of-range",
        "phase=2",
    ),
    "duplicate across requests": (
        lambda s: s.readouts([(5, 0, 0), (0, 0, 0)]),
        409,
        "duplicate-line",
        "ky=0",
    ),
    "duplicate within a request": (
        lambda s: s.readouts([(5, 0, 0), (6, 0, 0), (5, 0, 0)]),
        409,
        "duplicate-line",
        "ky=5",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
async def test_bad_acquisitions_change_nothing(gateway: Gateway, scanner: Scanner, case: str) -> None:
    build, status, slug, fragment = BAD_PAYLOADS[case]
    scan_id = await gateway.create_scan(scanner, num_acs=4)
    other_id = await gateway.create_scan(scanner, num_acs=4)
    assert (await gateway.send(scan_id, scanner.readouts([(0, 0, 0), (1, 0, 0)]))).status_code == 200
    before_scan = (await gateway.client.get(f"/v1/scans/{scan_id}")).json()
    before_kspace = gateway.stored_kspace(scan_id)

    problem = assert_problem(await gateway.send(scan_id, build(scanner)), status, slug)
    assert fragment in str(problem["detail"])
    assert problem["instance"] == f"/v1/scans/{scan_id}/acquisitions"

    assert (await gateway.client.get(f"/v1/scans/{scan_id}")).json() == before_scan
    np.testing.assert_array_equal(gateway.stored_kspace(scan_id), before_kspace)
    good = await gateway.send(scan_id, scanner.readouts([(5, 0, 0), (6, 0, 0)]))
    assert good.status_code == 200
    assert good.json()["accepted"] == 2
    stored = gateway.stored_kspace(scan_id)
    np.testing.assert_allclose(stored[..., [0, 1, 5, 6]], scanner.expected[..., [0, 1, 5, 6]], atol=1e-4)
    other = await gateway.send(other_id, scanner.readouts([(5, 0, 0)]))
    assert other.status_code == 200
    assert other.json()["accepted"] == 1


async def test_unknown_scan_is_404(gateway: Gateway, scanner: Scanner) -> None:
    missing = "0" * 32
    assert_problem(await gateway.send(missing, scanner.readouts([(0, 0, 0)])), 404, "scan-not-found")
    for path in ("", "/plan", "/images", "/mask"):
        assert_problem(await gateway.client.get(f"/v1/scans/{missing}{path}"), 404, "scan-not-found")
    assert_problem(await gateway.client.post(f"/v1/scans/{missing}/complete"), 404, "scan-not-found")
    assert_problem(await gateway.client.delete(f"/v1/scans/{missing}"), 404, "scan-not-found")
    assert_problem(await gateway.client.get("/v1/scans/..etc"), 404, "scan-not-found")
    assert_problem(await gateway.client.get("/v1/no-such-route"), 404, "not-found")


async def test_wrong_content_type_is_415(gateway: Gateway, scanner: Scanner) -> None:
    scan_id = await gateway.create_scan(scanner)
    response = await gateway.send(scan_id, scanner.readouts([(0, 0, 0)]), content_type="application/json")
    assert_problem(response, 415, "unsupported-media-type")
    octet = await gateway.send(
        scan_id, scanner.readouts([(0, 0, 0)]), content_type="application/octet-stream"
    )
    assert octet.status_code == 200


@pytest.mark.parametrize(
    ("policy", "status", "slug"),
    [
        ({"acceleration": 3.0, "num_acs": 16}, 422, "invalid-acceleration"),  # round(32/3) = 11 < 16 ACS
        ({"num_acs": 40}, 422, "invalid-acceleration"),  # more ACS lines than W = 32
        ({"fallback": "no-such-family"}, 404, "mask-family-not-found"),
        ({"fallback": "poisson-2d"}, 400, "invalid-input"),
        ({"outputs": ["npy", "tiff"]}, 400, "invalid-input"),
        ({"acceleration": "4"}, 422, "invalid-input"),  # strict types: no string for a number
        ({"acceleration": 0.5}, 422, "invalid-input"),
    ],
)
async def test_impossible_policies_are_refused(
    gateway: Gateway, scanner: Scanner, policy: dict[str, object], status: int, slug: str
) -> None:
    body = {"header_xml": scanner.header(), "policy": {"num_acs": 4, **policy}}
    assert_problem(await gateway.client.post("/v1/scans", json=body), status, slug)
    assert list(gateway.settings.scans_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("<not-xml", "well-formed"),
        ("<ismrmrdHeader/>", "encoding"),
        ("radial", "trajectory"),
        ("no-coils", "receiverChannels"),
    ],
)
async def test_invalid_headers_are_refused(
    gateway: Gateway, scanner: Scanner, header: str, fragment: str
) -> None:
    xml = {
        "radial": scanner.header(trajectory="radial"),
        "no-coils": scanner.header(coils=None),
    }.get(header, header)
    problem = assert_problem(
        await gateway.client.post("/v1/scans", json={"header_xml": xml}), 422, "invalid-header"
    )
    assert fragment in str(problem["detail"])
    assert list(gateway.settings.scans_dir.iterdir()) == []


async def test_malformed_json_body_is_422_invalid_input(gateway: Gateway) -> None:
    response = await gateway.client.post(
        "/v1/scans", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "invalid-input")
    missing = await gateway.client.post("/v1/scans", json={"policy": {}})
    assert "header_xml" in str(assert_problem(missing, 422, "invalid-input")["detail"])


async def test_oversize_bodies_are_413_with_and_without_content_length(
    make_gateway: GatewayFactory, scanner: Scanner
) -> None:
    async with make_gateway(max_body_bytes=20_000) as gateway:
        scan_id = await gateway.create_scan(scanner)
        other_id = await gateway.create_scan(scanner)
        big = scanner.readouts([(ky, 0, 0) for ky in range(10)])  # 10 x (2 + 340 + 4*64*8) bytes
        assert len(big) > 20_000
        assert_problem(await gateway.send(scan_id, big), 413, "payload-too-large")

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 4096):
                yield big[start : start + 4096]

        chunked = await gateway.client.post(
            f"/v1/scans/{scan_id}/acquisitions",
            content=chunks(),
            headers={"content-type": "application/octet-stream"},
        )
        assert "content-length" not in chunked.request.headers
        assert_problem(chunked, 413, "payload-too-large")
        assert gateway.stored_kspace(scan_id).any() is np.False_
        small = scanner.readouts([(0, 0, 0), (1, 0, 0)])
        assert (await gateway.send(scan_id, small)).json()["accepted"] == 2
        assert (await gateway.send(other_id, small)).json()["accepted"] == 2


async def test_ingest_after_completion_is_409(gateway: Gateway, scanner: Scanner) -> None:
    scan_id = await gateway.create_scan(scanner, num_acs=4)
    await gateway.send(scan_id, scanner.readouts([(0, 0, 0)]))
    assert (
        await gateway.client.post(f"/v1/scans/{scan_id}/complete", params={"force": True})
    ).status_code == 200
    assert_problem(await gateway.send(scan_id, scanner.readouts([(1, 0, 0)])), 409, "invalid-state")
    assert_problem(await gateway.client.post(f"/v1/scans/{scan_id}/complete"), 409, "invalid-state")


async def test_completion_without_data_or_plan_is_409(gateway: Gateway, scanner: Scanner) -> None:
    scan_id = await gateway.create_scan(scanner, num_acs=4)
    assert_problem(await gateway.client.post(f"/v1/scans/{scan_id}/complete"), 409, "invalid-state")
    assert_problem(await gateway.send(scan_id, scanner.close()), 409, "invalid-state")
    await gateway.send(scan_id, scanner.readouts([(0, 0, 0)]))
    problem = assert_problem(await gateway.client.post(f"/v1/scans/{scan_id}/complete"), 409, "invalid-state")
    assert "no plan yet" in str(problem["detail"])
    assert (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["state"] == "calibrating"
