"""Whole scans through the REST API: prospective and retrospective, plan, completion, images back."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image as PILImage

from kadapt.gateway.domain.trash import Trash
from kadapt.jobs import BlobStore
from kadapt.mrd.messages import Image
from kadapt.mrd.stream import decode_stream
from kadapt.schemas import PlanResponse, ReconJob, ReconResult, ReconStatus

if TYPE_CHECKING:
    from conftest import Gateway, GatewayFactory, Scanner

MRD = "application/vnd.ismrmrd.stream"


async def test_prospective_scan_from_acs_to_images(gateway: Gateway, scanner: Scanner) -> None:
    scan_id = await gateway.create_scan(scanner, acceleration=4.0, num_acs=4, recon="zero-filled")
    scan = (await gateway.client.get(f"/v1/scans/{scan_id}")).json()
    assert scan["state"] == "created"
    assert scan["geometry"] == {
        "slices": 1, "frames": 1, "coils": 4, "height": 32, "width": 32, "readout_samples": 64,
    }  # fmt: skip
    plan_too_early = await gateway.client.get(f"/v1/scans/{scan_id}/plan")
    assert plan_too_early.status_code == 409
    assert plan_too_early.json()["type"].endswith("/invalid-state")

    acs = scanner.acs_columns(4)
    first = await gateway.send(scan_id, scanner.readouts(scanner.lines_for(acs[:2])))
    assert first.status_code == 200, first.text
    assert first.json()["state"] == "calibrating"
    second = await gateway.send(scan_id, scanner.readouts(scanner.lines_for(acs[2:])))
    assert second.json()["state"] in ("planning", "acquiring")

    plan = PlanResponse.model_validate_json((await gateway.client.get(f"/v1/scans/{scan_id}/plan")).content)
    assert not plan.degraded
    assert len(plan.lines) == 8  # round(32 / 4)
    assert set(acs) <= set(plan.lines)
    assert gateway.sampler.requests[0].acquired == tuple(acs)
    assert gateway.sampler.requests[0].acs_npy_b64 is None  # a fixed family never looks at the scan

    rest = [line for line in plan.lines if line not in acs]
    report = (await gateway.send(scan_id, scanner.readouts(scanner.lines_for(rest)))).json()
    assert report["accepted"] == len(rest)
    assert report["outside_plan"] == 0

    done = await gateway.client.post(f"/v1/scans/{scan_id}/complete")
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "reconstructing"
    job = gateway.queue._jobs[next(iter(gateway.queue._jobs))]
    assert isinstance(job, ReconJob)
    assert job.method == "zero-filled"
    blobs = BlobStore(gateway.settings.blobs_dir)
    kspace = blobs.get_array(job.kspace_path, job.kspace_sha256)
    mask = blobs.get_array(job.mask_path, job.mask_sha256)
    assert kspace.shape == (1, 1, 4, 32, 32)
    assert kspace.dtype == np.complex64
    assert mask.shape == (1, 1, 32)
    assert mask.dtype == np.bool_
    assert tuple(np.flatnonzero(mask[0, 0])) == plan.lines
    np.testing.assert_allclose(
        kspace[..., list(plan.lines)], scanner.expected[..., list(plan.lines)], atol=1e-4
    )
    unplanned = [line for line in range(32) if line not in plan.lines]
    assert not np.signbit(kspace[..., unplanned].real).any()  # +0.0, never -0.0
    assert (kspace[..., unplanned] == 0).all()

    not_yet = await gateway.client.get(f"/v1/scans/{scan_id}/images")
    assert not_yet.status_code == 409
    assert "reconstructing" in not_yet.json()["detail"]

    images = np.abs(np.random.default_rng(1).standard_normal((1, 1, 32, 32))).astype(np.float32)
    await gateway.finish_recon(scan_id, images)
    assert (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["state"] == "done"

    npy = await gateway.client.get(f"/v1/scans/{scan_id}/images", params={"format": "npy"})
    assert npy.headers["content-type"] == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), images)

    png = await gateway.client.get(f"/v1/scans/{scan_id}/images", params={"format": "png", "slice": 0})
    assert png.headers["content-type"] == "image/png"
    picture = np.asarray(PILImage.open(io.BytesIO(png.content)))
    assert picture.shape == (32, 32)
    assert picture.dtype == np.uint8
    assert picture.max() == 255

    mrd = await gateway.client.get(f"/v1/scans/{scan_id}/images", params={"format": "mrd"})
    assert mrd.headers["content-type"] == MRD
    (message,) = decode_stream(mrd.content)
    assert isinstance(message, Image)
    np.testing.assert_allclose(message.data[0, 0].T, images[0, 0])

    outside = await gateway.client.get(f"/v1/scans/{scan_id}/images", params={"format": "png", "slice": 3})
    assert outside.status_code == 422

    mask_response = await gateway.client.get(f"/v1/scans/{scan_id}/mask")
    np.testing.assert_array_equal(np.load(io.BytesIO(mask_response.content)), mask)

    assert (await gateway.client.delete(f"/v1/scans/{scan_id}")).status_code == 204
    assert (await gateway.client.get(f"/v1/scans/{scan_id}")).status_code == 404
    assert not (gateway.settings.scans_dir / scan_id).exists()
    assert not Path(job.kspace_path).exists()
    # The directories were renamed into the trash at once; a worker thread removes them soon after.
    trash = [
        Trash.folder_for(gateway.settings.scans_dir),
        Trash.folder_for(gateway.settings.blobs_dir / "scans"),
    ]
    for _ in range(200):
        if not any(any(folder.iterdir()) for folder in trash if folder.exists()):
            break
        await asyncio.sleep(0.01)
    assert all(list(folder.iterdir()) == [] for folder in trash if folder.exists())


async def test_prospective_lines_outside_the_plan_are_kept_and_counted(
    gateway: Gateway, scanner: Scanner
) -> None:
    scan_id = await gateway.create_scan(scanner, acceleration=4.0, num_acs=4)
    acs = scanner.acs_columns(4)
    await gateway.send(scan_id, scanner.readouts(scanner.lines_for(acs)))
    plan = PlanResponse.model_validate_json((await gateway.client.get(f"/v1/scans/{scan_id}/plan")).content)
    extra = next(line for line in range(32) if line not in plan.lines)
    report = (await gateway.send(scan_id, scanner.readouts(scanner.lines_for([extra])))).json()
    assert report == {**report, "accepted": 1, "outside_plan": 1, "skipped_unplanned": 0}
    incomplete = await gateway.client.post(f"/v1/scans/{scan_id}/complete")
    assert incomplete.status_code == 409
    assert "planned lines are missing" in incomplete.json()["detail"]
    forced = await gateway.client.post(f"/v1/scans/{scan_id}/complete", params={"force": "true"})
    assert forced.json()["state"] == "reconstructing"
    assert forced.json()["acquired_lines"] == 5


async def test_retrospective_full_stream_in_one_request_keeps_only_planned_lines(
    make_gateway: GatewayFactory, make_scanner: type[Scanner]
) -> None:
    scanner = make_scanner(slices=2)
    async with make_gateway() as gateway:
        scan_id = await gateway.create_scan(scanner, acceleration=4.0, num_acs=4, retrospective=True)
        payload = scanner.noise(2) + scanner.readouts(scanner.all_lines()) + scanner.close()
        response = await gateway.send(scan_id, payload)
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["state"] == "reconstructing"
        assert report["accepted"] == 2 * 8
        assert report["skipped_unplanned"] == 2 * 24
        assert report["skipped_noise"] == 2
        plan = PlanResponse.model_validate_json(
            (await gateway.client.get(f"/v1/scans/{scan_id}/plan")).content
        )
        assert not plan.degraded
        mask = np.load(io.BytesIO((await gateway.client.get(f"/v1/scans/{scan_id}/mask")).content))
        assert mask.shape == (2, 1, 32)
        for slice_mask in mask[:, 0]:
            assert tuple(np.flatnonzero(slice_mask)) == plan.lines
        stored = gateway.stored_kspace(scan_id)
        unplanned = [line for line in range(32) if line not in plan.lines]
        assert (stored[..., unplanned] == 0).all()
        np.testing.assert_allclose(
            stored[..., list(plan.lines)], scanner.expected[..., list(plan.lines)], atol=1e-4
        )
        assert len(list((gateway.settings.scans_dir / scan_id / "noise").glob("*.npy"))) == 1


async def test_retrospective_stream_in_batches_stages_lines_until_the_plan(
    make_gateway: GatewayFactory, scanner: Scanner
) -> None:
    async with make_gateway() as gateway:
        scan_id = await gateway.create_scan(scanner, acceleration=4.0, num_acs=4, retrospective=True)
        reports = []
        lines = scanner.all_lines()
        for start in range(0, len(lines), 8):
            response = await gateway.send(scan_id, scanner.readouts(lines[start : start + 8]))
            assert response.status_code == 200, response.text
            reports.append(response.json())
        # Lines 0-7 come before the ACS block: held until the plan is known.
        assert reports[0] == {**reports[0], "accepted": 0, "staged": 8, "state": "calibrating"}
        plan = PlanResponse.model_validate_json(
            (await gateway.client.get(f"/v1/scans/{scan_id}/plan")).content
        )
        scan = (await gateway.client.get(f"/v1/scans/{scan_id}")).json()
        assert scan["acquired_lines"] == len(plan.lines)
        planned_last = len([line for line in plan.lines if line >= 24])
        assert reports[-1] == {
            **reports[-1], "accepted": planned_last, "skipped_unplanned": 8 - planned_last, "staged": 0,
        }  # fmt: skip
        mask = np.load(io.BytesIO((await gateway.client.get(f"/v1/scans/{scan_id}/mask")).content))
        assert tuple(np.flatnonzero(mask[0, 0])) == plan.lines
        stored = gateway.stored_kspace(scan_id)
        assert (stored[..., [line for line in range(32) if line not in plan.lines]] == 0).all()
        done = await gateway.client.post(f"/v1/scans/{scan_id}/complete")
        assert done.status_code == 200, done.text


async def test_dynamic_scan_with_kt_fallback_uses_frame_lines(
    make_gateway: GatewayFactory, make_scanner: type[Scanner]
) -> None:
    scanner = make_scanner(frames=3, coils=2)
    async with make_gateway(mode="down") as gateway:
        scan_id = await gateway.create_scan(
            scanner, acceleration=4.0, num_acs=4, fallback="kt-equispaced", retrospective=True
        )
        response = await gateway.send(scan_id, scanner.readouts(scanner.all_lines()))
        assert response.status_code == 200, response.text
        plan = PlanResponse.model_validate_json(
            (await gateway.client.get(f"/v1/scans/{scan_id}/plan")).content
        )
        assert plan.degraded
        assert plan.reason == "sampler-unavailable"
        assert plan.frame_lines is not None
        assert len(plan.frame_lines) == 3
        mask = np.load(io.BytesIO((await gateway.client.get(f"/v1/scans/{scan_id}/mask")).content))
        for frame, lines in enumerate(plan.frame_lines):
            assert len(lines) == 8
            assert tuple(np.flatnonzero(mask[0, frame])) == lines


async def test_multi_round_plans_are_requested_when_a_round_is_in(
    make_gateway: GatewayFactory, scanner: Scanner
) -> None:
    async with make_gateway(mode="two-rounds") as gateway:
        scan_id = await gateway.create_scan(scanner)
        acs = scanner.acs_columns(4)
        await gateway.send(scan_id, scanner.readouts(scanner.lines_for(acs)))
        first = PlanResponse.model_validate_json(
            (await gateway.client.get(f"/v1/scans/{scan_id}/plan")).content
        )
        assert (first.round, first.final, first.lines) == (0, False, (0, *acs, 31))
        not_final = await gateway.client.post(f"/v1/scans/{scan_id}/complete")
        assert "not final" in not_final.json()["detail"]
        await gateway.send(scan_id, scanner.readouts([(0, 0, 0), (31, 0, 0)]))
        second = PlanResponse.model_validate_json(
            (await gateway.client.get(f"/v1/scans/{scan_id}/plan")).content
        )
        assert (second.round, second.final, len(second.lines)) == (1, True, 8)
        assert gateway.sampler.requests[1].acquired == (0, *acs, 31)
        rest = [line for line in second.lines if line not in first.lines]
        await gateway.send(scan_id, scanner.readouts(scanner.lines_for(rest)))
        done = await gateway.client.post(f"/v1/scans/{scan_id}/complete")
        assert done.json()["state"] == "reconstructing"
        assert done.json()["acquired_lines"] == 8


async def test_a_failed_recon_fails_the_scan_and_images_say_why(gateway: Gateway, scanner: Scanner) -> None:
    scan_id = await gateway.create_scan(scanner)
    await gateway.send(scan_id, scanner.readouts(scanner.lines_for(scanner.acs_columns(4))))
    await gateway.client.post(f"/v1/scans/{scan_id}/complete", params={"force": True})
    job_id = (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["recon_job_id"]
    await gateway.queue.put_result(
        ReconResult(
            job_id=job_id,
            scan_id=scan_id,
            status=ReconStatus.failed,
            method_requested="cg-sense",
            method_used="zero-filled",
            fallback_reason="cg-sense diverged",
            error="out of memory",
        )
    )
    scan = (await gateway.client.get(f"/v1/scans/{scan_id}")).json()
    assert scan["state"] == "failed"
    assert scan["error"] == "out of memory"
    assert scan["recon_method_used"] == "zero-filled"
    assert scan["recon_fallback_reason"] == "cg-sense diverged"
    images = await gateway.client.get(f"/v1/scans/{scan_id}/images")
    assert images.status_code == 409
    assert "is failed" in images.json()["detail"]
    assert "out of memory" in images.json()["detail"]


async def test_a_storage_failure_releases_the_claimed_lines(
    gateway: Gateway, scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_id = await gateway.create_scan(scanner)
    kspace_files = gateway.app.state.service.kspace_files

    def disk_broken(*args: object) -> None:
        raise OSError(5, "Input/output error")  # a full volume is 507 instead: test_gateway_faults.py

    monkeypatch.setattr(kspace_files, "write_lines", disk_broken)
    failed = await gateway.send(scan_id, scanner.readouts([(0, 0, 0), (1, 0, 0)]))
    assert failed.status_code == 503
    assert failed.json()["type"].endswith("/service-unavailable")
    monkeypatch.undo()
    again = await gateway.send(scan_id, scanner.readouts([(0, 0, 0), (1, 0, 0)]))
    assert again.json()["accepted"] == 2
