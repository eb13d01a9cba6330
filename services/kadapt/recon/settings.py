"""Recon service settings from the environment (prefix ``KADAPT_RECON_``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kadapt.auth import AuthSettings
from kadapt.jobs.redis_queue import DEFAULT_DEAD_STREAM, DEFAULT_GROUP, DEFAULT_RESULT_PREFIX, DEFAULT_STREAM


def default_consumer() -> str:
    """``<hostname>-<pid>``: unique per worker process, stable for its life (the consumer-group name)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ReconSettings(BaseSettings, AuthSettings):
    """Configuration of one recon process.

    Without ``redis_url`` (and without a queue handed to ``create_app``) jobs live in an in-memory queue
    (the embedded default). ``blob_dir`` is the shared volume the gateway writes k-space and masks to
    (the gateway's ``<data_dir>/blobs``); images go there too. ``workers`` consumers run in this process,
    named ``<consumer>-<i>`` when there is more than one. With ``auth_tokens_file`` / ``auth_tokens``
    listing tokens, every ``/v1`` route needs a bearer token (``docs/security.md``).
    """

    model_config = SettingsConfigDict(env_prefix="KADAPT_RECON_", extra="ignore")

    redis_url: str | None = None
    blob_dir: Path = Path("kadapt-data/blobs")
    consumer: str = Field(default_factory=default_consumer, min_length=1)
    workers: int = Field(default=1, ge=1, le=64)
    max_deliveries: int = Field(default=3, ge=1)
    claim_idle_ms: int = Field(
        default=30_000, ge=0, description="pending this long -> another worker takes it"
    )
    block_ms: int = Field(default=1000, ge=0, description="how long one claim waits for new jobs")
    shutdown_grace_s: float = Field(default=10.0, ge=0.0, description="time a running job gets at shutdown")
    model_repository: Path = Path("models")
    coil_maps: Literal["auto", "espirit", "acs"] = Field(
        default="auto",
        description="coil maps of cg-sense / l1-wavelet: auto = ESPIRiT with >= 16 ACS lines, else ACS maps; "
        "acs is ~10x faster (ESPIRiT dominates)",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="ONNX Runtime execution providers for learned bundles, in priority order",
    )
    strict_providers: bool = Field(
        default=True,
        description="readiness fails when a requested provider is not in use (a silent fallback)",
    )
    bundles: list[str] = Field(
        default_factory=list,
        description="bundles to serve, 'name' (latest) or 'name/version'; empty = every unet / modl / "
        "vsharp bundle in model_repository (failures of those are listed but do not block readiness)",
    )
    inference_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime intra-op threads per session (0 = its default)"
    )
    stream: str = DEFAULT_STREAM
    group: str = DEFAULT_GROUP
    dead_stream: str = DEFAULT_DEAD_STREAM
    result_prefix: str = DEFAULT_RESULT_PREFIX
