"""The session state machine and both session stores (memory; Redis against a real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from kadapt.errors import InvalidStateError, UnknownScanError
from kadapt.gateway.domain.session import (
    ALLOWED_TRANSITIONS,
    Encoding,
    ScanSession,
    keys_to_mask,
    line_keys,
    mask_to_keys,
    new_scan_id,
)
from kadapt.gateway.domain.store import MemorySessionStore, RedisSessionStore, SessionStore
from kadapt.schemas import ScanGeometry, ScanPolicy, ScanState

S = ScanState
GEOMETRY = ScanGeometry(slices=2, frames=3, coils=4, height=32, width=32, readout_samples=64)


def make_session() -> ScanSession:
    return ScanSession(
        scan_id=new_scan_id(),
        header_xml="<ismrmrdHeader/>",
        geometry=GEOMETRY,
        policy=ScanPolicy(num_acs=4),
        encoding=Encoding(ky_min=0, ky_max=31, ky_offset=0),
    )


def test_the_happy_path_of_the_state_machine() -> None:
    session = make_session()
    path = [
        S.calibrating,
        S.planning,
        S.acquiring,
        S.planning,
        S.acquiring,
        S.complete,
        S.reconstructing,
        S.done,
    ]
    for state in path:
        session.transition(state)
    assert session.state == S.done


@pytest.mark.parametrize("source", list(S))
def test_every_disallowed_transition_names_both_states(source: ScanState) -> None:
    for target in S:
        session = make_session()
        session.state = source
        if target in ALLOWED_TRANSITIONS[source]:
            session.transition(target)
            assert session.state == target
            continue
        with pytest.raises(InvalidStateError) as caught:
            session.transition(target)
        assert f"{source.value} -> {target.value}" in caught.value.detail
        assert session.state == source


def test_fail_reaches_failed_from_live_states_only() -> None:
    for source in S:
        session = make_session()
        session.state = source
        session.fail("boom")
        expected = source if source in (S.done, S.failed) else S.failed
        assert session.state == expected


def test_line_keys_round_trip_through_masks() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((2, 3, 32)) < 0.3
    keys = mask_to_keys(mask)
    np.testing.assert_array_equal(keys_to_mask(keys, GEOMETRY), mask)
    slices, frames, columns = np.nonzero(mask)
    np.testing.assert_array_equal(np.sort(line_keys(slices, frames, columns, GEOMETRY)), keys)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemorySessionStore()
        return
    server: Any = request.getfixturevalue("redis_server")
    redis_store = RedisSessionStore(aioredis.Redis.from_url(server.url))
    yield redis_store
    await redis_store.close()


async def test_store_create_get_update_delete(store: SessionStore) -> None:
    session = make_session()
    await store.create(session)
    with pytest.raises(InvalidStateError):
        await store.create(session)
    assert await store.get(session.scan_id) == session

    def calibrate(current: ScanSession) -> str:
        current.transition(S.calibrating)
        current.skipped_noise += 2
        return "ok"

    updated, result = await store.update(session.scan_id, calibrate)
    assert result == "ok"
    assert updated.state == S.calibrating
    assert (await store.get(session.scan_id)).skipped_noise == 2

    def bad(current: ScanSession) -> None:
        current.skipped_noise += 100
        current.transition(S.done)

    with pytest.raises(InvalidStateError):
        await store.update(session.scan_id, bad)
    assert (await store.get(session.scan_id)).skipped_noise == 2  # a failed mutation leaves no trace
    assert await store.ping()
    await store.delete(session.scan_id)
    with pytest.raises(UnknownScanError):
        await store.get(session.scan_id)
    with pytest.raises(UnknownScanError):
        await store.claim_lines(session.scan_id, [1], [])


async def test_store_claims_lines_all_or_nothing(store: SessionStore) -> None:
    session = make_session()
    await store.create(session)
    assert await store.claim_lines(session.scan_id, [1, 2, 3], [10, 11]) == []
    assert sorted(await store.claim_lines(session.scan_id, [4, 2], [11, 12])) == [2, 11]
    assert await store.count_lines(session.scan_id) == 3  # 4 was not added: the request was refused
    np.testing.assert_array_equal(await store.line_keys(session.scan_id), [1, 2, 3])
    assert await store.count_present(session.scan_id, [1, 3, 4, 10]) == 2
    moved, dropped = await store.promote_staged(session.scan_id, [11, 99], drop_rest=False)
    assert (moved, dropped) == ([11], [])
    moved, dropped = await store.promote_staged(session.scan_id, [], drop_rest=True)
    assert (moved, dropped) == ([], [10])
    np.testing.assert_array_equal(await store.line_keys(session.scan_id), [1, 2, 3, 11])
    assert await store.claim_lines(session.scan_id, [10], []) == []  # a dropped line may come again


async def test_store_claims_many_lines_at_once(store: SessionStore) -> None:
    session = make_session()
    await store.create(session)
    keys = list(range(0, 20_000, 2))  # more than one Lua unpack() chunk
    assert await store.claim_lines(session.scan_id, keys[:6000], keys[6000:]) == []
    assert await store.count_lines(session.scan_id) == 6000
    moved, dropped = await store.promote_staged(session.scan_id, keys[6000:8000], drop_rest=True)
    assert len(moved) == 2000
    assert len(dropped) == 2000
    assert await store.count_present(session.scan_id, keys) == 8000
    assert await store.claim_lines(session.scan_id, [19_998, 1], []) == []
    assert await store.claim_lines(session.scan_id, [3, 4], []) == [4]


async def test_concurrent_updates_lose_nothing(store: SessionStore) -> None:
    session = make_session()
    await store.create(session)

    def bump(current: ScanSession) -> None:
        current.noise_readouts += 1

    await asyncio.gather(*(store.update(session.scan_id, bump) for _ in range(50)))
    assert (await store.get(session.scan_id)).noise_readouts == 50


async def test_concurrent_claims_of_one_line_admit_exactly_one(store: SessionStore) -> None:
    session = make_session()
    await store.create(session)
    results = await asyncio.gather(*(store.claim_lines(session.scan_id, [7], []) for _ in range(20)))
    assert sum(1 for duplicates in results if not duplicates) == 1


async def test_a_write_between_read_and_set_makes_the_update_read_again(redis_server: Any) -> None:
    """Another replica's write after this update read the session: the compare-and-set refuses, the
    mutation runs again on the new document, and both changes survive."""
    client = aioredis.Redis.from_url(redis_server.url)
    store = RedisSessionStore(client)
    other = RedisSessionStore(aioredis.Redis.from_url(redis_server.url))
    session = make_session()
    await store.create(session)
    calls = 0

    async def meanwhile() -> None:
        def noise(current: ScanSession) -> None:
            current.noise_readouts += 5

        await other.update(session.scan_id, noise)

    def skip(current: ScanSession) -> int:
        nonlocal calls
        calls += 1
        current.skipped_noise += 1
        return calls

    # Interleave: read here, let the other replica write, then compare-and-set.
    original_cas = store._cas

    async def cas_after_the_other_write(*args: Any, **kwargs: Any) -> Any:
        if calls == 1:
            await meanwhile()
        return await original_cas(*args, **kwargs)

    store._cas = cas_after_the_other_write  # type: ignore[method-assign]
    updated, result = await store.update(session.scan_id, skip)
    assert result == 2  # the first attempt lost the compare-and-set
    stored = await other.get(session.scan_id)
    assert (stored.noise_readouts, stored.skipped_noise) == (5, 1)
    assert updated == stored
    await store.close()
    await other.close()


async def test_claim_and_count_counts_after_the_claim(store: SessionStore) -> None:
    """The ACS count the scanner's path needs comes with the claim: lines claimed by this very request
    count, a refused request adds and counts nothing, an unknown scan is refused."""
    session = make_session()
    await store.create(session)
    acs = [14, 15, 16, 17]
    assert await store.claim_and_count(session.scan_id, [14, 15], [30], acs) == ([], 2)
    assert await store.claim_and_count(session.scan_id, [16, 17], [], acs) == ([], 4)
    assert await store.claim_and_count(session.scan_id, [15, 18], [], acs) == ([15], 0)
    assert await store.count_present(session.scan_id, [18]) == 0  # the refused request added nothing
    assert await store.claim_and_count(session.scan_id, [], [], acs) == ([], 4)
    with pytest.raises(UnknownScanError):
        await store.claim_and_count("0" * 32, [1], [], acs)


async def test_update_from_a_stale_read_applies_to_the_stored_session(store: SessionStore) -> None:
    """``read`` is only a hint: a session changed since (another request, another replica) is read
    again, the mutation runs on it, and both changes survive."""
    session = make_session()
    await store.create(session)

    def noise(current: ScanSession) -> None:
        current.noise_readouts += 5

    await store.update(session.scan_id, noise)  # ``session`` is stale from here

    def skip(current: ScanSession) -> None:
        current.skipped_noise += 1

    updated, _ = await store.update(session.scan_id, skip, read=session)
    stored = await store.get(session.scan_id)
    assert (stored.noise_readouts, stored.skipped_noise) == (5, 1)
    assert updated == stored
    # A mutation of a stale read that changes nothing is judged on the stored session, not the read.
    seen: list[int] = []
    await store.update(session.scan_id, lambda current: seen.append(current.noise_readouts), read=session)
    assert seen[-1] == 5


async def test_update_from_a_current_read_is_one_round_trip(redis_server: Any) -> None:
    """The scanner's path: an update from the session just stored is one compare-and-set, no GET."""
    store = RedisSessionStore(aioredis.Redis.from_url(redis_server.url))
    session = make_session()
    await store.create(session)

    def calibrate(current: ScanSession) -> None:
        current.transition(S.calibrating)

    session, _ = await store.update(session.scan_id, calibrate)  # loads the script on the server
    commands: list[str] = []
    original = store._redis.execute_command

    async def spy(*args: Any, **kwargs: Any) -> Any:
        commands.append(str(args[0]))
        return await original(*args, **kwargs)

    store._redis.execute_command = spy  # type: ignore[method-assign]

    def plan(current: ScanSession) -> None:
        current.transition(S.planning)

    updated, _ = await store.update(session.scan_id, plan, read=session)
    assert commands == ["EVALSHA"]
    assert await store.get(session.scan_id) == updated
    assert updated.state == S.planning
    await store.close()
