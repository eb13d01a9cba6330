"""``kadapt bench load``: many concurrent scans, paced like scanners, through the real process topology.

Starts redis-server, the sampler (on the model repository), the recon worker(s) and the gateway as a
deployment would (:class:`~kadapt.launcher.processes.ProcessStack`), then runs ``scans`` scanners at
once, one asyncio task each, started ``stagger_ms`` apart so that the recon jobs of early scans are
running while later scans plan. Each scanner plays ``repeats`` scans back to back with the replay
client (:func:`kadapt.replay.scanner.replay_scan`): the ACS block in shots of ``shot_lines`` readouts,
each shot sent once acquired (``tr_ms`` per readout) with ``wait_plan``, so the last ACS shot's answer
carries the plan (``GET .../plan`` only if it does not; deadline ``deadline_ms``), the planned lines
paced the same way, complete, wait for the images and fetch them.

A **deadline miss** is a plan the scanner held later than ``deadline_ms`` after sending its last ACS
shot (the client's clock: it includes the ingest of that shot, which the gateway's own deadline clock,
started when the ACS block is complete, does not). A **fallback** is a plan marked degraded; fallbacks
are allowed, but counted by reason and explained (:data:`FALLBACK_REASONS`). An **error** is any
non-2xx answer or any exception in a scanner. What the services counted themselves during the measured
phase (Prometheus ``/metrics`` scraped before and after it) is reported next to the client's view; the
JSON layout is in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from kadapt.errors import InvalidInputError, KadaptError
from kadapt.launcher.bench_load_report import (
    ScanRecord,
    ServiceScrape,
    build_report,
    cores_busy_seconds,
    process_cpu_seconds,
)
from kadapt.launcher.processes import ProcessStack
from kadapt.mrd.header import make_header
from kadapt.replay.scanner import AcquiredScan, acquire_scan, collect_scan, replay_scan
from kadapt.replay.sources import ReplayScan, load_fastmri_scan
from kadapt.schemas import ScanPolicy


@dataclass(frozen=True)
class LoadSettings:
    """One load run. ``slices`` None replays whole volumes; ``recon_workers`` consumers run in the one
    recon process; ``recon_threads`` / ``sampler_threads`` are ONNX Runtime intra-op threads;
    ``recon_priority`` puts the recon process behind the plan path on shared cores: ``idle`` (Linux
    ``SCHED_IDLE``: it runs only when nothing else wants the core; measured: scanner wait p50 about
    16 ms against 18-29 ms at nice +19), ``nice`` (+19) or ``normal``; viewers poll for images
    ``poll_first_s`` after ``complete``, backing off to ``poll_max_s`` apart; ``log_dir`` keeps the
    services' logs (default: a temporary directory, removed). ``split_cores`` (Linux, two or more usable
    cores): the scanners (this process) run on the last core and the gateway, sampler and Redis on the
    others, so that the load generator does not take the CPU of the plan path it measures (in a
    deployment the scanners are other machines); recon keeps every core (:func:`split_cores`)."""

    scans: int = 16
    repeats: int = 4
    deadline_ms: float = 50.0
    policy: str = "mnet-mb"
    recon: str = "modl"
    acceleration: float = 4.0
    num_acs: int = 8
    fallback: str = "vd-random"
    tr_ms: float = 10.0
    shot_lines: int = 16
    slices: int | None = None
    stagger_ms: float = 150.0
    recon_workers: int = 1
    recon_threads: int = 1
    recon_priority: Literal["idle", "nice", "normal"] = "idle"
    split_cores: bool = True
    poll_first_s: float = 0.1
    poll_max_s: float = 1.0
    startup_timeout_s: float = 180.0
    log_dir: Path | None = None
    sampler_threads: int = 1
    data: Path = Path("data/default")
    models: Path = Path("models")
    quick: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick_run(cls, **overrides: Any) -> LoadSettings:
        """``--quick``: 16 scanners x 2 scans of the first 2 slices of the test volumes; viewers poll for
        images 1 s after ``complete``, then at most 2 s apart (the recon queue is long on one core, and
        every poll costs the plan path CPU: backing off from 20 ms, polls outnumbered ingest requests)."""
        values: dict[str, Any] = {
            "repeats": 2,
            "slices": 2,
            "poll_first_s": 1.0,
            "poll_max_s": 2.0,
            "quick": True,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def policy_of(self) -> ScanPolicy:
        return ScanPolicy(
            sampler=self.policy,
            acceleration=self.acceleration,
            num_acs=self.num_acs,
            plan_deadline_ms=self.deadline_ms,
            fallback=self.fallback,
            recon=self.recon,
            outputs=("npy",),
        )


def first_slices(scan: ReplayScan, slices: int | None) -> ReplayScan:
    """``scan`` cut to its first ``slices`` slices (a smaller volume, same geometry otherwise); the MRD
    header is rewritten to the stored array (fastMRI sources only: they carry no per-line headers)."""
    if slices is None or slices >= scan.raw.shape[0]:
        return scan
    if slices < 1 or scan.heads is not None:
        raise InvalidInputError(f"{scan.name}: cannot cut to {slices} slices (fastMRI sources, >= 1)")
    info = scan.info
    header = make_header(
        readout=info.encoded_readout,
        width=info.width,
        recon_readout=info.recon_matrix[0],
        slices=slices,
        coils=scan.raw.shape[2],
    )
    return ReplayScan(scan.name, header, scan.raw[:slices], scan.reference[:slices])


def load_sources(settings: LoadSettings) -> list[ReplayScan]:
    """The held-out test volumes of ``settings.data`` (fastMRI HDF5 in ``test/``), cut to ``slices``."""
    paths = sorted((settings.data / "test").glob("*.h5"))
    if not paths:
        raise InvalidInputError(f"no test volumes in {settings.data / 'test'} (run kadapt data build)")
    return [first_slices(load_fastmri_scan(path), settings.slices) for path in paths]


class ErrorLog:
    """Every non-2xx answer (an httpx response hook) and every exception of a scanner."""

    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.exceptions: list[str] = []
        self.ingest_bytes = 0

    async def on_request(self, request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith("/acquisitions"):
            self.ingest_bytes += len(request.content)

    async def on_response(self, response: httpx.Response) -> None:
        if response.status_code >= 300:
            path = "/".join("{id}" if len(part) == 32 else part for part in response.url.path.split("/"))
            self.statuses[f"{response.request.method} {path} -> {response.status_code}"] += 1


async def _collect(
    index: int,
    repeat: int,
    scan: ReplayScan,
    client: httpx.AsyncClient,
    acquired: AcquiredScan,
    settings: LoadSettings,
    errors: ErrorLog,
) -> ScanRecord:
    try:
        outcome = await collect_scan(
            client,
            acquired,
            timeout_s=600.0,
            poll_first_s=settings.poll_first_s,
            poll_max_s=settings.poll_max_s,
        )
    except (KadaptError, httpx.HTTPError, OSError, ValueError) as error:
        errors.exceptions.append(f"scanner {index} scan {repeat} ({scan.name}) images: {_describe(error)}")
        return ScanRecord.acquired_only(index, repeat, scan.name, acquired, settings.deadline_ms)
    return ScanRecord.of(index, repeat, scan.name, outcome, settings.deadline_ms)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


async def _scanner(
    index: int,
    client: httpx.AsyncClient,
    sources: list[ReplayScan],
    settings: LoadSettings,
    start_at: float,
    errors: ErrorLog,
) -> list[ScanRecord]:
    """One scanner: waits for its start slot, then acquires ``repeats`` scans back to back; the images of
    each are awaited by a viewer task while the scanner goes on (so recon jobs overlap later plans)."""
    await asyncio.sleep(max(0.0, start_at + index * settings.stagger_ms / 1000.0 - time.perf_counter()))
    records: list[ScanRecord] = []
    viewers: list[asyncio.Task[ScanRecord]] = []
    for repeat in range(settings.repeats):
        scan = sources[(index + repeat) % len(sources)]
        started = time.perf_counter()
        try:
            acquired = await acquire_scan(
                client, scan, settings.policy_of(), shot_lines=settings.shot_lines, tr_ms=settings.tr_ms
            )
        except (KadaptError, httpx.HTTPError, OSError, ValueError) as error:
            errors.exceptions.append(f"scanner {index} scan {repeat} ({scan.name}): {_describe(error)}")
            records.append(ScanRecord.failed(index, repeat, scan.name, time.perf_counter() - started))
            continue
        viewers.append(asyncio.create_task(_collect(index, repeat, scan, client, acquired, settings, errors)))
    records.extend(await asyncio.gather(*viewers))
    return records


async def _watch_loop_lag(lags_ms: list[float], period_s: float = 0.01) -> None:
    """How late this process's event loop wakes up (until cancelled): the scanners' clock is only as
    good as their loop, so a client starved of CPU shows here rather than as a slow gateway."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(period_s)
        lags_ms.append(max(0.0, (time.perf_counter() - started - period_s) * 1000.0))


