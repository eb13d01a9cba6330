"""``kadapt bench ingest``: the gateway's ingest and planning through real processes on loopback.

Starts redis-server, the sampler and the gateway as in a deployment (``ProcessStack``), then plays the
part of a scanner with a keep-alive HTTP client:

- ``acq_per_s``: acquisitions (8 coils x 256 samples) per second over a whole multi-slice scan sent in
  shots of ``shot_lines`` readouts per request (ACS block, then the planned lines);
- ``single_acq_ms_p50`` / ``_p99``: one acquisition per request;
- ``plan_ms_p50`` / ``_p99``: the plan round trip, GET /plan right after the ACS block is in (fixed policy;
  the gateway asked the sampler when the ACS completed);
- ``plan_after_acs_ms_p50`` / ``_p99``: the scanner's whole wait, from sending the ACS shot (16 lines) to
  holding the plan: ingest of the shot + sampler round trip + GET /plan.

Targets on the project's two-core machines: ``acq_per_s >= 2000`` and ``plan_ms_p99 <= 20``.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console

from kadapt.launcher.processes import ProcessStack
from kadapt.mrd.builders import make_acquisition_heads
from kadapt.mrd.constants import AcquisitionFlag, flag_mask
from kadapt.mrd.header import make_header
from kadapt.mrd.stream import encode_acquisitions
from kadapt.schemas import PlanResponse, ScanCreate, ScanPolicy, ScanPublic

MRD_STREAM = {"content-type": "application/vnd.ismrmrd.stream"}
COILS, SAMPLES, WIDTH = 8, 256, 256
TARGETS = {"acq_per_s": 2000.0, "plan_ms_p99": 20.0}


def _lines(slices: int, cells: list[tuple[int, int]], rng: np.random.Generator, acs: set[int]) -> bytes:
    """MRD bytes for ``cells`` = (slice, column) with random complex data."""
    heads = make_acquisition_heads(len(cells), coils=COILS, samples=SAMPLES)
    heads["idx"]["slice"] = [s for s, _ in cells]
    heads["idx"]["kspace_encode_step_1"] = [c for _, c in cells]  # centre line = W // 2, offset 0
    is_acs = np.array([c in acs for _, c in cells])
    heads["flags"] = np.where(is_acs, flag_mask(AcquisitionFlag.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING), 0)
    data = rng.standard_normal((len(cells), COILS, SAMPLES)) + 1j * rng.standard_normal(
        (len(cells), COILS, SAMPLES)
    )
    return encode_acquisitions(heads, data.astype(np.complex64))


def _create(client: httpx.Client, slices: int, policy: ScanPolicy) -> str:
    header = make_header(readout=SAMPLES, width=WIDTH, slices=slices, coils=COILS)
    response = client.post(
        "/v1/scans", json=ScanCreate(header_xml=header, policy=policy).model_dump(mode="json")
    )
    response.raise_for_status()
    return ScanPublic.model_validate_json(response.content).scan_id


def _post(client: httpx.Client, scan_id: str, payload: bytes) -> None:
    response = client.post(f"/v1/scans/{scan_id}/acquisitions", content=payload, headers=MRD_STREAM)
    if response.status_code >= 400:
        raise RuntimeError(f"ingest failed: {response.status_code} {response.text[:300]}")


def _acs(num_acs: int) -> list[int]:
    start = WIDTH // 2 - num_acs // 2
    return list(range(start, start + num_acs))


def _plan(client: httpx.Client, scan_id: str) -> PlanResponse:
    response = client.get(f"/v1/scans/{scan_id}/plan")
    response.raise_for_status()
    return PlanResponse.model_validate_json(response.content)


def bench_throughput(
    client: httpx.Client, slices: int, shot_lines: int, rng: np.random.Generator
) -> dict[str, float]:
    policy = ScanPolicy(sampler="vd-random", acceleration=2.0, num_acs=16, plan_deadline_ms=1000.0)
    scan_id = _create(client, slices, policy)
    acs = _acs(policy.num_acs)
    acs_cells = [(s, c) for s in range(slices) for c in acs]
    acs_payloads = [
        _lines(slices, acs_cells[i : i + shot_lines], rng, set(acs))
        for i in range(0, len(acs_cells), shot_lines)
    ]
    started = time.perf_counter()
    for payload in acs_payloads:
        _post(client, scan_id, payload)
    plan = _plan(client, scan_id)
    plan_done = time.perf_counter()
    cells = [(s, c) for s in range(slices) for c in plan.lines if c not in set(acs)]
    payloads = [
        _lines(slices, cells[i : i + shot_lines], rng, set(acs)) for i in range(0, len(cells), shot_lines)
    ]
    resumed = time.perf_counter()
    for payload in payloads:
        _post(client, scan_id, payload)
    finished = time.perf_counter()
    client.delete(f"/v1/scans/{scan_id}")
    count = len(acs_cells) + len(cells)
    seconds = (plan_done - started) + (finished - resumed)  # payload encoding by the client excluded
    return {"acquisitions": float(count), "seconds": seconds, "acq_per_s": count / seconds}


def bench_single(client: httpx.Client, count: int, rng: np.random.Generator) -> list[float]:
    slices = max(1, -(-count // WIDTH))
    scan_id = _create(client, slices, ScanPolicy(sampler="vd-random", acceleration=2.0, num_acs=16))
    cells = [(s, c) for s in range(slices) for c in range(WIDTH)][:count]
    payloads = [_lines(slices, [cell], rng, set()) for cell in cells]
    timings = []
    for payload in payloads:
        started = time.perf_counter()
        _post(client, scan_id, payload)
        timings.append((time.perf_counter() - started) * 1000.0)
    client.delete(f"/v1/scans/{scan_id}")
    return timings


def bench_plan(
    client: httpx.Client, count: int, rng: np.random.Generator
) -> tuple[list[float], list[float], int]:
    """Per scan: the GET /plan round trip, and the scanner's whole wait from sending its ACS shot."""
    policy = ScanPolicy(sampler="vd-random", acceleration=4.0, num_acs=16, plan_deadline_ms=200.0)
    acs = _acs(policy.num_acs)
    payload = _lines(1, [(0, c) for c in acs], rng, set(acs))
    round_trips, after_acs, degraded = [], [], 0
    for _ in range(count):
        scan_id = _create(client, 1, policy)
        started = time.perf_counter()
        _post(client, scan_id, payload)
        asked = time.perf_counter()
        plan = _plan(client, scan_id)
        received = time.perf_counter()
        round_trips.append((received - asked) * 1000.0)
        after_acs.append((received - started) * 1000.0)
        degraded += int(plan.degraded)
        client.delete(f"/v1/scans/{scan_id}")
    return round_trips, after_acs, degraded


