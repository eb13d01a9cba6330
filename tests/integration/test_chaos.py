"""The chaos suite (issue 7): faults injected into the real process stack, asserting that no job is lost,
none is reconstructed twice and sessions resume.

One stack per module -- redis-server (AOF, appendfsync everysec) + sampler + two recon worker processes
+ gateway -- and each test breaks and restores only the piece it is about:

- a recon worker killed (SIGKILL) mid-job: the other replica takes the job over (XAUTOCLAIM) and runs it
  once; a hung worker (SIGSTOP) that comes back after the takeover loses the write-once race, its result
  is dropped and counted as a duplicate, the stored result is never overwritten;
- redis-server restarted (SIGTERM, and SIGKILL after the everysec fsync): sessions, scans mid-acquisition
  and queued jobs survive, and the scans complete after it;
- the sampler killed during a scan: the plan comes back degraded with the reason within its deadline;
  once it is back, plans are not degraded again;
- the gateway killed (SIGKILL) mid-scan: a new gateway process resumes the scan from Redis and the
  shared volume, and its images equal an uninterrupted scan's.

"Mid-job" is observed, not slept for: the job's entry is pending for a consumer (``XPENDING``) and no
result exists yet when the worker is killed; CG-SENSE with ESPIRiT maps takes about a second here, far
longer than observing and killing. The consumer name is ``<host>-<pid>``, which names the process.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from kadapt.jobs.redis_queue import DEFAULT_GROUP, DEFAULT_RESULT_PREFIX, DEFAULT_STREAM
from kadapt.launcher.processes import ProcessStack
from kadapt.replay.sources import ReplayScan, load_scan
from kadapt.schemas import PlanResponse, ReconResult, ScanCreate, ScanPolicy, ScanPublic, ScanState

pytestmark = pytest.mark.integration
MRD_STREAM = {"content-type": "application/vnd.ismrmrd.stream"}
CLAIM_IDLE_MS = 3000  # longer than a job here (~1 s), so only a dead or hung worker's job is taken over
RECONS = ("recon", "recon-b")
NUM_ACS = 16
T = TypeVar("T")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> ReplayScan:
    for tool in ("redis-server", "ismrmrd_generate_cartesian_shepp_logan"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make setup installs it as root)")
    path = tmp_path_factory.mktemp("mrd") / "shepp_logan.h5"
    command = ["ismrmrd_generate_cartesian_shepp_logan", "-m", "128", "-c", "8", "-n", "0.01", "-C"]
    subprocess.run([*command, "-o", str(path)], check=True, capture_output=True)
    return load_scan(path)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, phantom: ReplayScan) -> Iterator[ProcessStack]:
    root = tmp_path_factory.mktemp("chaos")
    models = root / "models"  # no bundles: fixed mask families and classic recon start fastest
    models.mkdir()
    running = ProcessStack(
        data_dir=root / "stack",
        log_dir=root / "logs",
        model_repository=models,
        extra_env={"KADAPT_RECON_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS), "KADAPT_RECON_BLOCK_MS": "500"},
    )
    with running:
        running.start_replica("recon", "recon-b")
        yield running


@pytest.fixture(scope="module")
def store(stack: ProcessStack) -> Iterator[redis.Redis]:
    assert stack.redis_url is not None
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    client.close()


# --- a scanner ------------------------------------------------------------------------------------------


class Scanner:
    """Plays the phantom to the gateway one step at a time (the URL is read per call: it survives a
    gateway restart on the same port)."""

    def __init__(self, stack: ProcessStack, scan: ReplayScan) -> None:
        self.stack = stack
        self.scan = scan
        width = scan.info.width
        self.acs = list(range(width // 2 - NUM_ACS // 2, width // 2 + NUM_ACS // 2))

    def call(self, method: str, path: str, **options: object) -> httpx.Response:
        return httpx.request(method, f"{self.stack.url('gateway')}{path}", timeout=60.0, **options)  # type: ignore[arg-type]

    def create(self, **policy: object) -> str:
        chosen = ScanPolicy.model_validate(
            {
                "sampler": "equispaced",
                "acceleration": 4.0,
                "num_acs": NUM_ACS,
                "recon": "zero-filled",
                **policy,
            }
        )
        body = ScanCreate(header_xml=self.scan.header_xml, policy=chosen).model_dump(mode="json")
        created = self.call("POST", "/v1/scans", json=body)
        assert created.status_code == 201, created.text
        return ScanPublic.model_validate_json(created.content).scan_id

    def send(self, scan_id: str, columns: list[int]) -> httpx.Response:
        cells = np.array([(0, 0, column) for column in columns])
        return self.call(
            "POST",
            f"/v1/scans/{scan_id}/acquisitions",
            content=self.scan.encode_lines(cells, frozenset(self.acs)),
            headers=MRD_STREAM,
        )

    def send_ok(self, scan_id: str, columns: list[int]) -> None:
        response = self.send(scan_id, columns)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == len(columns)

    def plan(self, scan_id: str) -> PlanResponse:
        response = self.call("GET", f"/v1/scans/{scan_id}/plan")
        assert response.status_code == 200, response.text
        return PlanResponse.model_validate_json(response.content)

    def planned_rest(self, scan_id: str) -> list[int]:
        """ACS in, plan fetched: the planned lines still to acquire."""
        self.send_ok(scan_id, self.acs)
        return [line for line in self.plan(scan_id).lines if line not in self.acs]

    def get(self, scan_id: str) -> ScanPublic:
        response = self.call("GET", f"/v1/scans/{scan_id}")
        assert response.status_code == 200, response.text
        return ScanPublic.model_validate_json(response.content)

    def complete(self, scan_id: str) -> ScanPublic:
        completed = self.call("POST", f"/v1/scans/{scan_id}/complete")
        assert completed.status_code in (200, 202), completed.text
        return ScanPublic.model_validate_json(completed.content)

    def run_until_reconstructing(self, **policy: object) -> ScanPublic:
        scan_id = self.create(**policy)
        self.send_ok(scan_id, self.planned_rest(scan_id))
        return self.complete(scan_id)

    def wait_done(self, scan_id: str, timeout_s: float = 60.0) -> ScanPublic:
        scan = wait_for(
            lambda: self.get(scan_id), lambda s: s.state in (ScanState.done, ScanState.failed), timeout_s
        )
        assert scan.state == ScanState.done, scan.error
        return scan

    def images(self, scan_id: str) -> np.ndarray:
        response = self.call("GET", f"/v1/scans/{scan_id}/images", params={"format": "npy"})
        assert response.status_code == 200, response.text
        images: np.ndarray = np.load(io.BytesIO(response.content), allow_pickle=False)
        return images


@pytest.fixture
def scanner(stack: ProcessStack, phantom: ReplayScan) -> Scanner:
    return Scanner(stack, phantom)


def wait_for(probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float, every_s: float = 0.1) -> T:
    """Call ``probe`` until ``done`` accepts its value (returned) or ``timeout_s`` passes (the last value)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


