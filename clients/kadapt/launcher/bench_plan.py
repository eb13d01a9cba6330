"""``kadapt bench plan-latency``: MNet decision latency through the real sampler process, and the
published (faithful) MNet's latency in the same run.

For each geometry (``default``: W = H = 128, 8 coils, 8 ACS lines; ``320-lines``: W = H = 320, 8 coils,
16 ACS lines -- fastMRI knee's 320 phase-encode lines with the readout oversampling removed and the 8
coils the simulator makes; R = 8):

1. an efficient :class:`kadapt.nn.mnet.MNet` with random weights (latency does not depend on them) is
   exported as an ``mnet`` bundle into a temporary repository (parity-checked like any bundle);
2. the sampler runs as a uvicorn process on that repository (``ProcessStack``; uvloop + httptools when
   installed), ``ort_threads`` intra-op threads per session; the gateway's own client
   (:class:`kadapt.http_client.LeanHTTPClient`, keep-alive, on a uvloop event loop as in the gateway) posts
   ``POST /v1/plan`` with the scan's ACS block as the gateway sends it -- the binary
   ``application/x-kadapt-plan`` body (JSON header + raw ``.npy``, :mod:`kadapt.schemas.plan_binary`) --
   and times the round trip: ``mnet_ms_p50`` / ``_p99`` (HTTP, framing, validation, thread hop,
   inference, top-k, contract check); ``mnet_json_ms_*`` the same plans as JSON with ``acs_npy_b64``
   (the documented fallback transport); ``mnet_server_ms_*`` is the planner's own ``elapsed_ms``,
   ``mnet_inference_ms_*`` the ORT session alone in this process, ``http_baseline_ms_*`` the same round
   trip for the fixed ``vd-random`` policy without ACS (what uvicorn, HTTP, JSON and the planner cost by
   themselves);
3. :class:`kadapt.nn.mnet.MNetFaithful` (zero-padded H x W input, about 80 M parameters at 320 x 320) is
   exported the same way and run in ONNX Runtime in this process with the same thread count:
   ``faithful_ms_p50``; ``speedup = faithful_ms_p50 / mnet_ms_p50`` (served MNet vs bare faithful
   inference, so the comparison is conservative).

Targets (issue 4): at the 320-line geometry ``mnet_ms_p99 <= 5`` and ``speedup >= 50`` on two cores.
The machine may be shared; the result records the load average before and after.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import os
import platform
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime
import torch
from rich.console import Console

from kadapt.data.build import code_version
from kadapt.http_client import LeanHTTPClient
from kadapt.launcher.processes import ProcessStack
from kadapt.masks import acs_lines
from kadapt.nn.export import export_onnx
from kadapt.nn.mnet import (
    MNet,
    MNetFaithful,
    MNetGeometry,
    count_parameters,
    mnet_example_inputs,
    randomise_parameters,
)
from kadapt.nn.mnet_bundle import MNET_INPUT_NAME, MNET_OUTPUT_NAME, export_mnet_bundle
from kadapt.schemas import PlanRequest, PlanResponse
from kadapt.schemas.plan_binary import PLAN_BINARY_MEDIA_TYPE, encode_plan_body

GEOMETRIES = {
    "default": MNetGeometry(width=128, height=128, coils=8, num_acs=8),
    "320-lines": MNetGeometry(width=320, height=320, coils=8, num_acs=16),
}
ACCELERATION = 8.0
TARGETS = {"mnet_ms_p99_at_320": 5.0, "speedup_at_320": 50.0}
DEADLINE_MS = 1_000.0
_DEADLINE_MARK = 987654321.0  # a number placed in the JSON template and replaced per request
JSON_MEDIA_TYPE = "application/json"
# One request body for plan number ``index`` (deadline set at send time) and its content type.
BodyMaker = Callable[[int], tuple[bytes, str]]
T = TypeVar("T")


def _stats(prefix: str, values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        f"{prefix}_p50": float(np.percentile(array, 50)),
        f"{prefix}_p99": float(np.percentile(array, 99)),
    }


def _bundle_name(geometry: MNetGeometry) -> str:
    return f"mnet-bench-{geometry.width}"


def _acs_npy(geometry: MNetGeometry, seed: int) -> bytes:
    acs = mnet_example_inputs(geometry, torch.Generator().manual_seed(seed))[0][0].numpy()
    buffer = io.BytesIO()
    np.save(buffer, (acs[..., 0] + 1j * acs[..., 1]).astype(np.complex64), allow_pickle=False)
    return buffer.getvalue()


def _acs_b64(geometry: MNetGeometry, seed: int) -> str:
    return base64.b64encode(_acs_npy(geometry, seed)).decode("ascii")


def _request_template(geometry: MNetGeometry, seed: int, *, baseline: bool = False) -> bytes:
    """``POST /v1/plan`` JSON for the geometry's bundle with one ACS block (``baseline``: the fixed
    ``vd-random`` policy without ACS, i.e. what HTTP, JSON and the planner cost without the model)."""
    request = PlanRequest(
        scan_id=f"bench-{seed}",
        policy="vd-random" if baseline else _bundle_name(geometry),
        width=geometry.width,
        height=geometry.height,
        coils=geometry.coils,
        acceleration=ACCELERATION,
        num_acs=geometry.num_acs,
        acquired=tuple(int(ky) for ky in acs_lines(geometry.width, geometry.num_acs)),
        deadline_unix_ms=_DEADLINE_MARK,
        acs_npy_b64=None if baseline else _acs_b64(geometry, seed),
    )
    return request.model_dump_json().encode()


def _json_bodies(templates: list[bytes]) -> BodyMaker:
    """JSON bodies from ``templates`` in turn, the deadline mark replaced at send time."""
    mark = repr(_DEADLINE_MARK).encode()

    def body(index: int) -> tuple[bytes, str]:
        deadline = repr(time.time() * 1000.0 + DEADLINE_MS).encode()
        return templates[index % len(templates)].replace(mark, deadline), JSON_MEDIA_TYPE

    return body


def _binary_bodies(geometry: MNetGeometry, seeds: range) -> BodyMaker:
    """``application/x-kadapt-plan`` bodies, encoded per request as the gateway does (header JSON with
    the deadline, then the raw ``.npy`` ACS)."""
    requests = [
        PlanRequest.model_validate_json(_request_template(geometry, seed, baseline=True)) for seed in seeds
    ]
    requests = [request.model_copy(update={"policy": _bundle_name(geometry)}) for request in requests]
    blocks = [_acs_npy(geometry, seed) for seed in seeds]

    def body(index: int) -> tuple[bytes, str]:
        request = requests[index % len(requests)].model_copy(
            update={"deadline_unix_ms": time.time() * 1000.0 + DEADLINE_MS}
        )
        return encode_plan_body(request, blocks[index % len(blocks)]), PLAN_BINARY_MEDIA_TYPE

    return body


def export_bench_bundles(repository: Path, generator: torch.Generator) -> dict[str, int]:
    """One random-weight ``mnet`` bundle per geometry into ``repository``; returns parameter counts."""
    counts = {}
    for label, geometry in GEOMETRIES.items():
        model = randomise_parameters(MNet(geometry), generator)
        export_mnet_bundle(
            model,
            repository,
            name=_bundle_name(geometry),
            accelerations=(4.0, ACCELERATION),
            training={
                "description": "UNTRAINED random weights for kadapt bench plan-latency (latency does not "
                "depend on the weights); never a learned sampler",
            },
            code_version=code_version(),
            generator=generator,
        )
        counts[label] = count_parameters(model)
    return counts


async def time_served_plans(
    client: LeanHTTPClient, url: str, geometry: MNetGeometry, count: int
) -> dict[str, Any]:
    """``count`` sequential plans (8 different ACS blocks in turn) after 50 warm-up plans in each
    transport -- binary (``mnet_ms_*``, the gateway's), JSON (``mnet_json_ms_*``) -- then as many
    ``vd-random`` plans without ACS (``http_baseline_ms_*``)."""
    binary_bodies = _binary_bodies(geometry, range(8))
    json_templates = [_request_template(geometry, seed) for seed in range(8)]
    model = await _time_plans(client, url, binary_bodies, count, "mnet")
    as_json = await _time_plans(client, url, _json_bodies(json_templates), count, "mnet_json")
    baseline_body = _json_bodies([_request_template(geometry, 0, baseline=True)])
    baseline = await _time_plans(client, url, baseline_body, count, "http_baseline")
    return {
        **model,
        **{key: value for key, value in as_json.items() if key.startswith("mnet_json")},
        "degraded_json": as_json["degraded"],
        **{key: value for key, value in baseline.items() if key.startswith("http_baseline")},
        "request_kib": round(len(binary_bodies(0)[0]) / 1024.0, 1),
        "request_json_kib": round(len(json_templates[0]) / 1024.0, 1),
    }


async def _time_plans(
    client: LeanHTTPClient, url: str, bodies: BodyMaker, count: int, prefix: str
) -> dict[str, Any]:
    plan_url = url.rstrip("/") + "/v1/plan"
    round_trips, server, degraded = [], [], 0
    for index in range(50 + count):
        started = time.perf_counter()
        body, content_type = bodies(index)
        response = await client.post(
            plan_url, content=body, headers={"content-type": content_type}, timeout=30.0
        )
        elapsed = (time.perf_counter() - started) * 1000.0
        if response.status_code != 200:
            raise RuntimeError(f"plan {index} answered {response.status_code}: {response.content[:300]!r}")
        if index < 50:
            continue
        plan = PlanResponse.model_validate_json(response.content)
        round_trips.append(elapsed)
        server.append(plan.elapsed_ms)
        degraded += int(plan.degraded)
    return {
        **_stats(f"{prefix}_ms", round_trips),
        **_stats(f"{prefix}_server_ms", server),
        "degraded": degraded,
        "requests": count,
    }


async def _time_all_geometries(url: str, count: int, console: Console) -> dict[str, dict[str, Any]]:
    client = LeanHTTPClient(max_connections=1)
    rows: dict[str, dict[str, Any]] = {}
    try:
        for label, geometry in GEOMETRIES.items():
            console.print(f"bench plan-latency: {count} served plans at {label} {geometry}")
            rows[label] = await time_served_plans(client, url, geometry, count)
    finally:
        await client.aclose()
    return rows


def _run_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on uvloop when installed (as uvicorn runs the gateway), else asyncio's loop."""
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def _session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def time_session(path: Path, geometry: MNetGeometry, threads: int, runs: int, warmup: int) -> list[float]:
    """Milliseconds per ``session.run`` of the graph at ``path`` on one ACS block."""
    session = _session(path, threads)
    feed = {MNET_INPUT_NAME: mnet_example_inputs(geometry, torch.Generator().manual_seed(0))[0].numpy()}
    timings = []
    for index in range(warmup + runs):
        started = time.perf_counter()
        session.run([MNET_OUTPUT_NAME], feed)
        if index >= warmup:
            timings.append((time.perf_counter() - started) * 1000.0)
    return timings


def time_faithful(scratch: Path, geometry: MNetGeometry, threads: int, runs: int) -> dict[str, Any]:
    """Export the faithful MNet (random weights) at ``geometry`` and time it in ORT."""
    generator = torch.Generator().manual_seed(1)
    model = randomise_parameters(MNetFaithful(geometry), generator)
    path = scratch / f"faithful-{geometry.width}.onnx"
    export_onnx(  # parity is the unit tests' business; random weights make it uninformative here
        model,
        mnet_example_inputs(geometry, generator),
        path,
        input_names=(MNET_INPUT_NAME,),
        output_names=(MNET_OUTPUT_NAME,),
        random_checks=0,
    )
    parameters = count_parameters(model)
    del model
    timings = time_session(path, geometry, threads, runs, warmup=2)
    path.unlink()
    return {
        "faithful_ms_p50": float(np.percentile(timings, 50)),
        "faithful_ms_min": float(np.min(timings)),
        "faithful_runs": runs,
        "faithful_parameters": parameters,
    }


def run_plan_latency_benchmark(*, quick: bool, console: Console, threads: int = 1) -> dict[str, Any]:
    """Export the bundles, start the sampler process, time served plans, then the faithful MNet; a
    JSON-ready dict (see the module docstring)."""
    requests, faithful_runs = (300, 5) if quick else (3000, 20)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kadapt-bench-plan-") as tmp:
        scratch = Path(tmp)
        repository = scratch / "models"
        console.print("bench plan-latency: exporting random-weight mnet bundles ...")
        parameters = export_bench_bundles(repository, torch.Generator().manual_seed(0))
        stack = ProcessStack(
            data_dir=scratch / "data",
            services=("sampler",),
            redis=False,
            model_repository=repository,
            log_dir=scratch / "logs",
            extra_env={"KADAPT_SAMPLER_ORT_THREADS": str(threads)},
        )
        with stack:
            rows = _run_loop(_time_all_geometries(stack.url("sampler"), requests, console))
        for label, geometry in GEOMETRIES.items():
            bundle_model = repository / _bundle_name(geometry) / "1" / "model.onnx"
            inference = time_session(bundle_model, geometry, threads, requests, warmup=50)
            console.print(f"bench plan-latency: faithful MNet at {label} ({faithful_runs} runs) ...")
            faithful = time_faithful(scratch, geometry, threads, faithful_runs)
            row = rows[label]
            row.update(_stats("mnet_inference_ms", inference))
            row.update(faithful)
            row["speedup"] = row["faithful_ms_p50"] / row["mnet_ms_p50"]
            row["mnet_parameters"] = parameters[label]
            row["geometry"] = {**vars(geometry), "acceleration": ACCELERATION}
    at_320 = rows["320-lines"]
    return {
        "geometries": rows,
        "ort_threads": threads,
        "quick": quick,
        "targets": TARGETS,
        "meets_targets": bool(
            at_320["mnet_ms_p99"] <= TARGETS["mnet_ms_p99_at_320"]
            and at_320["speedup"] >= TARGETS["speedup_at_320"]
        ),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "server": {
            "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
            "plan_body": PLAN_BINARY_MEDIA_TYPE,
            "client": "kadapt.http_client.LeanHTTPClient (the gateway's), uvloop",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "note": "random weights (latency does not depend on them); faithful = bare ORT inference in-process",
    }
