"""The recon worker: claims jobs from a :class:`kadapt.jobs.JobQueue`, reconstructs, stores the result.

Per delivery (at-least-once queue, so the worker is idempotent):

1. a result exists already (a redelivery after a crash between storing and acking) -> ack, skip;
2. choose the method (fallback for bundle names), load the k-space and mask blobs (sha256 verified),
   reconstruct and write the images blob -- in a thread, the event loop stays free;
3. store the ``done`` result (write-once), then ack. Acking only after the result is stored is what makes
   a crash lose no job.

A data error (:class:`InvalidInputError`, :class:`NotFoundError`, :class:`ChecksumMismatchError`) cannot
succeed on retry: a ``failed`` result is stored and the delivery acked. Any other exception leaves the
delivery pending: the queue hands it out again after ``claim_idle_ms`` and dead-letters it after
``max_deliveries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from kadapt.classic import check_recon_inputs
from kadapt.errors import ChecksumMismatchError, InvalidInputError, NotFoundError, ServiceUnavailableError
from kadapt.jobs.blobs import BlobStore
from kadapt.jobs.queue import Delivery, JobQueue, enqueued_unix_ms
from kadapt.recon.domain.learned import scan_shape
from kadapt.recon.domain.methods import MethodChoice, MethodRegistry, default_registry
from kadapt.schemas.jobs import ReconJob, ReconResult, ReconStatus

logger = logging.getLogger(__name__)

#: Errors that a retry cannot fix: the job's data (or its method name) is wrong.
NON_RETRIABLE_ERRORS = (InvalidInputError, NotFoundError, ChecksumMismatchError)

_UNSAFE_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")

#: Seconds: a classic slice takes tenths, a learned volume seconds, a backlog minutes.
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class ReconMetrics:
    """The worker's Prometheus metrics, on a per-app registry (never the process-global one)."""

    jobs: Counter
    job_seconds: Histogram
    queue_wait_seconds: Histogram
    redeliveries: Counter
    fallbacks: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ReconMetrics:
        return cls(
            jobs=Counter(
                "kadapt_recon_jobs",
                "Recon deliveries by outcome: done, failed, duplicate (result existed), retry (left pending)",
                ["status"],
                registry=registry,
            ),
            job_seconds=Histogram(
                "kadapt_recon_job_seconds",
                "Wall time of a recon job from claim to stored result",
                buckets=JOB_BUCKETS,
                registry=registry,
            ),
            queue_wait_seconds=Histogram(
                "kadapt_recon_queue_wait_seconds",
                "Time from enqueue to a job's first delivery to a worker (later deliveries not counted)",
                buckets=JOB_BUCKETS,
                registry=registry,
            ),
            redeliveries=Counter(
                "kadapt_recon_redeliveries", "Deliveries of a job after its first", registry=registry
            ),
            fallbacks=Counter(
                "kadapt_recon_fallbacks",
                "Jobs run with the fallback method instead of the requested one",
                registry=registry,
            ),
        )


def _key_part(text: str) -> str:
    """``text`` made safe as one blob-key segment (job and scan ids are arbitrary strings)."""
    return _UNSAFE_KEY_CHARACTERS.sub("_", text).lstrip(".") or "_"