# --- the recon side: queue and metrics as an operator sees them ----------------------------------------


def recon_counter(stack: ProcessStack, name: str, metric: str, **labels: str) -> float:
    """A counter sample of the recon process ``name`` (its own /metrics)."""
    text = httpx.get(f"{stack.url(name)}/metrics", timeout=10.0).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def pending_holder(stack: ProcessStack, store: redis.Redis, job_id: str) -> tuple[str, int]:
    """Wait until ``job_id`` is pending for a consumer (a worker is running it); returns the process name
    and the delivery count."""

    def probe() -> list[dict[str, object]]:
        return store.xpending_range(DEFAULT_STREAM, DEFAULT_GROUP, "-", "+", 100)  # type: ignore[return-value]

    def job_of(row: dict[str, object]) -> str:
        entries: Any = store.xrange(DEFAULT_STREAM, str(row["message_id"]), str(row["message_id"]))
        return str(entries[0][1]["job_id"])

    rows = wait_for(probe, lambda rows: any(job_of(row) == job_id for row in rows), 30.0, every_s=0.005)
    (row,) = [row for row in rows if job_of(row) == job_id]
    pid = int(str(row["consumer"]).rsplit("-", 1)[1])
    (name,) = [name for name in live_recons(stack) if stack.processes[name].pid == pid]
    return name, int(str(row["times_delivered"]))


def stored_result(store: redis.Redis, job_id: str) -> str | None:
    raw = store.get(f"{DEFAULT_RESULT_PREFIX}{job_id}")
    return None if raw is None else str(raw)


def images_written(stack: ProcessStack, scan_id: str) -> list[Path]:
    return sorted((stack.data_dir / "blobs" / "recon" / scan_id).rglob("images-*.npy"))


def other(name: str) -> str:
    (survivor,) = [candidate for candidate in RECONS if candidate != name]
    return survivor


