"""The sampler's bearer-token guard: a thin FastAPI dependency over :class:`kadapt.auth.AuthGate`.

``POST /v1/plan`` needs ``scanner`` (the gateway sends ``KADAPT_GATEWAY_SAMPLER_TOKEN``), ``GET
/v1/policies`` needs ``viewer``; ``/healthz``, ``/readyz`` and ``/metrics`` stay open. The dependency is
``async def``: a plain ``def`` dependency costs a worker-thread hop on the 5 ms plan path. It runs before
the plan body is read (the route reads it itself, after its dependencies).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request

from kadapt.auth import AuthGate, Principal, Scope
from kadapt.sampler.settings import SamplerSettings

logger = logging.getLogger("kadapt.sampler")


def install_auth(app: FastAPI, settings: SamplerSettings) -> AuthGate | None:
    """Build the gate from ``settings`` into ``app.state.auth``; without tokens, warn loudly."""
    gate = settings.auth_gate()
    app.state.auth = gate
    if gate is None:
        logger.warning(
            "AUTHENTICATION DISABLED: no bearer tokens configured (KADAPT_SAMPLER_AUTH_TOKENS_FILE / "
            "_AUTH_TOKENS); every /v1 route is open to anyone who can reach this port"
        )
    else:
        logger.info("bearer-token auth on for clients %s", ", ".join(gate.store.clients()))
    return gate


def _guard(scope: Scope) -> Callable[[Request], Awaitable[Principal | None]]:
    async def admit(request: Request) -> Principal | None:
        gate: AuthGate | None = request.app.state.auth
        return None if gate is None else gate.admit(request.headers.get("authorization"), scope)

    admit.__name__ = f"require_{scope.value}"
    return admit


Scanner: Any = Depends(_guard(Scope.scanner))
Viewer: Any = Depends(_guard(Scope.viewer))
