"""Bearer-token authentication for the kadapt services, framework-free (``docs/security.md``).

``tokens`` (scopes, principals, the hashed tokens file, :func:`mint_token`), ``ratelimit`` (per-client
token buckets) and ``gate`` (the admission check a service's FastAPI dependency calls).
"""

from kadapt.auth.gate import AUTH_RESPONSES, AuthGate, AuthSettings, auth_state, build_gate
from kadapt.auth.ratelimit import RateLimiter
from kadapt.auth.tokens import (
    Principal,
    Scope,
    TokenStore,
    mint_token,
    parse_scopes,
    require,
    token_digest,
)

__all__ = [
    "AUTH_RESPONSES",
    "AuthGate",
    "AuthSettings",
    "Principal",
    "RateLimiter",
    "Scope",
    "TokenStore",
    "auth_state",
    "build_gate",
    "mint_token",
    "parse_scopes",
    "require",
    "token_digest",
]