async def _run_scanners(
    base_url: str, sources: list[ReplayScan], settings: LoadSettings, errors: ErrorLog
) -> tuple[list[ScanRecord], float, list[float]]:
    limits = httpx.Limits(max_connections=4 * settings.scans, max_keepalive_connections=4 * settings.scans)
    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [errors.on_request],
        "response": [errors.on_response],
    }
    async with httpx.AsyncClient(
        base_url=base_url, timeout=300.0, limits=limits, event_hooks=hooks
    ) as client:
        lags_ms: list[float] = []
        watcher = asyncio.create_task(_watch_loop_lag(lags_ms))
        started = time.perf_counter()
        per_scanner = await asyncio.gather(
            *(_scanner(index, client, sources, settings, started, errors) for index in range(settings.scans))
        )
        wall = time.perf_counter() - started
        watcher.cancel()
    return [record for records in per_scanner for record in records], wall, lags_ms


async def _warm_up(base_url: str, scan: ReplayScan, settings: LoadSettings) -> None:
    """One unmeasured scan: first-request costs (imports, ORT's first runs, connection set-up)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=300.0) as client:
        await replay_scan(client, scan, settings.policy_of(), shot_lines=settings.shot_lines, tr_ms=0.0)


async def _scrape_all(urls: dict[str, str]) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        texts = {}
        for name, url in urls.items():
            response = await client.get(f"{url}/metrics")
            response.raise_for_status()
            texts[name] = response.text
        return texts


def _stack_environment(settings: LoadSettings) -> dict[str, str]:
    env = {
        "KADAPT_RECON_WORKERS": str(settings.recon_workers),
        "KADAPT_RECON_INFERENCE_THREADS": str(settings.recon_threads),
        "KADAPT_SAMPLER_ORT_THREADS": str(settings.sampler_threads),
    }
    if (settings.models / settings.recon).is_dir():  # a learned recon: load only that bundle
        env["KADAPT_RECON_BUNDLES"] = json.dumps([settings.recon])
    env.update(settings.extra_env)
    return env


def deprioritise_process(pid: int, priority: str) -> list[int]:
    """Put every thread of process ``pid`` (scheduling is per thread on Linux; threads started later
    inherit their creator's) under ``SCHED_IDLE`` (``idle``, falling back to nice +19 where it is not
    allowed) or at nice +19 (``nice``); returns the thread ids changed."""
    changed = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        tid = int(task.name)
        try:
            if priority == "idle" and hasattr(os, "SCHED_IDLE"):
                try:
                    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                except PermissionError:
                    os.setpriority(os.PRIO_PROCESS, tid, 19)
            else:
                os.setpriority(os.PRIO_PROCESS, tid, 19)
        except (OSError, ValueError):
            continue
        changed.append(tid)
    return changed


def _pin_process(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` on ``cores`` (threads started later inherit their creator's)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cores)


def split_cores(service_pids: dict[str, int]) -> dict[str, list[int]] | None:
    """Scanners (the calling thread, and threads it starts) on the last usable core, ``service_pids``
    (gateway, sampler, redis) on the others; None (nothing changed) without ``sched_setaffinity`` or
    with fewer than two cores. Returns the split, as recorded in the report."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    scanners, services = {cores[-1]}, set(cores[:-1])
    for pid in service_pids.values():
        _pin_process(pid, services)
    os.sched_setaffinity(0, scanners)
    return {"scanners": sorted(scanners), "services": sorted(services)}


