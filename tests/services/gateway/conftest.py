"""Gateway test kit: a simulated scanner (MRD bytes from the core helpers), fake samplers on
``httpx.MockTransport`` and an in-process gateway app reached through ``httpx.ASGITransport``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from kadapt.gateway.api.app import create_app
from kadapt.gateway.domain.store import SessionStore
from kadapt.gateway.settings import GatewaySettings
from kadapt.jobs import BlobStore, MemoryJobQueue
from kadapt.kspace.fft import fft2c
from kadapt.masks import line_budget
from kadapt.mrd.constants import AcquisitionFlag, flag_mask
from kadapt.mrd.header import make_header
from kadapt.mrd.messages import Close
from kadapt.mrd.stream import encode_acquisitions, encode_message, make_acquisition_heads
from kadapt.schemas import PlanRequest, PlanResponse, ReconResult, ReconStatus
from kadapt.schemas.plan_binary import decode_plan_request

MRD = "application/vnd.ismrmrd.stream"

Line = tuple[int, int, int]  # (ky, slice, frame)


@dataclass
class Scanner:
    """A small 2D Cartesian acquisition: ``coils`` x ``2 * height`` samples (2x readout oversampling) x
    ``width`` lines, ``slices`` x ``frames``. ``image`` is zero outside the central ``height`` readout
    rows, so oversampling removal is exact and ``expected`` holds the k-space the gateway must store."""

    coils: int = 4
    height: int = 32
    width: int = 32
    slices: int = 1
    frames: int = 1
    seed: int = 0
    raw: NDArray[np.complex64] = field(init=False)
    expected: NDArray[np.complex64] = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        shape = (self.slices, self.frames, self.coils, self.height, self.width)
        image = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        padded = np.zeros((*shape[:3], 2 * self.height, self.width), dtype=np.complex64)
        padded[..., self.height // 2 : self.height // 2 + self.height, :] = image
        self.raw = fft2c(padded).astype(np.complex64)  # (slice, frame, coil, 2H, W) as sent
        self.expected = fft2c(image).astype(np.complex64)

    def header(self, **overrides: Any) -> str:
        options: dict[str, Any] = {
            "readout": 2 * self.height,
            "recon_readout": self.height,
            "width": self.width,
            "coils": self.coils,
            "slices": self.slices,
            "frames": self.frames,
        }
        options.update(overrides)
        return make_header(**options)

    def all_lines(self) -> list[Line]:
        return [
            (ky, s, f) for s in range(self.slices) for f in range(self.frames) for ky in range(self.width)
        ]

    def lines_for(self, columns: Iterable[int]) -> list[Line]:
        return [(int(ky), s, f) for s in range(self.slices) for f in range(self.frames) for ky in columns]

    def acs_columns(self, num_acs: int) -> list[int]:
        start = self.width // 2 - num_acs // 2
        return list(range(start, start + num_acs))

    def readouts(
        self,
        lines: Sequence[Line],
        *,
        flags: Sequence[int] | None = None,
        coils: int | None = None,
        samples: int | None = None,
        data: NDArray[np.complex64] | None = None,
    ) -> bytes:
        """ACQUISITION messages for ``lines`` (ky, slice, frame) carrying the phantom's readouts."""
        n = len(lines)
        if data is None:
            # Out-of-range counters (for bad-input tests) reuse some in-range samples.
            raw = self.raw
            data = (
                np.stack([raw[s % self.slices, f % self.frames, :, :, ky % self.width] for ky, s, f in lines])
                if n
                else None
            )
            if data is not None and coils is not None:
                data = (
                    data[:, :coils]
                    if coils <= self.coils
                    else np.concatenate([data, data], axis=1)[:, :coils]
                )
            if data is not None and samples is not None:
                data = data[:, :, :samples]
        if data is None:
            return b""
        heads = make_acquisition_heads(n, coils=data.shape[1], samples=data.shape[2])
        heads["idx"]["kspace_encode_step_1"] = [ky for ky, _, _ in lines]
        heads["idx"]["slice"] = [s for _, s, _ in lines]
        heads["idx"]["phase"] = [f for _, _, f in lines]
        if flags is not None:
            heads["flags"] = flags
        return encode_acquisitions(heads, np.ascontiguousarray(data, dtype=np.complex64))

    def noise(self, count: int, samples: int | None = None) -> bytes:
        rng = np.random.default_rng(99)
        shape = (count, self.coils, samples or 2 * self.height)
        data = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        heads = make_acquisition_heads(count, coils=self.coils, samples=shape[2])
        heads["flags"] = flag_mask(AcquisitionFlag.ACQ_IS_NOISE_MEASUREMENT)
        return encode_acquisitions(heads, data)

    @staticmethod
    def close() -> bytes:
        return encode_message(Close())


@pytest.fixture
def scanner() -> Scanner:
    return Scanner()


@pytest.fixture
def make_scanner() -> type[Scanner]:
    """The :class:`Scanner` class, for tests that need another geometry."""
    return Scanner