class ReconWorker:
    """One consumer of the recon queue. Several may run in one process (each its own ``consumer``)."""

    def __init__(
        self,
        queue: JobQueue,
        blobs: BlobStore,
        consumer: str,
        *,
        methods: MethodRegistry | None = None,
        metrics: ReconMetrics | None = None,
        block_ms: int = 1000,
        batch_size: int = 1,
        backoff_s: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.queue = queue
        self.blobs = blobs
        self.consumer = consumer
        self.methods = methods if methods is not None else default_registry()
        self.metrics = metrics if metrics is not None else ReconMetrics.create(CollectorRegistry())
        self.block_ms = block_ms
        self.batch_size = batch_size
        self.backoff_s = backoff_s
        self.started = False

    async def run(self, stop_event: asyncio.Event) -> None:
        """Claim and process jobs until ``stop_event`` is set; a queue outage is waited out with backoff."""
        self.started = True
        delay = self.backoff_s[0]
        while not stop_event.is_set():
            try:
                deliveries = await self.queue.claim(self.consumer, self.batch_size, self.block_ms)
            except ServiceUnavailableError as err:
                logger.warning(
                    "recon worker %s: queue unavailable (%s); retrying in %.1f s", self.consumer, err, delay
                )
                await self._sleep(stop_event, delay)
                delay = min(delay * 2, self.backoff_s[1])
                continue
            delay = self.backoff_s[0]
            for delivery in deliveries:
                await self.process(delivery)

    @staticmethod
    async def _sleep(stop_event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop_event.wait(), timeout=seconds)

    async def process(self, delivery: Delivery) -> ReconResult | None:
        """Handle one delivery; returns the stored result, or None if it was left pending for a retry."""
        job = delivery.job
        started = time.perf_counter()
        if delivery.deliveries > 1:
            self.metrics.redeliveries.inc()
        else:
            enqueued_ms = enqueued_unix_ms(delivery.message_id)
            if enqueued_ms is not None:
                # The id's clock is the queue's (Redis server); a small skew can make this negative.
                self.metrics.queue_wait_seconds.observe(max(0.0, time.time() - enqueued_ms / 1000.0))
        try:
            existing = await self.queue.get_result(job.job_id)
            if existing is not None:
                await self.queue.ack(delivery)
                self.metrics.jobs.labels(status="duplicate").inc()
                logger.info(
                    "recon job %s already has a result (%s); acked", job.job_id, existing.status.value
                )
                return existing
            self.methods.validate(job.method)
            choice, images_path, images_sha256 = await asyncio.to_thread(self._reconstruct_blobs, job)
        except NON_RETRIABLE_ERRORS as err:
            logger.warning("recon job %s failed for good: %s", job.job_id, err)
            failed = self._result(
                job, delivery, started, status=ReconStatus.failed, error=f"{err.slug}: {err}"
            )
            return await self._finish(delivery, failed, started)
        except Exception:
            # Unexpected (a bug, memory, a queue outage): leave it pending; the queue redelivers it after
            # claim_idle_ms and dead-letters it after max_deliveries.
            logger.exception(
                "recon job %s (delivery %d) hit an unexpected error", job.job_id, delivery.deliveries
            )
            self.metrics.jobs.labels(status="retry").inc()
            return None
        if choice.fallback_reason is not None:
            self.metrics.fallbacks.inc()
        done = self._result(
            job,
            delivery,
            started,
            status=ReconStatus.done,
            method_used=choice.method.name,
            fallback_reason=choice.fallback_reason,
            images_path=images_path,
            images_sha256=images_sha256,
        )
        return await self._finish(delivery, done, started)

    def _reconstruct_blobs(self, job: ReconJob) -> tuple[MethodChoice, str, str]:
        """Blocking part of a job (runs in a thread): load, choose on the scan's shape, reconstruct,
        write the images blob."""
        kspace = self.blobs.get_array(job.kspace_path, job.kspace_sha256)
        mask = self.blobs.get_array(job.mask_path, job.mask_sha256)
        checked_kspace, checked_mask = check_recon_inputs(kspace, mask, job.num_acs)
        choice = self.methods.choose(job.method, scan_shape(checked_kspace, checked_mask))
        images = choice.method.run(checked_kspace, checked_mask, job.num_acs)
        # A unique name per run: two workers racing on one job (a slow one taken over) never clobber
        # each other's file; the loser deletes its own after the write-once result says it lost.
        key = f"recon/{_key_part(job.scan_id)}/{_key_part(job.job_id)}/images-{uuid.uuid4().hex[:12]}"
        return (choice, *self.blobs.put_array(key, images))

    def _result(
        self, job: ReconJob, delivery: Delivery, started: float, *, status: ReconStatus, **fields: object
    ) -> ReconResult:
        return ReconResult.model_validate(
            {
                "job_id": job.job_id,
                "scan_id": job.scan_id,
                "status": status,
                "method_requested": job.method,
                "elapsed_ms": (time.perf_counter() - started) * 1000.0,
                "deliveries": delivery.deliveries,
                **fields,
            }
        )

    async def _finish(self, delivery: Delivery, result: ReconResult, started: float) -> ReconResult | None:
        """Store ``result`` (write-once), then ack; the stored result is returned."""
        try:
            stored = await self.queue.put_result(result)
            if not stored:
                # Another delivery of this job finished first: its result stands, ours is dropped.
                if result.images_path is not None:
                    self.blobs.delete(result.images_path)
                winner = await self.queue.get_result(result.job_id)
                result = winner if winner is not None else result
            await self.queue.ack(delivery)
        except Exception:
            logger.exception("recon job %s: storing the result or acking failed; left pending", result.job_id)
            self.metrics.jobs.labels(status="retry").inc()
            return None
        self.metrics.jobs.labels(status=result.status.value if stored else "duplicate").inc()
        self.metrics.job_seconds.observe(time.perf_counter() - started)
        return result
