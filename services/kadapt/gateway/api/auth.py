"""The gateway's bearer-token guard: a thin FastAPI dependency over :class:`kadapt.auth.AuthGate`.

Route scopes (``docs/security.md``): creating, ingesting into, planning, completing and deleting scans
need ``scanner``; reading scans, plans' masks and images needs ``viewer``; ``/healthz``, ``/readyz`` and
``/metrics`` stay open (orchestrators probe and scrape them). The dependency is ``async def`` (a plain
``def`` costs a worker-thread hop per request) and runs before any route reads its body or touches a
session: no gateway route declares a body parameter (FastAPI would read it before the dependencies).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Request

from kadapt.auth import AuthGate, Principal, Scope
from kadapt.gateway.settings import GatewaySettings

log = structlog.get_logger("kadapt.gateway")


def install_auth(app: FastAPI, settings: GatewaySettings) -> AuthGate | None:
    """Build the gate from ``settings`` into ``app.state.auth``; without tokens, warn loudly."""
    gate = settings.auth_gate()
    app.state.auth = gate
    if gate is None:
        log.warning(
            "auth_disabled",
            detail="no bearer tokens configured (KADAPT_GATEWAY_AUTH_TOKENS_FILE / _AUTH_TOKENS): "
            "every /v1 route is open to anyone who can reach this port",
        )
    else:
        log.info("auth_enabled", clients=gate.store.clients(), rate_limit_per_s=settings.rate_limit_per_s)
    return gate


def _guard(scope: Scope) -> Callable[[Request], Awaitable[Principal | None]]:
    async def admit(request: Request) -> Principal | None:
        gate: AuthGate | None = request.app.state.auth
        if gate is None:
            return None
        principal = gate.admit(request.headers.get("authorization"), scope)
        request.state.client_id = principal.client_id  # for the access log line
        return principal

    admit.__name__ = f"require_{scope.value}"
    return admit


Scanner: Any = Depends(_guard(Scope.scanner))
Viewer: Any = Depends(_guard(Scope.viewer))