def _stats(prefix: str, values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {
        f"{prefix}_p50": float(np.percentile(array, 50)),
        f"{prefix}_p99": float(np.percentile(array, 99)),
        f"{prefix}_n": float(array.size),
    }


def run_ingest_benchmark(*, quick: bool, console: Console, redis: bool = True) -> dict[str, Any]:
    """Start the processes, run the three measurements, stop; a JSON-ready dict (see module doc)."""
    rng = np.random.default_rng(0)
    slices, singles, plans, repeats = (16, 200, 50, 3) if quick else (64, 1000, 300, 5)
    with tempfile.TemporaryDirectory(prefix="kadapt-bench-") as tmp:
        stack = ProcessStack(
            data_dir=Path(tmp), services=("sampler", "gateway"), redis=redis, log_dir=Path(tmp) / "logs"
        )
        with stack, httpx.Client(base_url=stack.url("gateway"), timeout=60.0) as client:
            console.print(f"bench: gateway {stack.url('gateway')} (redis={redis}), warming up ...")
            bench_plan(client, 5, rng)
            runs = [bench_throughput(client, slices, 32, rng) for _ in range(repeats)]
            single = bench_single(client, singles, rng)
            plan_ms, plan_after_acs_ms, degraded = bench_plan(client, plans, rng)
    throughput = sorted(run["acq_per_s"] for run in runs)
    result: dict[str, Any] = {
        "acq_per_s": float(np.median(throughput)),
        "acq_per_s_runs": throughput,
        "shot_lines": 32,
        "acquisition": {"coils": COILS, "samples": SAMPLES, "width": WIDTH, "slices": slices},
        **_stats("single_acq_ms", single),
        **_stats("plan_ms", plan_ms),
        **_stats("plan_after_acs_ms", plan_after_acs_ms),
        "degraded_plans": degraded,
        "quick": quick,
        "redis": redis,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "targets": TARGETS,
    }
    result["meets_targets"] = bool(
        result["acq_per_s"] >= TARGETS["acq_per_s"] and result["plan_ms_p99"] <= TARGETS["plan_ms_p99"]
    )
    return result
