"""Where sessions live: the :class:`SessionStore` protocol, in memory or in Redis.

A session is one JSON document (:class:`~kadapt.gateway.domain.session.ScanSession`) plus two sets of
integer line keys: ``lines`` (stored, acquired lines) and ``staged`` (retrospective lines held until the
plan is known). Duplicate detection must be atomic across gateway replicas, so a request's lines are
claimed in one step (:meth:`SessionStore.claim_lines`: all or nothing), and metadata changes go through
:meth:`SessionStore.update` (an optimistic compare-and-set in Redis, so two replicas never lose a
transition). The scanner's path counts Redis round trips: :meth:`SessionStore.claim_and_count` claims a
request's lines and counts the ACS block in one, and ``update(..., read=session)`` tries its
compare-and-set against a session the caller already holds before reading again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np
import redis.asyncio as aioredis
from numpy.typing import NDArray
from redis.exceptions import RedisError

from kadapt.errors import InvalidStateError, ServiceUnavailableError, UnknownScanError
from kadapt.gateway.domain.session import ScanSession
from kadapt.jobs.redis_queue import connect_redis

T = TypeVar("T")

Mutation = Callable[[ScanSession], T]


class SessionStore(Protocol):
    async def create(self, session: ScanSession) -> None:
        """Store a new session (its id must be new)."""

    async def get(self, scan_id: str) -> ScanSession:
        """The session, or :class:`UnknownScanError`."""

    async def update(
        self, scan_id: str, mutate: Mutation[T], *, read: ScanSession | None = None
    ) -> tuple[ScanSession, T]:
        """Apply ``mutate`` to the stored session atomically and save it; nothing is saved if it raises.
        ``read``: the session as the caller last had it (a hint, never trusted: if the stored document
        differs, or ``mutate`` changes nothing, the stored one is read and mutated instead)."""

    async def claim_lines(self, scan_id: str, acquire: Sequence[int], stage: Sequence[int]) -> list[int]:
        """Add ``acquire`` to the line set and ``stage`` to the staged set unless any key is already in
        either set; returns the keys already present (then nothing was added)."""

    async def claim_and_count(
        self, scan_id: str, acquire: Sequence[int], stage: Sequence[int], count: Sequence[int]
    ) -> tuple[list[int], int]:
        """:meth:`claim_lines`, then how many of ``count`` are in the line set, in one atomic step
        (the count is 0 when the claim found duplicates)."""

    async def release_lines(self, scan_id: str, keys: Sequence[int]) -> None:
        """Remove ``keys`` from both sets (undo a claim whose samples could not be stored)."""

    async def promote_staged(
        self, scan_id: str, keep: Sequence[int], *, drop_rest: bool
    ) -> tuple[list[int], list[int]]:
        """Staged keys in ``keep`` join the line set; with ``drop_rest`` the other staged keys are dropped
        (else they stay staged for a later round). Returns ``(moved, dropped)``, sorted."""

    async def count_present(self, scan_id: str, keys: Sequence[int]) -> int:
        """How many of ``keys`` are in the line set."""

    async def line_keys(self, scan_id: str) -> NDArray[np.int64]:
        """The line set as sorted keys ``(n,)``."""

    async def count_lines(self, scan_id: str) -> int:
        """Size of the line set."""

    async def delete(self, scan_id: str) -> None:
        """Forget the session and its sets (no error when unknown)."""

    async def ping(self) -> bool:
        """True when the store answers."""

    async def close(self) -> None:
        """Release connections."""


class MemorySessionStore:
    """Sessions in this process (the embedded default). Every method runs without awaiting anything
    in between, so each is atomic on the event loop; documents are kept as JSON like in Redis so that a
    failed mutation leaves no trace and callers never alias the stored object."""

    def __init__(self) -> None:
        self._documents: dict[str, str] = {}
        self._lines: dict[str, set[int]] = {}
        self._staged: dict[str, set[int]] = {}

    def _document(self, scan_id: str) -> str:
        document = self._documents.get(scan_id)
        if document is None:
            raise UnknownScanError(f"no scan with id {scan_id!r}", scan_id=scan_id)
        return document

    async def create(self, session: ScanSession) -> None:
        if session.scan_id in self._documents:
            raise InvalidStateError(f"scan {session.scan_id} already exists")
        self._documents[session.scan_id] = session.model_dump_json()
        self._lines[session.scan_id] = set()
        self._staged[session.scan_id] = set()

    async def get(self, scan_id: str) -> ScanSession:
        return ScanSession.model_validate_json(self._document(scan_id))

    async def update(
        self, scan_id: str, mutate: Mutation[T], *, read: ScanSession | None = None
    ) -> tuple[ScanSession, T]:
        session = ScanSession.model_validate_json(self._document(scan_id))  # atomic: ``read`` not needed
        result = mutate(session)
        self._documents[scan_id] = session.model_dump_json()
        return session, result

    async def claim_lines(self, scan_id: str, acquire: Sequence[int], stage: Sequence[int]) -> list[int]:
        return (await self.claim_and_count(scan_id, acquire, stage, ()))[0]

    async def claim_and_count(
        self, scan_id: str, acquire: Sequence[int], stage: Sequence[int], count: Sequence[int]
    ) -> tuple[list[int], int]:
        self._document(scan_id)
        lines, staged = self._lines[scan_id], self._staged[scan_id]
        present = [key for key in (*acquire, *stage) if key in lines or key in staged]
        if present:
            return present, 0
        lines.update(acquire)
        staged.update(stage)
        return [], sum(1 for key in count if key in lines)

    async def release_lines(self, scan_id: str, keys: Sequence[int]) -> None:
        self._document(scan_id)
        self._lines[scan_id].difference_update(keys)
        self._staged[scan_id].difference_update(keys)

    async def promote_staged(
        self, scan_id: str, keep: Sequence[int], *, drop_rest: bool
    ) -> tuple[list[int], list[int]]:
        self._document(scan_id)
        staged = self._staged[scan_id]
        moved = sorted(staged & set(keep))
        self._lines[scan_id].update(moved)
        staged.difference_update(moved)
        dropped = sorted(staged) if drop_rest else []
        if drop_rest:
            staged.clear()
        return moved, dropped

    async def count_present(self, scan_id: str, keys: Sequence[int]) -> int:
        self._document(scan_id)
        lines = self._lines[scan_id]
        return sum(1 for key in keys if key in lines)

    async def line_keys(self, scan_id: str) -> NDArray[np.int64]:
        self._document(scan_id)
        return np.array(sorted(self._lines[scan_id]), dtype=np.int64)

    async def count_lines(self, scan_id: str) -> int:
        self._document(scan_id)
        return len(self._lines[scan_id])

    async def delete(self, scan_id: str) -> None:
        self._documents.pop(scan_id, None)
        self._lines.pop(scan_id, None)
        self._staged.pop(scan_id, None)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


# Claim a request's lines atomically: fail (returning the duplicates) if any key is in either set,
# else add them, then count how many of the keys to count are in the line set. KEYS: lines, staged, the
# session document (the scan must exist: -1 if not). ARGV: the number of keys to acquire, the number to
# claim (acquire + stage), the keys to acquire, to stage, to count. Returns {duplicates, count}.
# unpack() is chunked because Lua limits the number of call arguments.
_CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
local lines, staged = KEYS[1], KEYS[2]
local n_acquire = tonumber(ARGV[1])
local n_claim = tonumber(ARGV[2])
local claim_end = n_claim + 2
local present = {}
for i = 3, claim_end, 4000 do
  local last = math.min(i + 3999, claim_end)
  local chunk = {unpack(ARGV, i, last)}
  local in_lines = redis.call('SMISMEMBER', lines, unpack(chunk))
  local in_staged = redis.call('SMISMEMBER', staged, unpack(chunk))
  for j = 1, #chunk do
    if in_lines[j] == 1 or in_staged[j] == 1 then table.insert(present, chunk[j]) end
  end
end
if #present > 0 then return {present, 0} end
for i = 3, claim_end, 4000 do
  local last = math.min(i + 3999, claim_end)
  local first_stage = n_acquire + 3
  if last < first_stage then
    redis.call('SADD', lines, unpack(ARGV, i, last))
  elseif i >= first_stage then
    redis.call('SADD', staged, unpack(ARGV, i, last))
  else
    redis.call('SADD', lines, unpack(ARGV, i, first_stage - 1))
    redis.call('SADD', staged, unpack(ARGV, first_stage, last))
  end
end
local total = 0
for i = claim_end + 1, #ARGV, 4000 do
  local found = redis.call('SMISMEMBER', lines, unpack(ARGV, i, math.min(i + 3999, #ARGV)))
  for j = 1, #found do total = total + found[j] end
end
return {present, total}
"""

