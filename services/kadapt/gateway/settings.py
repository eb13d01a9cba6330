"""Gateway settings from the environment (prefix ``KADAPT_GATEWAY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Configuration of one gateway process.

    ``data_dir`` holds ``scans/<scan_id>/`` (the per-scan k-space memmap, noise readouts) and ``blobs/``
    (k-space, masks and images exchanged with the recon workers by path + sha256; share it with them).
    Without ``redis_url`` sessions and jobs live in this process's memory (the embedded default).
    """

    model_config = SettingsConfigDict(env_prefix="KADAPT_GATEWAY_", extra="ignore")

    redis_url: str | None = None
    sampler_url: str = "http://127.0.0.1:8001"
    data_dir: Path = Path("kadapt-data")
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_scan_bytes: int = Field(
        default=8 * 1024**3, gt=0, description="largest per-scan k-space file a header may ask for"
    )
    sampler_margin_ms: float = Field(
        default=2.0, ge=0.0, description="safety margin kept from the plan deadline for the fallback"
    )
    sampler_margin_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    sampler_pool_size: int = Field(default=32, gt=0)
    offload_bytes: int = Field(
        default=256 * 1024, ge=0, description="ingest bodies above this decode in a worker thread"
    )
    log_json: bool = True
    log_level: str = "info"

    @property
    def scans_dir(self) -> Path:
        return self.data_dir / "scans"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"
