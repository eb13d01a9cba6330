"""ReconWorker end to end: blobs in, images blob + result out, with the in-memory queue and real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from kadapt.classic import reconstruct
from kadapt.jobs.blobs import BlobStore
from kadapt.jobs.queue import JobQueue, MemoryJobQueue
from kadapt.jobs.redis_queue import RedisJobQueue
from kadapt.recon.domain.methods import MethodRegistry, ReconMethod, classic_methods, default_registry
from kadapt.recon.domain.worker import ReconMetrics, ReconWorker
from kadapt.schemas.jobs import ReconResult, ReconStatus


def counter(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
async def running() -> AsyncIterator[Callable[[ReconWorker], Awaitable[None]]]:
    """``await start(worker)`` runs it in the background until the test ends."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(worker: ReconWorker) -> None:
        tasks.append(asyncio.create_task(worker.run(stop)))
        await asyncio.sleep(0)

    yield start
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


async def wait_for_result(queue: JobQueue, job_id: str, timeout_s: float = 30.0) -> ReconResult:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        result = await queue.get_result(job_id)
        if result is not None:
            return result
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no result for {job_id} within {timeout_s} s")


def make_worker(queue: JobQueue, tmp_path: Path, **options: Any) -> tuple[ReconWorker, CollectorRegistry]:
    registry = CollectorRegistry()
    options.setdefault("block_ms", 50)
    worker = ReconWorker(
        queue, BlobStore(tmp_path / "blobs"), "worker-a", metrics=ReconMetrics.create(registry), **options
    )
    return worker, registry


async def test_memory_queue_end_to_end(tmp_path: Path, stage_job: Any, running: Any) -> None:
    queue = MemoryJobQueue()
    worker, registry = make_worker(queue, tmp_path)
    staged = stage_job("e2e", method="cg-sense")
    await running(worker)
    await queue.enqueue(staged.job)
    result = await wait_for_result(queue, "e2e")

    assert result.status == ReconStatus.done
    assert (result.method_requested, result.method_used, result.fallback_reason) == (
        "cg-sense",
        "cg-sense",
        None,
    )
    assert result.deliveries == 1
    assert result.elapsed_ms > 0
    assert result.images_path is not None
    assert result.images_sha256 is not None
    images = BlobStore(tmp_path / "blobs").get_array(result.images_path, result.images_sha256)
    np.testing.assert_array_equal(
        images, reconstruct("cg-sense", staged.kspace, staged.mask, staged.job.num_acs)
    )
    assert await queue.pending_count() == 0
    assert counter(registry, "kadapt_recon_jobs_total", status="done") == 1
    assert counter(registry, "kadapt_recon_job_seconds_count") == 1


async def test_checksum_mismatch_fails_the_job_for_good(tmp_path: Path, stage_job: Any) -> None:
    queue = MemoryJobQueue()
    worker, registry = make_worker(queue, tmp_path)
    staged = stage_job("tampered")
    Path(staged.job.mask_path).write_bytes(Path(staged.job.mask_path).read_bytes()[:-1] + b"\x01")
    await queue.enqueue(staged.job)
    (delivery,) = await queue.claim("worker-a", 1, 0)
    result = await worker.process(delivery)

    assert result is not None
    assert result.status == ReconStatus.failed
    assert result.error is not None
    assert result.error.startswith("checksum-mismatch")
    assert staged.job.mask_path in result.error
    assert await queue.get_result("tampered") == result
    assert await queue.pending_count() == 0  # acked: a retry cannot fix the data
    assert counter(registry, "kadapt_recon_jobs_total", status="failed") == 1


@pytest.mark.parametrize(
    ("change", "slug"),
    [
        ({"kspace_path": "scans/none/kspace.npy"}, "not-found"),
        ({"mask_path": "/etc/hostname"}, "invalid-input"),
        ({"method": "grappa"}, "recon-method-not-found"),
        ({"num_acs": 63}, "invalid-input"),  # the mask lacks such an ACS block
    ],
)
async def test_data_errors_store_a_failed_result(
    tmp_path: Path, stage_job: Any, change: dict[str, Any], slug: str
) -> None:
    queue = MemoryJobQueue()
    worker, _ = make_worker(queue, tmp_path)
    staged = stage_job("bad")
    job = staged.job.model_copy(update=change)
    await queue.enqueue(job)
    (delivery,) = await queue.claim("worker-a", 1, 0)
    result = await worker.process(delivery)
    assert result is not None
    assert result.status == ReconStatus.failed
    assert result.error is not None
    assert result.error.startswith(slug)
    assert await queue.pending_count() == 0


