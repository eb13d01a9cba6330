"""Recon jobs between processes: arrays on a shared volume (:class:`BlobStore`) and the job queue
(:class:`JobQueue` protocol; :class:`MemoryJobQueue` embedded, :class:`RedisJobQueue` on Redis Streams)."""

from kadapt.jobs.blobs import BlobStore
from kadapt.jobs.queue import DeadLetter, Delivery, JobQueue, MemoryJobQueue, QueueStats
from kadapt.jobs.redis_queue import RedisJobQueue

__all__ = ["BlobStore", "DeadLetter", "Delivery", "JobQueue", "MemoryJobQueue", "QueueStats", "RedisJobQueue"]