# Move the staged members listed in ARGV[2..] into the line set; if ARGV[1] == '1' drop the other
# staged members. Returns {moved, dropped}.
_PROMOTE_SCRIPT = """
local lines, staged, scratch = KEYS[1], KEYS[2], KEYS[3]
redis.call('DEL', scratch)
for i = 2, #ARGV, 4000 do
  redis.call('SADD', scratch, unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
local moved = redis.call('SINTER', staged, scratch)
for i = 1, #moved, 4000 do
  local last = math.min(i + 3999, #moved)
  redis.call('SADD', lines, unpack(moved, i, last))
  redis.call('SREM', staged, unpack(moved, i, last))
end
local dropped = {}
if ARGV[1] == '1' then
  dropped = redis.call('SMEMBERS', staged)
  redis.call('DEL', staged)
end
redis.call('DEL', scratch)
return {moved, dropped}
"""

_COUNT_SCRIPT = """
local total = 0
for i = 1, #ARGV, 4000 do
  local found = redis.call('SMISMEMBER', KEYS[1], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
  for j = 1, #found do total = total + found[j] end
end
return total
"""

# Compare-and-set of a session document: ARGV[1] the JSON the update read, ARGV[2] the new JSON. Returns 1
# (written), 0 (the document changed since it was read: read again) or -1 (the scan is gone).
_CAS_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

