"""The recon job queue on Redis Streams (a consumer group), Redis 6.2 commands only.

- ``enqueue``: ``XADD stream * job <ReconJob JSON>`` -- never with MAXLEN: trimming drops unacked
  entries on Redis < 8.2 (handbook, peers.md "Job queues").
- ``claim``: ``XAUTOCLAIM`` first, taking over entries pending for longer than ``claim_idle_ms`` (a dead
  or hung worker's jobs) so they are not starved by new work, then ``XREADGROUP >`` for new entries
  (blocking ``block_ms`` only when nothing was reclaimed). A reclaimed entry's delivery count comes from
  the extended ``XPENDING`` form for its id; past ``max_deliveries`` it is dead-lettered instead.
- ``dead_letter``: in one ``MULTI``: ``SET result NX`` (a failed result), ``XADD`` to the dead-letter
  stream, ``XACK``.
- results: ``SET <result_prefix><job_id> <ReconResult JSON> NX`` -- write-once, so workers are idempotent;
  a worker acks only after its result is stored (at-least-once).

Redis errors surface as :class:`kadapt.errors.ServiceUnavailableError` naming the command.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pydantic
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kadapt.errors import ServiceUnavailableError
from kadapt.jobs.queue import (
    Delivery,
    QueueStats,
    check_claim_arguments,
    dead_letter_result,
    enqueued_unix_ms,
)
from kadapt.schemas.jobs import ReconJob, ReconResult

DEFAULT_STREAM = "kadapt:recon:jobs"
DEFAULT_GROUP = "kadapt-recon"
DEFAULT_DEAD_STREAM = "kadapt:recon:dead"
DEFAULT_RESULT_PREFIX = "kadapt:recon:result:"


def _text(value: Any) -> str:
    """Redis replies are bytes unless the client decodes them; accept both."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _field(fields: Mapping[Any, Any], name: str) -> str | None:
    value = fields.get(name, fields.get(name.encode()))
    return None if value is None else _text(value)