def run_load_benchmark(settings: LoadSettings, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Start the stack, warm up, run the scanners, scrape the services; the JSON-ready report."""
    if settings.scans < 1 or settings.repeats < 1 or settings.shot_lines < 1:
        raise InvalidInputError(f"scans, repeats and shot_lines must be >= 1: {settings}")
    sources = load_sources(settings)
    load_before = list(os.getloadavg())
    own_cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    core_split = None
    with tempfile.TemporaryDirectory(prefix="kadapt-bench-load-") as tmp:
        stack = ProcessStack(
            data_dir=Path(tmp) / "data",
            model_repository=settings.models.resolve(),
            log_dir=settings.log_dir or Path(tmp) / "logs",
            extra_env=_stack_environment(settings),
        )
        progress("bench load: starting redis-server, sampler, recon, gateway ...")
        started = time.perf_counter()
        try:  # not ``with stack``: its start-up timeout is fixed; a busy machine needs more
            stack.start(timeout_s=settings.startup_timeout_s)
            startup_s = time.perf_counter() - started
            urls = {name: stack.url(name) for name in ("gateway", "sampler", "recon")}
            if settings.recon_priority != "normal":
                # Recon is batch work: on cores it shares with the plan path it must not delay plans.
                deprioritise_process(stack.processes["recon"].pid, settings.recon_priority)
            if settings.split_cores:
                core_split = split_cores(
                    {name: stack.processes[name].pid for name in ("gateway", "sampler", "redis")}
                )
            asyncio.run(_warm_up(urls["gateway"], sources[0], settings))
            before = asyncio.run(_scrape_all(urls))
            pids = {name: process.pid for name, process in stack.processes.items()}
            cpu_before, busy_before = process_cpu_seconds(pids), cores_busy_seconds()
            progress(
                f"bench load: {settings.scans} scanners x {settings.repeats} scans, "
                f"deadline {settings.deadline_ms:g} ms, policy {settings.policy}, recon {settings.recon}"
            )
            errors = ErrorLog()
            records, wall_s, lags_ms = asyncio.run(_run_scanners(urls["gateway"], sources, settings, errors))
            cpu_after, busy_after = process_cpu_seconds(pids), cores_busy_seconds()
            after = asyncio.run(_scrape_all(urls))
            logs = _log_tails(stack.log_dir or Path(tmp)) if errors.statuses or errors.exceptions else {}
        finally:
            if own_cores is not None:
                os.sched_setaffinity(0, own_cores)
            stack.stop()

    scrapes = {name: ServiceScrape(before[name], after[name]) for name in before}
    source = sources[0]
    settings_dict = {
        key: str(value) if isinstance(value, Path) else value for key, value in asdict(settings).items()
    }
    return build_report(
        records=records,
        settings=settings_dict,
        scrapes=scrapes,
        statuses=dict(errors.statuses),
        exceptions=errors.exceptions,
        ingest_bytes=errors.ingest_bytes,
        wall_s=wall_s,
        startup_s=startup_s,
        cpu_seconds={name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after},
        volume={
            "sources": [scan.name for scan in sources],
            "shape_slice_frame_coil_readout_W": list(source.raw.shape),
            "acquisition_bytes": int(
                source.raw.shape[2] * source.raw.shape[3] * np.dtype(np.complex64).itemsize
            ),
        },
        logs=logs,
        load_before=load_before,
        client_loop_lag_ms=lags_ms,
        cores_busy_s=busy_after - busy_before,
        core_split=core_split,
    )


def _log_tails(log_dir: Path, lines: int = 20) -> dict[str, list[str]]:
    """The last lines of every service log, kept in the report when something went wrong."""
    return {
        path.stem: path.read_text(errors="replace").splitlines()[-lines:]
        for path in sorted(log_dir.glob("*.log"))
    }
