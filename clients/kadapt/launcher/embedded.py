"""The embedded default: gateway, sampler and recon in one process (architecture.md section 7).

The same service code as a deployment, wired in-process: the gateway reaches the sampler through an
``httpx.ASGITransport`` (still HTTP semantics, deadlines and problem+json included), gateway and recon
share a :class:`~kadapt.jobs.queue.MemoryJobQueue` instead of Redis Streams, and blobs live in a
temporary data directory. With ``mrd_port`` the gateway also serves the MRD streaming protocol on TCP
(0: a free port; the bound one is ``EmbeddedStack.mrd_port``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from kadapt.gateway.api.app import create_app as create_gateway
from kadapt.gateway.settings import GatewaySettings
from kadapt.jobs.queue import MemoryJobQueue
from kadapt.recon.api.app import create_app as create_recon
from kadapt.recon.settings import ReconSettings
from kadapt.sampler.api.app import create_app as create_sampler
from kadapt.sampler.settings import SamplerSettings


@dataclass
class EmbeddedStack:
    """Handles of a running embedded stack; ``gateway`` is a client for the gateway's REST API and
    ``mrd_port`` the MRD server's bound TCP port (None when it is off)."""

    gateway: httpx.AsyncClient
    gateway_app: FastAPI
    sampler_app: FastAPI
    recon_app: FastAPI
    queue: MemoryJobQueue
    mrd_port: int | None = None


@contextlib.asynccontextmanager
async def embedded_stack(
    data_dir: Path,
    model_repository: Path = Path("models"),
    log_level: str = "warning",
    mrd_port: int | None = None,
) -> AsyncIterator[EmbeddedStack]:
    """Start the three services in this process (lifespans included) and stop them on exit; with
    ``mrd_port`` (0: any free port) the gateway's MRD streaming server listens on loopback too."""
    data_dir.mkdir(parents=True, exist_ok=True)
    queue = MemoryJobQueue()
    sampler_app = create_sampler(SamplerSettings(model_repository=model_repository))
    recon_app = create_recon(
        ReconSettings(blob_dir=data_dir / "blobs", model_repository=model_repository), queue=queue
    )
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(sampler_app.router.lifespan_context(sampler_app))
        await stack.enter_async_context(recon_app.router.lifespan_context(recon_app))
        sampler_client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=sampler_app), base_url="http://sampler")
        )
        gateway_app = create_gateway(
            # One process, one terminal: request logs would drown the demo's table.
            GatewaySettings(
                data_dir=data_dir,
                sampler_url="http://sampler",
                log_level=log_level,
                mrd_port=mrd_port,
                model_repository=model_repository,  # fixed-mask bundles as scan fallbacks
            ),
            sampler_client=sampler_client,
            queue=queue,
        )
        await stack.enter_async_context(gateway_app.router.lifespan_context(gateway_app))
        gateway = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gateway_app), base_url="http://gateway", timeout=120.0
            )
        )
        server = gateway_app.state.mrd_server
        yield EmbeddedStack(
            gateway, gateway_app, sampler_app, recon_app, queue, server.port if server is not None else None
        )
