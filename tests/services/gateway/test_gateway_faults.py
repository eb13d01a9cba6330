"""Faults on the gateway's side (docs/faults.md): a full volume is a typed 507 that leaves nothing
half-written and the scan retryable; a requeued dead-lettered recon job brings its failed scan back."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from kadapt.gateway.domain import kspace_files
from kadapt.jobs.dead_letters import RequeueOutcome, requeue
from kadapt.schemas import PlanResponse

if TYPE_CHECKING:
    from conftest import Gateway, GatewayFactory, Scanner

FULL = "https://kadapt.dev/problems/insufficient-storage"


def disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def acquire_planned(gateway: Gateway, scanner: Scanner, **policy: Any) -> str:
    """A scan with its ACS block and every planned line in: ready to complete."""
    scan_id = await gateway.create_scan(scanner, recon="zero-filled", **policy)
    acs = scanner.acs_columns(4)
    assert (await gateway.send(scan_id, scanner.readouts(scanner.lines_for(acs)))).status_code == 200
    plan = PlanResponse.model_validate_json((await gateway.client.get(f"/v1/scans/{scan_id}/plan")).content)
    rest = [line for line in plan.lines if line not in acs]
    assert (await gateway.send(scan_id, scanner.readouts(scanner.lines_for(rest)))).status_code == 200
    return scan_id


async def test_a_full_volume_at_creation_is_507_and_leaves_no_scan_directory(
    gateway: Gateway, scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kspace_files, "open_memmap", disk_full)
    response = await gateway.client.post(
        "/v1/scans", json={"header_xml": scanner.header(), "policy": {"num_acs": 4}}
    )
    assert response.status_code == 507, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == FULL
    assert list(gateway.settings.scans_dir.glob("*")) == []


async def test_a_full_volume_at_ingest_is_507_and_the_lines_can_be_sent_again(
    gateway: Gateway, scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_id = await gateway.create_scan(scanner)
    monkeypatch.setattr(gateway.app.state.service.kspace_files, "write_lines", disk_full)
    failed = await gateway.send(scan_id, scanner.readouts([(0, 0, 0), (1, 0, 0)]))
    assert failed.status_code == 507
    assert failed.json()["type"] == FULL
    monkeypatch.undo()
    again = await gateway.send(scan_id, scanner.readouts([(0, 0, 0), (1, 0, 0)]))
    assert again.json()["accepted"] == 2


@pytest.mark.parametrize("failing_write", [1, 2], ids=["kspace-blob", "mask-blob"])
async def test_a_full_blob_volume_at_completion_writes_nothing_and_completing_can_be_repeated(
    failing_write: int, gateway: Gateway, scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_id = await acquire_planned(gateway, scanner)
    real_fsync = os.fsync
    calls = iter(range(1, 100))

    def fsync_until_full(descriptor: int) -> None:
        # The blob's bytes went to a temporary file; the volume runs out when they are flushed.
        if next(calls) == failing_write:
            disk_full()
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    failed = await gateway.client.post(f"/v1/scans/{scan_id}/complete")
    assert failed.status_code == 507, failed.text
    assert failed.json()["type"] == FULL
    assert "volume is full" in failed.json()["detail"]
    scan_blobs = gateway.settings.blobs_dir / "scans" / scan_id
    assert sorted(path.name for path in scan_blobs.rglob("*")) == []  # no blob, no temporary file
    assert (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["state"] == "acquiring"

    monkeypatch.undo()  # space freed
    completed = await gateway.client.post(f"/v1/scans/{scan_id}/complete")
    assert completed.json()["state"] == "reconstructing", completed.text
    assert len(list(scan_blobs.glob("*.npy"))) == 2


@pytest.mark.integration
async def test_a_requeued_dead_letter_brings_its_failed_scan_back(
    make_gateway: GatewayFactory, scanner: Scanner, redis_server: Any
) -> None:
    async with make_gateway(redis_url=redis_server.url) as gateway:
        scan_id = await acquire_planned(gateway, scanner)
        assert (await gateway.client.post(f"/v1/scans/{scan_id}/complete")).status_code == 200
        (delivery,) = await gateway.queue.claim("crashing-worker", 1, 0)
        await gateway.queue.dead_letter(delivery, "worker crashed")
        failed = (await gateway.client.get(f"/v1/scans/{scan_id}")).json()
        assert failed["state"] == "failed"
        assert "dead-lettered" in failed["error"]

        report = await requeue(gateway.queue, delivery.job.job_id)
        assert report.outcome == RequeueOutcome.requeued
        reopened = (await gateway.client.get(f"/v1/scans/{scan_id}")).json()
        assert (reopened["state"], reopened["error"]) == ("reconstructing", None)
        (again,) = await gateway.queue.claim("healthy-worker", 1, 0)
        assert (again.job, again.deliveries) == (delivery.job, 1)
        images = np.ones((1, 1, 32, 32), dtype=np.float32)
        await gateway.finish_recon(scan_id, images)
        await gateway.queue.ack(again)
        assert (await gateway.client.get(f"/v1/scans/{scan_id}")).json()["state"] == "done"