_MAX_UPDATE_RETRIES = 64


class RedisSessionStore:
    """Sessions in Redis (a deployment; gateway replicas share it). Needs Redis >= 6.2 (SMISMEMBER).

    Keys: ``<prefix>scan:<id>`` (JSON), ``<prefix>scan:<id>:lines`` and ``:staged`` (sets of decimal line
    keys). Blobs and k-space never go into Redis (architecture.md section 9).
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "kadapt:gateway:") -> None:
        self._redis = client
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM_SCRIPT)
        self._promote = client.register_script(_PROMOTE_SCRIPT)
        self._count = client.register_script(_COUNT_SCRIPT)
        self._cas = client.register_script(_CAS_SCRIPT)

    @classmethod
    def from_url(cls, url: str, **kwargs: str) -> RedisSessionStore:
        return cls(connect_redis(url), **kwargs)

    def _key(self, scan_id: str, suffix: str = "") -> str:
        return f"{self._prefix}scan:{scan_id}{suffix}"

    async def create(self, session: ScanSession) -> None:
        created = await self._redis.set(self._key(session.scan_id), session.model_dump_json(), nx=True)
        if not created:
            raise InvalidStateError(f"scan {session.scan_id} already exists")

    async def get(self, scan_id: str) -> ScanSession:
        raw = await self._redis.get(self._key(scan_id))
        if raw is None:
            raise UnknownScanError(f"no scan with id {scan_id!r}", scan_id=scan_id)
        return ScanSession.model_validate_json(raw)

    async def update(
        self, scan_id: str, mutate: Mutation[T], *, read: ScanSession | None = None
    ) -> tuple[ScanSession, T]:
        """Optimistic: read, mutate, then compare-and-set in one script (two round trips; the WATCH /
        MULTI / EXEC it replaces took three and pinned a connection). A mutation that changes nothing
        writes nothing: its outcome holds as of the read. A conflicting write meanwhile means read again.
        With ``read`` (the session the caller holds) the first compare-and-set is against its document,
        one round trip when nobody wrote since; a mutation of it that changes nothing proves nothing
        about the stored document, so that case reads too."""
        key = self._key(scan_id)
        hint = read.model_dump_json() if read is not None else None
        for _ in range(_MAX_UPDATE_RETRIES):
            from_hint = hint is not None
            if hint is not None:
                raw, hint = hint, None
            else:
                stored = await self._redis.get(key)
                if stored is None:
                    raise UnknownScanError(f"no scan with id {scan_id!r}", scan_id=scan_id)
                raw = stored.decode() if isinstance(stored, bytes) else str(stored)
            session = ScanSession.model_validate_json(raw)
            result = mutate(session)
            document = session.model_dump_json()
            if document == raw:
                if from_hint:
                    continue  # unchanged: its outcome must hold for the stored document, read it
                return session, result
            written = await self._cas(keys=[key], args=[raw, document])
            if written == 1:
                return session, result
            if written == -1:
                raise UnknownScanError(f"no scan with id {scan_id!r}", scan_id=scan_id)
        raise ServiceUnavailableError(f"scan {scan_id}: {_MAX_UPDATE_RETRIES} conflicting updates in a row")

    async def _require(self, scan_id: str) -> None:
        if not await self._redis.exists(self._key(scan_id)):
            raise UnknownScanError(f"no scan with id {scan_id!r}", scan_id=scan_id)

    async def claim_lines(self, scan_id: str, acquire: Sequence[int], stage: Sequence[int]) -> list[int]:
        return (await self.claim_and_count(scan_id, acquire, stage, ()))[0]

    async def claim_and_count(
        self, scan_id: str, acquire: Sequence[int], stage: Sequence[int], count: Sequence[int]
    ) -> tuple[list[int], int]:
        keys = [self._key(scan_id, ":lines"), self._key(scan_id, ":staged"), self._key(scan_id)]
        args = [
            len(acquire),
            len(acquire) + len(stage),
            *(int(key) for key in acquire),
            *(int(key) for key in stage),
            *(int(key) for key in count),
        ]
        answer = await self._claim(keys=keys, args=args)
        if answer == -1:
            raise UnknownScanError(f"no scan with id {scan_id!r}", scan_id=scan_id)
        present, total = answer
        return [int(key) for key in present], int(total)

    async def release_lines(self, scan_id: str, keys: Sequence[int]) -> None:
        if keys:
            members = [int(key) for key in keys]
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.srem(self._key(scan_id, ":lines"), *members)
                pipe.srem(self._key(scan_id, ":staged"), *members)
                await pipe.execute()

    async def promote_staged(
        self, scan_id: str, keep: Sequence[int], *, drop_rest: bool
    ) -> tuple[list[int], list[int]]:
        await self._require(scan_id)
        keys = [self._key(scan_id, ":lines"), self._key(scan_id, ":staged"), self._key(scan_id, ":keep")]
        # "-1" is never a line key; it keeps SADD valid when nothing is to be kept.
        args = ["1" if drop_rest else "0", "-1", *(int(key) for key in keep)]
        moved_raw, dropped_raw = await self._promote(keys=keys, args=args)
        return sorted(int(key) for key in moved_raw), sorted(int(key) for key in dropped_raw)

    async def count_present(self, scan_id: str, keys: Sequence[int]) -> int:
        if not keys:
            return 0
        return int(await self._count(keys=[self._key(scan_id, ":lines")], args=[int(key) for key in keys]))

    async def line_keys(self, scan_id: str) -> NDArray[np.int64]:
        await self._require(scan_id)
        members = await self._redis.smembers(self._key(scan_id, ":lines"))
        return np.sort(np.array([int(key) for key in members], dtype=np.int64))

    async def count_lines(self, scan_id: str) -> int:
        return int(await self._redis.scard(self._key(scan_id, ":lines")))

    async def delete(self, scan_id: str) -> None:
        await self._redis.delete(
            self._key(scan_id),
            self._key(scan_id, ":lines"),
            self._key(scan_id, ":staged"),
            self._key(scan_id, ":keep"),
        )

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