async def test_existing_result_is_acked_and_skipped(tmp_path: Path, stage_job: Any) -> None:
    queue = MemoryJobQueue()
    worker, registry = make_worker(queue, tmp_path)
    staged = stage_job("twice")
    earlier = ReconResult(
        job_id="twice", scan_id="s", status=ReconStatus.done, method_requested="zero-filled"
    )
    await queue.put_result(earlier)
    await queue.enqueue(staged.job)
    (delivery,) = await queue.claim("worker-a", 1, 0)
    assert await worker.process(delivery) == earlier
    assert await queue.pending_count() == 0
    assert counter(registry, "kadapt_recon_jobs_total", status="duplicate") == 1
    assert not (tmp_path / "blobs" / "recon").exists()  # nothing was reconstructed


async def test_unexpected_errors_are_retried_then_dead_lettered(
    tmp_path: Path, stage_job: Any, running: Any
) -> None:
    def explode(kspace: Any, mask: Any, num_acs: int) -> Any:
        raise RuntimeError("simulated worker bug")

    methods = MethodRegistry([ReconMethod("explode", "always fails", "classic", explode)])
    queue = MemoryJobQueue(max_deliveries=2, claim_idle_ms=100)
    worker, registry = make_worker(queue, tmp_path, methods=methods)
    await running(worker)
    await queue.enqueue(stage_job("flaky", method="explode").job)
    result = await wait_for_result(queue, "flaky")

    assert result.status == ReconStatus.failed
    assert result.error is not None
    assert "dead-lettered after 3 deliveries" in result.error
    assert counter(registry, "kadapt_recon_jobs_total", status="retry") == 2
    assert counter(registry, "kadapt_recon_redeliveries_total") == 1
    assert [dead.job.job_id for dead in queue.dead_letters] == ["flaky"]


async def test_bundle_method_falls_back_to_cg_sense(tmp_path: Path, stage_job: Any) -> None:
    repository = tmp_path / "models"
    (repository / "modl-knee" / "1").mkdir(parents=True)
    (repository / "modl-knee" / "1" / "manifest.json").write_text(json.dumps({"kind": "modl"}))
    queue = MemoryJobQueue()
    worker, registry = make_worker(queue, tmp_path, methods=default_registry(repository))
    await queue.enqueue(stage_job("learned", method="modl-knee").job)
    (delivery,) = await queue.claim("worker-a", 1, 0)
    result = await worker.process(delivery)
    assert result is not None
    assert result.status == ReconStatus.done
    assert (result.method_requested, result.method_used) == ("modl-knee", "cg-sense")
    assert result.fallback_reason is not None
    assert "modl-knee" in result.fallback_reason
    assert counter(registry, "kadapt_recon_fallbacks_total") == 1


async def test_losing_a_race_keeps_the_winner_and_deletes_own_images(tmp_path: Path, stage_job: Any) -> None:
    queue = MemoryJobQueue()
    loop = asyncio.get_running_loop()
    winner = ReconResult(job_id="race", scan_id="s", status=ReconStatus.done, method_requested="slow")

    def finish_elsewhere_first(kspace: Any, mask: Any, num_acs: int) -> Any:
        # Another worker (a takeover of this job) stores its result while this one is still computing.
        asyncio.run_coroutine_threadsafe(queue.put_result(winner), loop).result(timeout=5)
        return reconstruct("zero-filled", kspace, mask, num_acs)

    methods = MethodRegistry([*classic_methods(), ReconMethod("slow", "", "classic", finish_elsewhere_first)])
    worker, registry = make_worker(queue, tmp_path, methods=methods)
    await queue.enqueue(stage_job("race", method="slow").job)
    (delivery,) = await queue.claim("worker-a", 1, 0)
    assert await worker.process(delivery) == winner
    assert await queue.get_result("race") == winner
    assert list((tmp_path / "blobs" / "recon").rglob("*.npy")) == []
    assert counter(registry, "kadapt_recon_jobs_total", status="duplicate") == 1


@pytest.mark.integration
async def test_redis_end_to_end_across_a_server_restart(
    tmp_path: Path, stage_job: Any, running: Any, redis_server: Any
) -> None:
    queue = RedisJobQueue.from_url(redis_server.url, claim_idle_ms=500)
    try:
        worker, registry = make_worker(queue, tmp_path, backoff_s=(0.05, 0.2))
        await running(worker)
        await queue.enqueue(stage_job("before", method="l1-wavelet").job)
        first = await wait_for_result(queue, "before")
        assert first.status == ReconStatus.done

        redis_server.restart()  # the worker rides out the outage and keeps consuming
        await queue.enqueue(stage_job("after", method="sense", seed=1).job)
        second = await wait_for_result(queue, "after")
        assert (second.status, second.method_used) == (ReconStatus.done, "sense")
        assert await queue.pending_count() == 0
        assert await queue.get_result("before") == first  # results persist (AOF)
        assert counter(registry, "kadapt_recon_jobs_total", status="done") == 2
    finally:
        await queue.close()