def live_recons(stack: ProcessStack) -> list[str]:
    """The recon worker processes running now (the kill test leaves one)."""
    return [name for name in RECONS if name in stack.processes]


def two_replicas(stack: ProcessStack) -> None:
    """(Re)start whichever recon replica is down."""
    for name in RECONS:
        if name not in stack.processes:
            stack.start_service(name)


# --- recon workers ---------------------------------------------------------------------------------------


def test_a_hung_worker_that_comes_back_loses_the_race_and_is_counted_as_a_duplicate(
    stack: ProcessStack, store: redis.Redis, scanner: Scanner
) -> None:
    two_replicas(stack)
    duplicates_before = {
        name: recon_counter(stack, name, "kadapt_recon_jobs_total", status="duplicate") for name in RECONS
    }
    scan = scanner.run_until_reconstructing(recon="cg-sense")
    assert scan.recon_job_id is not None
    job_id = scan.recon_job_id
    hung, _ = pending_holder(stack, store, job_id)
    stack.processes[hung].send_signal(signal.SIGSTOP)
    try:
        assert stored_result(store, job_id) is None
        scanner.wait_done(scan.scan_id)  # the other replica took the job over after CLAIM_IDLE_MS
        first = stored_result(store, job_id)
    finally:
        stack.processes[hung].send_signal(signal.SIGCONT)
    # The hung worker finishes its own run too: its result must be dropped (write-once), counted, and its
    # images deleted; the stored result stays the first one, byte for byte.
    duplicates = wait_for(
        lambda: recon_counter(stack, hung, "kadapt_recon_jobs_total", status="duplicate"),
        lambda value: value > duplicates_before[hung],
        30.0,
    )
    assert duplicates == duplicates_before[hung] + 1
    assert first is not None
    assert stored_result(store, job_id) == first
    winner = ReconResult.model_validate_json(first)
    assert winner.deliveries == 2
    assert [str(path) for path in images_written(stack, scan.scan_id)] == [winner.images_path]
    assert store.xpending(DEFAULT_STREAM, DEFAULT_GROUP)["pending"] == 0
    assert scanner.images(scan.scan_id).shape[-2:] == (128, 128)


def test_a_recon_worker_killed_mid_job_is_taken_over_and_the_job_runs_once(
    stack: ProcessStack, store: redis.Redis, scanner: Scanner
) -> None:
    two_replicas(stack)
    before = {
        name: {
            status: recon_counter(stack, name, "kadapt_recon_jobs_total", status=status)
            for status in ("done", "duplicate")
        }
        for name in RECONS
    }
    scan = scanner.run_until_reconstructing(recon="cg-sense")
    assert scan.recon_job_id is not None
    job_id = scan.recon_job_id
    victim, deliveries = pending_holder(stack, store, job_id)
    stack.kill_service(victim)  # SIGKILL while the job is pending for it
    assert deliveries == 1
    assert stored_result(store, job_id) is None  # it was mid-job: no result, no images
    assert images_written(stack, scan.scan_id) == []

    done = scanner.wait_done(scan.scan_id)
    survivor = other(victim)
    result = ReconResult.model_validate_json(stored_result(store, job_id) or "")
    assert (result.deliveries, result.method_used) == (2, "cg-sense")  # the takeover (XAUTOCLAIM) ran it
    assert [str(path) for path in images_written(stack, scan.scan_id)] == [result.images_path]
    assert (
        recon_counter(stack, survivor, "kadapt_recon_jobs_total", status="done")
        == before[survivor]["done"] + 1
    )
    assert (
        recon_counter(stack, survivor, "kadapt_recon_jobs_total", status="duplicate")
        == before[survivor]["duplicate"]
    )
    assert store.xpending(DEFAULT_STREAM, DEFAULT_GROUP)["pending"] == 0
    assert done.recon_method_used == "cg-sense"
    # The victim stays down: the later tests run with the one replica left (a restart costs seconds).


