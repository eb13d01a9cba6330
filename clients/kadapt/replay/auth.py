"""The replay client's credentials: a bearer token (``--token`` or ``KADAPT_TOKEN``) on every request."""

from __future__ import annotations

import os

import httpx

TOKEN_ENV = "KADAPT_TOKEN"


def bearer_headers(token: str | None) -> dict[str, str]:
    """``Authorization: Bearer <token>``, or nothing without a token (a gateway with auth off)."""
    return {"authorization": f"Bearer {token}"} if token else {}


def gateway_client(base_url: str, *, token: str | None = None, timeout_s: float = 600.0) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on the gateway sending ``token`` (default: ``$KADAPT_TOKEN``) with every
    request; :func:`kadapt.replay.run.replay_files` and ``replay_scan`` take it as their client."""
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    return httpx.AsyncClient(base_url=base_url, timeout=timeout_s, headers=bearer_headers(token))
