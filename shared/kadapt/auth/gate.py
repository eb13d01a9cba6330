"""The admission check every protected route runs, framework-free: authenticate, rate-limit, authorise.

Each service builds one :class:`AuthGate` from its settings (:func:`build_gate`; ``None`` when no token
is configured, i.e. authentication is off) and its thin FastAPI dependency calls :meth:`AuthGate.admit`
before the route reads its body or touches a session. :data:`AUTH_RESPONSES` documents the three
refusals in OpenAPI for every protected route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from kadapt.auth.ratelimit import RateLimiter
from kadapt.auth.tokens import Principal, Scope, TokenStore, require
from kadapt.problems import PROBLEM_MEDIA_TYPE


class AuthGate:
    """A token store plus the per-client rate limiter."""

    def __init__(self, store: TokenStore, limiter: RateLimiter | None = None) -> None:
        self.store = store
        self.limiter = limiter

    def admit(self, authorization: str | None, scope: Scope) -> Principal:
        """The request's principal if its token is valid (else 401), the client is within its rate (else
        429) and it holds ``scope`` (else 403). Rate limiting comes before the scope check so that a
        client hammering a route it may not use is slowed down too."""
        principal = self.store.authenticate(authorization)
        if self.limiter is not None:
            self.limiter.check(principal.client_id)
        require(principal, scope)
        return principal


def build_gate(
    tokens_file: Path | None, tokens: str | None, *, rate_per_s: float, burst: float
) -> AuthGate | None:
    """The gate of a service's settings, or ``None`` (authentication off) when neither the file nor the
    text lists a token. A bad tokens file raises ``InvalidInputError`` naming the line: the service must
    not start half-protected."""
    store = TokenStore.from_sources(tokens_file, tokens)
    if len(store) == 0:
        return None
    return AuthGate(store, RateLimiter(rate_per_s, burst))


class AuthSettings(BaseModel):
    """The authentication fields every service's settings inherit (env ``KADAPT_<SVC>_AUTH_TOKENS_FILE``,
    ``_AUTH_TOKENS``, ``_RATE_LIMIT_PER_S``, ``_RATE_LIMIT_BURST``; ``docs/security.md``)."""

    auth_tokens_file: Path | None = Field(
        default=None, description="tokens file (client_id:scopes:sha256 lines, docs/security.md)"
    )
    auth_tokens: str | None = Field(
        default=None, description="tokens-file lines in one variable (newline- or ';'-separated)"
    )
    rate_limit_per_s: float = Field(default=2000.0, ge=0.0, description="requests/s per client; 0 = off")
    rate_limit_burst: float = Field(default=4000.0, ge=1.0, description="token-bucket size per client")

    def auth_gate(self) -> AuthGate | None:
        """:func:`build_gate` of these settings."""
        return build_gate(
            self.auth_tokens_file,
            self.auth_tokens,
            rate_per_s=self.rate_limit_per_s,
            burst=self.rate_limit_burst,
        )


def auth_state(gate: AuthGate | None) -> Literal["enabled", "disabled"]:
    """``enabled`` or ``disabled``, as ``/readyz`` shows it."""
    return "disabled" if gate is None else "enabled"


def _problem(description: str, header: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {header: {"schema": {"type": "string"}}},
        "content": {PROBLEM_MEDIA_TYPE: {}},
    }


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem("No, malformed or unknown bearer token (unauthenticated)", "WWW-Authenticate"),
    403: _problem("The token lacks the route's scope (forbidden)", "WWW-Authenticate"),
    429: _problem("The client is over its request rate (rate-limited)", "Retry-After"),
}
