"""What the recon service reports beyond per-job counters: queue depth and age, model load state, the
ONNX Runtime provider in use, and the blob volume's health.

The queue gauges are read from the queue itself (:meth:`kadapt.jobs.JobQueue.stats`) when ``/metrics``
is scraped, so every scrape is current; an autoscaler (the recon HPA, ``docs/operations.md``) scales on
``kadapt_recon_queue_depth``. The queue is shared, so every replica reports the same value: aggregate
with ``max``, never ``sum``. A queue outage during a scrape keeps the last values and counts
``kadapt_recon_queue_stats_errors_total``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from kadapt.errors import ServiceUnavailableError
from kadapt.jobs.queue import JobQueue
from kadapt.recon.domain.learned import BundleStatus

logger = logging.getLogger(__name__)


def split_ref(ref: str) -> tuple[str, str]:
    """``name/version`` -> ``(name, version)``; a ref without a version gets ``""``."""
    name, _, version = ref.partition("/")
    return name, version


class ReconGauges:
    """Queue, model and blob-volume gauges of one recon app, on its own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "kadapt_recon_queue_depth",
            "Recon jobs not yet acked: waiting for a first delivery plus pending",
            registry=registry,
        )
        self.queue_pending = Gauge(
            "kadapt_recon_queue_pending",
            "Recon jobs delivered to a worker and not yet acked",
            registry=registry,
        )
        self.oldest_job_age = Gauge(
            "kadapt_recon_oldest_job_age_seconds",
            "Age of the oldest recon job not yet acked, from its enqueue time (0 when the queue is empty)",
            registry=registry,
        )
        self.dead_letters = Gauge(
            "kadapt_recon_dead_letters", "Recon jobs dead-lettered so far", registry=registry
        )
        self.queue_stats_errors = Counter(
            "kadapt_recon_queue_stats_errors",
            "Scrapes whose queue statistics could not be read (the gauges keep their last values)",
            registry=registry,
        )
        self.model_loaded = Gauge(
            "kadapt_recon_model_loaded",
            "1 for a learned bundle loaded, verified and warm; 0 for one that was refused",
            ["model", "version"],
            registry=registry,
        )
        self.onnx_provider = Gauge(
            "kadapt_recon_onnx_provider",
            "1 for the ONNX Runtime execution provider a loaded bundle runs on (get_providers()[0])",
            ["model", "version", "provider"],
            registry=registry,
        )
        self.blob_free_bytes = Gauge(
            "kadapt_recon_blob_free_bytes", "Free bytes on the blob volume", registry=registry
        )

    async def refresh_queue(self, queue: JobQueue) -> None:
        """Set the queue gauges from ``queue.stats()``; an unavailable queue is logged and counted."""
        try:
            stats = await queue.stats()
        except ServiceUnavailableError as err:
            logger.warning("recon queue statistics unavailable: %s", err)
            self.queue_stats_errors.inc()
            return
        self.queue_depth.set(stats.depth)
        self.queue_pending.set(stats.pending)
        self.oldest_job_age.set(stats.oldest_age_s)
        self.dead_letters.set(stats.dead_letters)

    def record_models(self, statuses: Iterable[BundleStatus]) -> None:
        """Load state and provider of every bundle the process tried (called once, after loading)."""
        for status in statuses:
            model, version = split_ref(status.ref)
            self.model_loaded.labels(model=model, version=version).set(
                1.0 if status.state == "loaded" else 0.0
            )
            if status.state == "loaded" and status.providers:
                self.onnx_provider.labels(model=model, version=version, provider=status.providers[0]).set(1.0)

    def refresh_blob_volume(self, root: Path) -> None:
        """Free space on the blob volume (the volume may not exist yet: then nothing is set)."""
        try:
            self.blob_free_bytes.set(shutil.disk_usage(root).free)
        except OSError as err:
            logger.warning("blob volume %s: %s", root, err)


def blob_volume_problem(root: Path) -> str | None:
    """Why the blob volume cannot take results (missing, read-only, full), or None: creates the root if
    needed, then writes, flushes and removes a small probe file. Blocking; run it in a thread."""
    probe = root / f".kadapt-probe-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
    except OSError as err:
        return f"the blob volume {str(root)!r} is not writable: {err.strerror or err}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return None
