"""Sampler settings from the environment (prefix ``KADAPT_SAMPLER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kadapt.auth import AuthSettings


class SamplerSettings(BaseSettings, AuthSettings):
    """``model_repository``: the bundle repository (``<name>/<version>/manifest.json``);
    ``max_inflight``: plans computing at once (the rest queue until their deadline); ``max_queued``: plans
    waiting for a slot before more are refused at once (503 ``overloaded``, back-pressure);
    ``warmup``: run one plan per policy before reporting ready;
    ``ort_threads``: ONNX Runtime intra-op threads per ``mnet`` session;
    ``fallback_margin_ms``: time kept before a deadline to serve a model policy's fallback instead;
    ``mnet_fallback``: the 1d mask family an ``mnet`` bundle falls back to when its manifest names none;
    ``max_body_bytes``: the largest plan body accepted (413 above; 64 MiB holds a 640-line, 32-coil,
    32-ACS block many times over);
    ``auth_tokens_file`` / ``auth_tokens``: bearer tokens for ``/v1`` (none: auth off, ``docs/security.md``);
    ``rate_limit_per_s`` / ``rate_limit_burst``: the per-client token bucket."""

    model_config = SettingsConfigDict(env_prefix="KADAPT_SAMPLER_", extra="ignore")

    model_repository: Path = Path("models")
    max_inflight: int = Field(default=8, ge=1, le=1024)
    max_queued: int = Field(default=64, ge=0, description="plans waiting for a slot; more get 503 overloaded")
    warmup: bool = True
    ort_threads: int = Field(default=1, ge=1, le=64)
    fallback_margin_ms: float = Field(default=2.0, ge=0.0, le=10_000.0)
    mnet_fallback: str = "vd-random"
    max_body_bytes: int = Field(default=64 << 20, ge=1024)