# --- fake samplers ------------------------------------------------------------------------------------

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def planned_lines(request: PlanRequest) -> tuple[int, ...]:
    """A valid plan: the acquired lines plus every other free line from the edges in, to the budget."""
    budget = line_budget(request.width, request.acceleration, request.num_acs)
    chosen = set(request.acquired)
    free = [line for line in range(request.width) if line not in chosen]
    chosen.update(free[:: max(1, len(free) // max(1, budget - len(chosen)))][: budget - len(chosen)])
    for line in free:  # top up if the stride fell short
        if len(chosen) >= budget:
            break
        chosen.add(line)
    return tuple(sorted(chosen))


def plan_response(request: PlanRequest, **overrides: Any) -> httpx.Response:
    body = PlanResponse(
        scan_id=request.scan_id,
        policy=request.policy,
        lines=planned_lines(request),
        round=request.round,
        served_by=request.policy,
    ).model_dump(mode="json")
    body.update(overrides)
    return httpx.Response(200, json=body)


@dataclass
class FakeSampler:
    """Answers ``POST /v1/plan``; ``mode`` selects good / slow / down / error / invalid behaviour."""

    mode: str = "good"
    delay_s: float = 0.0
    requests: list[PlanRequest] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":  # the gateway's readiness body reports the sampler's
            if self.mode == "down":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(200, json={"status": "ready"})
        # JSON, or application/x-kadapt-plan when the request carries ACS (the gateway's fast path)
        plan_request = decode_plan_request(request.content, request.headers.get("content-type"))
        self.requests.append(plan_request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "error":
            problem = {"type": "https://kadapt.dev/problems/policy-not-found", "status": 404, "title": "x"}
            return httpx.Response(404, json=problem)
        if self.mode == "invalid-count":
            return plan_response(plan_request, lines=list(planned_lines(plan_request))[:-1])
        if self.mode == "two-rounds" and plan_request.round == 0:  # an ADS-like first round
            return plan_response(plan_request, lines=sorted({*plan_request.acquired, 0, 31}), final=False)
        if self.mode == "invalid-json":
            return httpx.Response(200, content=json.dumps({"lines": "nope"}).encode())
        return plan_response(plan_request)


# --- the gateway in-process -----------------------------------------------------------------------------


@dataclass
class Gateway:
    client: httpx.AsyncClient
    app: Any
    queue: Any  # MemoryJobQueue, or the app's RedisJobQueue in Redis mode
    sampler: FakeSampler
    settings: GatewaySettings

    async def create_scan(self, scanner: Scanner, **policy: Any) -> str:
        policy.setdefault("num_acs", 4)  # the default 16 ACS lines do not fit the test matrix at R = 4
        response = await self.client.post(
            "/v1/scans", json={"header_xml": scanner.header(), "policy": policy}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["scan_id"])

    async def send(self, scan_id: str, payload: bytes, content_type: str = MRD) -> httpx.Response:
        return await self.client.post(
            f"/v1/scans/{scan_id}/acquisitions", content=payload, headers={"content-type": content_type}
        )

    def stored_kspace(self, scan_id: str) -> NDArray[np.complex64]:
        """The scan's stored k-space as ``(slice, frame, coil, H, W)`` (the file is line-major)."""
        return np.moveaxis(np.load(self.settings.scans_dir / scan_id / "kspace.npy"), 2, -1)

    async def finish_recon(self, scan_id: str, images: NDArray[np.float32]) -> None:
        """Play the recon worker: store images and a done result for the scan's job."""
        scan = (await self.client.get(f"/v1/scans/{scan_id}")).json()
        job_id = scan["recon_job_id"]
        path, sha = BlobStore(self.settings.blobs_dir).put_array(f"images/{job_id}", images)
        await self.queue.put_result(
            ReconResult(
                job_id=job_id,
                scan_id=scan_id,
                status=ReconStatus.done,
                method_requested="zero-filled",
                method_used="zero-filled",
                images_path=path,
                images_sha256=sha,
            )
        )


@contextlib.asynccontextmanager
async def running_gateway(
    data_dir: Path, sampler: FakeSampler, *, store: SessionStore | None = None, **settings: Any
) -> AsyncIterator[Gateway]:
    """A gateway app in this process; with ``redis_url`` in ``settings`` it builds its own Redis store and
    queue (the deployment path), else it gets a :class:`MemoryJobQueue` (and ``store`` if given)."""
    gateway_settings = GatewaySettings(data_dir=data_dir, sampler_url="http://sampler", **settings)
    queue = None if gateway_settings.redis_url else MemoryJobQueue()
    async with httpx.AsyncClient(transport=httpx.MockTransport(sampler)) as sampler_client:
        app = create_app(gateway_settings, sampler_client=sampler_client, queue=queue, store=store)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gateway", timeout=30
            ) as client:
                yield Gateway(client, app, app.state.service.queue, sampler, gateway_settings)


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def make_gateway(tmp_path: Path) -> GatewayFactory:
    """``make_gateway(mode="good", delay_s=0.0, store=None, data_dir=None, **settings)``: an async
    context manager running a gateway whose sampler is a :class:`FakeSampler` in ``mode``."""
    counter = iter(range(1000))

    def make(
        mode: str = "good",
        delay_s: float = 0.0,
        store: SessionStore | None = None,
        data_dir: Path | None = None,
        **settings: Any,
    ) -> contextlib.AbstractAsyncContextManager[Gateway]:
        data_dir = data_dir or tmp_path / f"gateway-{next(counter)}"
        return running_gateway(data_dir, FakeSampler(mode=mode, delay_s=delay_s), store=store, **settings)

    return make


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with make_gateway() as running:
        yield running
