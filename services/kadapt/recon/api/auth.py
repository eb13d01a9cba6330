"""The recon service's bearer-token guard: a thin FastAPI dependency over :class:`kadapt.auth.AuthGate`.

``POST /v1/jobs`` needs ``admin`` (it enqueues arbitrary blob paths: an operator's tool; the gateway
enqueues through the queue, not this route); ``GET /v1/methods``, ``/v1/models`` and ``/v1/jobs/{id}``
need ``viewer``; ``/healthz``, ``/readyz`` and ``/metrics`` stay open. The dependency is ``async def``
and is declared before the job-body dependency, so a refused request's body is never read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request

from kadapt.auth import AuthGate, Principal, Scope
from kadapt.recon.settings import ReconSettings

logger = logging.getLogger("kadapt.recon")


def install_auth(app: FastAPI, settings: ReconSettings) -> AuthGate | None:
    """Build the gate from ``settings`` into ``app.state.auth``; without tokens, warn loudly."""
    gate = settings.auth_gate()
    app.state.auth = gate
    if gate is None:
        logger.warning(
            "AUTHENTICATION DISABLED: no bearer tokens configured (KADAPT_RECON_AUTH_TOKENS_FILE / "
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


Admin: Any = Depends(_guard(Scope.admin))
Viewer: Any = Depends(_guard(Scope.viewer))