def connect_redis(url: str) -> Redis:
    """An asyncio Redis client for ``url`` (``redis://host:port/db``) that survives a server restart.

    Commands are retried 3 times (50 ms .. 0.5 s backoff) on a broken connection, so a restarted
    server costs a reconnect rather than an error. Every kadapt service builds its client here.
    """
    client: Redis = Redis.from_url(
        url,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return client


class RedisJobQueue:
    """:class:`kadapt.jobs.queue.JobQueue` on a Redis stream + consumer group. ``close()`` closes the
    client, which the queue then owns."""

    def __init__(
        self,
        client: Redis,
        *,
        stream: str = DEFAULT_STREAM,
        group: str = DEFAULT_GROUP,
        dead_stream: str = DEFAULT_DEAD_STREAM,
        result_prefix: str = DEFAULT_RESULT_PREFIX,
        max_deliveries: int = 3,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.dead_stream = dead_stream
        self.result_prefix = result_prefix
        self.max_deliveries = max_deliveries
        self.claim_idle_ms = claim_idle_ms
        self._group_ready = False
        self._autoclaim_cursor = "0-0"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisJobQueue:
        """A queue on a new client for ``url`` (see :func:`connect_redis`); ``options`` go to the queue.

        A retried XADD may duplicate a job; workers are idempotent (write-once results), so that is harmless.
        """
        return cls(connect_redis(url), **options)

    @contextlib.asynccontextmanager
    async def _redis(self, command: str) -> AsyncIterator[None]:
        try:
            yield
        except RedisError as err:
            if isinstance(err, ResponseError) and "NOGROUP" in str(err):
                # The stream or group vanished (FLUSHALL, a fresh server): recreate on the next call.
                self._group_ready = False
            raise ServiceUnavailableError(f"redis {command} on {self.stream!r} failed: {err}") from err

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        async with self._redis("XGROUP CREATE"):
            try:
                # id 0: jobs added before the group existed are delivered too.
                await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
        self._group_ready = True

    def result_key(self, job_id: str) -> str:
        return f"{self.result_prefix}{job_id}"

    async def enqueue(self, job: ReconJob) -> None:
        await self._ensure_group()
        async with self._redis("XADD"):
            await self.client.xadd(self.stream, {"job_id": job.job_id, "job": job.model_dump_json()})

    async def claim(self, consumer: str, count: int, block_ms: int) -> list[Delivery]:
        check_claim_arguments(count, block_ms)
        await self._ensure_group()
        deliveries = await self._reclaim(consumer, count)
        remaining = count - len(deliveries)
        if remaining <= 0:
            return deliveries
        # BLOCK 0 means "forever" to Redis; here 0 means "do not wait".
        block = block_ms if block_ms > 0 and not deliveries else None
        async with self._redis("XREADGROUP"):
            response = await self.client.xreadgroup(
                self.group, consumer, {self.stream: ">"}, count=remaining, block=block
            )
        for message_id, fields in self._stream_entries(response):
            delivery = await self._to_delivery(_text(message_id), fields, 1)
            if delivery is not None:
                deliveries.append(delivery)
        return deliveries

    @staticmethod
    def _stream_entries(response: Any) -> list[tuple[Any, Any]]:
        if not response:
            return []
        # redis-py parses RESP2 as [[stream, [(id, fields)]]] and RESP3 as {stream: [[(id, fields)]]}.
        if isinstance(response, dict):
            batches = [batch for stream_batches in response.values() for batch in stream_batches]
        else:
            batches = [stream_entries for _stream, stream_entries in response]
        return [(entry[0], entry[1]) for batch in batches for entry in batch]

    async def _reclaim(self, consumer: str, count: int) -> list[Delivery]:
        async with self._redis("XAUTOCLAIM"):
            response = await self.client.xautoclaim(
                self.stream,
                self.group,
                consumer,
                self.claim_idle_ms,
                start_id=self._autoclaim_cursor,
                count=count,
            )
        # Redis 6.2 answers [cursor, entries]; 7.0 adds the ids of entries deleted from the stream.
        self._autoclaim_cursor = _text(response[0])
        deliveries: list[Delivery] = []
        for message_id, fields in response[1]:
            if message_id is None or fields is None:
                continue  # Redis 6.2: the entry was deleted from the stream; nothing to run.
            message = _text(message_id)
            count_delivered = await self._delivery_count(message)
            if count_delivered is None:
                continue  # acked by its previous owner between XAUTOCLAIM and XPENDING
            delivery = await self._to_delivery(message, fields, count_delivered)
            if delivery is None:
                continue
            if count_delivered > self.max_deliveries:
                await self.dead_letter(delivery, f"delivered more than {self.max_deliveries} times")
                continue
            deliveries.append(delivery)
        return deliveries

    async def _delivery_count(self, message_id: str) -> int | None:
        async with self._redis("XPENDING"):
            rows = await self.client.xpending_range(self.stream, self.group, message_id, message_id, 1)
        if not rows:
            return None
        return int(rows[0]["times_delivered"])

    async def _to_delivery(
        self, message_id: str, fields: Mapping[Any, Any], deliveries: int
    ) -> Delivery | None:
        raw_job = _field(fields, "job")
        try:
            job = ReconJob.model_validate_json(raw_job if raw_job is not None else "")
        except pydantic.ValidationError as err:
            await self._dead_letter_unparseable(message_id, raw_job, deliveries, f"invalid job JSON: {err}")
            return None
        return Delivery(message_id=message_id, job=job, deliveries=deliveries)

    async def _dead_letter_unparseable(
        self, message_id: str, raw_job: str | None, deliveries: int, reason: str
    ) -> None:
        async with self._redis("MULTI XADD XACK"):
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(
                self.dead_stream,
                {"message_id": message_id, "job": raw_job or "", "deliveries": deliveries, "reason": reason},
            )
            pipe.xack(self.stream, self.group, message_id)
            await pipe.execute()

    async def ack(self, delivery: Delivery) -> None:
        async with self._redis("XACK"):
            await self.client.xack(self.stream, self.group, delivery.message_id)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        result = dead_letter_result(delivery.job, delivery.deliveries, reason)
        async with self._redis("MULTI SET XADD XACK"):
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.result_key(delivery.job.job_id), result.model_dump_json(), nx=True)
            pipe.xadd(
                self.dead_stream,
                {
                    "message_id": delivery.message_id,
                    "job": delivery.job.model_dump_json(),
                    "deliveries": delivery.deliveries,
                    "reason": reason,
                },
            )
            pipe.xack(self.stream, self.group, delivery.message_id)
            await pipe.execute()

    async def put_result(self, result: ReconResult) -> bool:
        async with self._redis("SET NX"):
            stored = await self.client.set(self.result_key(result.job_id), result.model_dump_json(), nx=True)
        return bool(stored)

    async def get_result(self, job_id: str) -> ReconResult | None:
        async with self._redis("GET"):
            raw = await self.client.get(self.result_key(job_id))
        if raw is None:
            return None
        return ReconResult.model_validate_json(raw)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.client.aclose()

    async def pending_count(self) -> int:
        """Entries delivered and not yet acked (``XPENDING`` summary)."""
        await self._ensure_group()
        async with self._redis("XPENDING"):
            summary = await self.client.xpending(self.stream, self.group)
        return int(summary["pending"])

    async def dead_letter_count(self) -> int:
        """Entries in the dead-letter stream (``XLEN``)."""
        async with self._redis("XLEN"):
            return int(await self.client.xlen(self.dead_stream))

    async def stats(self) -> QueueStats:
        """One pipeline of ``XINFO GROUPS`` (pending, last-delivered-id and, from Redis 7.0, ``lag``: the
        entries not yet delivered), ``XPENDING`` (oldest pending id), ``XLEN`` of the dead letters and
        ``TIME`` (ages on the server's clock, the clock stream ids come from); then ``XRANGE`` for the
        first undelivered entry. ``XLEN`` of the stream would be wrong: acked entries stay in it. Where
        ``lag`` is missing (Redis 6.2, or unknown after a deletion) the undelivered entries are counted
        with ``XRANGE`` after the last delivered id."""
        await self._ensure_group()
        async with self._redis("XINFO GROUPS XPENDING XLEN TIME"):
            pipe = self.client.pipeline(transaction=False)
            pipe.xinfo_groups(self.stream)
            pipe.xpending(self.stream, self.group)
            pipe.xlen(self.dead_stream)
            pipe.time()
            groups, summary, dead_letters, server_time = await pipe.execute()
        group = next((row for row in groups if _text(row["name"]) == self.group), None)
        if group is None:
            self._group_ready = False
            raise ServiceUnavailableError(f"redis consumer group {self.group!r} on {self.stream!r} is gone")
        last_delivered = _text(group["last-delivered-id"])
        async with self._redis("XRANGE"):
            first_new = await self.client.xrange(self.stream, min=f"({last_delivered}", count=1)
        lag = group.get("lag")
        undelivered = int(lag) if lag is not None else await self._count_after(last_delivered)
        pending = int(summary["pending"])
        oldest_ids = [_text(first_new[0][0])] if first_new else []
        if pending and summary.get("min") is not None:
            oldest_ids.append(_text(summary["min"]))
        enqueued = [ms for ms in map(enqueued_unix_ms, oldest_ids) if ms is not None]
        now_ms = int(server_time[0]) * 1000.0 + int(server_time[1]) / 1000.0
        return QueueStats(
            depth=undelivered + pending,
            pending=pending,
            dead_letters=int(dead_letters),
            oldest_age_s=max(0.0, (now_ms - min(enqueued)) / 1000.0) if enqueued else 0.0,
        )

    async def _count_after(self, message_id: str, page: int = 1000) -> int:
        """Entries after ``message_id`` (exclusive), counted page by page with ``XRANGE``."""
        count, cursor = 0, message_id
        while True:
            async with self._redis("XRANGE"):
                entries = await self.client.xrange(self.stream, min=f"({cursor}", count=page) or []
            count += len(entries)
            if len(entries) < page:
                return count
            cursor = _text(entries[-1][0])

    async def read_dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The first ``count`` dead-letter entries as ``{message_id, job, deliveries, reason}``."""
        async with self._redis("XRANGE"):
            entries = await self.client.xrange(self.dead_stream, count=count)
        return [
            {_text(key): _text(value) for key, value in fields.items()}
            for _id, fields in entries or []
            if fields is not None
        ]