# --- redis-server ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_sessions_and_queued_jobs_survive_a_redis_restart(
    how: str, stack: ProcessStack, store: redis.Redis, scanner: Scanner
) -> None:
    mid_scan = scanner.create()
    rest = scanner.planned_rest(mid_scan)
    scanner.send_ok(mid_scan, rest[: len(rest) // 2])
    # No worker consumes while Redis restarts (their blocking reads expire first): the job stays queued.
    workers = live_recons(stack)
    for name in workers:
        stack.processes[name].send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.6)
        queued = scanner.run_until_reconstructing()
        assert queued.recon_job_id is not None
        assert store.xpending(DEFAULT_STREAM, DEFAULT_GROUP)["pending"] == 0
        assert queued.recon_job_id in json.dumps(store.xrange(DEFAULT_STREAM, "-", "+"))
        if how == "sigterm":
            stack.stop_service("redis")  # redis-server writes and fsyncs the AOF on the way out
        else:
            time.sleep(1.5)  # appendfsync everysec: let the AOF reach the disk, then crash
            stack.kill_service("redis")
        stack.start_service("redis")
        assert scanner.get(mid_scan).state == ScanState.acquiring
        assert scanner.get(mid_scan).acquired_lines == NUM_ACS + len(rest) // 2
        assert scanner.get(queued.scan_id).state == ScanState.reconstructing
        scanner.send_ok(mid_scan, rest[len(rest) // 2 :])
        scanner.complete(mid_scan)
    finally:
        for name in workers:
            stack.processes[name].send_signal(signal.SIGCONT)
    for scan_id in (queued.scan_id, mid_scan):
        scanner.wait_done(scan_id)
        assert scanner.images(scan_id).shape[-2:] == (128, 128)


# --- sampler --------------------------------------------------------------------------------------------


def fallback_total(stack: ProcessStack, reason: str) -> float:
    """The gateway's count of fallback plans for ``reason`` (the counter was renamed from ``degraded``)."""
    text = httpx.get(f"{stack.url('gateway')}/metrics", timeout=10.0).text
    names = ("kadapt_gateway_fallback_total", "kadapt_gateway_degraded_total")
    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in names and sample.labels.get("reason") == reason
    )


def test_sampler_down_gives_degraded_plans_in_time_and_recovery_when_it_returns(
    stack: ProcessStack, scanner: Scanner
) -> None:
    deadline_ms = 300.0
    unavailable_before = fallback_total(stack, "sampler-unavailable")
    scan_id = scanner.create(plan_deadline_ms=deadline_ms)
    scanner.send_ok(scan_id, scanner.acs[:4])
    stack.kill_service("sampler")  # during the scan, before it asks for a plan
    try:
        scanner.send_ok(scan_id, scanner.acs[4:])
        plan = scanner.plan(scan_id)
        assert plan.degraded
        assert plan.reason == "sampler-unavailable"
        assert plan.served_by == "vd-random"  # the policy's fallback family
        assert plan.elapsed_ms <= deadline_ms
        assert fallback_total(stack, "sampler-unavailable") == unavailable_before + 1
        scanner.send_ok(scan_id, [line for line in plan.lines if line not in scanner.acs])
        scanner.complete(scan_id)
        scanner.wait_done(scan_id)  # a degraded plan still gives images
    finally:
        stack.start_service("sampler")
    recovered = scanner.create(plan_deadline_ms=deadline_ms)
    scanner.send_ok(recovered, scanner.acs)
    plan = scanner.plan(recovered)
    assert not plan.degraded, plan.reason
    assert plan.served_by == "equispaced"


# --- gateway --------------------------------------------------------------------------------------------


def test_a_scan_resumes_on_a_new_gateway_after_the_old_one_is_killed(
    stack: ProcessStack, scanner: Scanner
) -> None:
    reference = scanner.run_until_reconstructing()
    scan_id = scanner.create()
    rest = scanner.planned_rest(scan_id)
    scanner.send_ok(scan_id, rest[: len(rest) // 2])
    stack.kill_service("gateway")  # SIGKILL mid-scan
    stack.start_service("gateway")
    resumed = scanner.get(scan_id)
    assert (resumed.state, resumed.acquired_lines) == (ScanState.acquiring, NUM_ACS + len(rest) // 2)
    assert resumed.plan is not None
    assert [line for line in resumed.plan.lines if line not in scanner.acs] == rest
    duplicate = scanner.send(scan_id, rest[:1])  # the line set survived in Redis
    assert duplicate.status_code == 409, duplicate.text
    scanner.send_ok(scan_id, rest[len(rest) // 2 :])
    scanner.complete(scan_id)
    scanner.wait_done(scan_id)
    scanner.wait_done(reference.scan_id)
    # Same phantom, plan and zero-filled recon: the samples written before the kill are all there.
    np.testing.assert_array_equal(scanner.images(scan_id), scanner.images(reference.scan_id))
