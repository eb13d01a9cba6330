"""Gateway settings from the environment (prefix ``KADAPT_GATEWAY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kadapt.auth import AuthSettings


class GatewaySettings(BaseSettings, AuthSettings):
    """Configuration of one gateway process.

    ``data_dir`` holds ``scans/<scan_id>/`` (the per-scan k-space memmap, noise readouts) and ``blobs/``
    (k-space, masks and images exchanged with the recon workers by path + sha256; share it with them).
    Without ``redis_url`` sessions and jobs live in this process's memory (the embedded default).
    With ``mrd_port`` set the gateway also serves the MRD streaming protocol on TCP (``docs/mrd.md``;
    0 picks a free port); the ``mrd_*`` limits bound each connection's memory and time.
    With ``auth_tokens_file`` / ``auth_tokens`` listing tokens, every ``/v1`` route needs a bearer token
    (``docs/security.md``); ``sampler_token`` authenticates the gateway to a sampler that requires one.
    ``model_repository`` holds the ``fixed-mask`` bundles a scan may name as its fallback (only those are
    read, numpy only; ``domain/fallbacks.py``); empty or None: the fallback is a mask family.
    """

    model_config = SettingsConfigDict(env_prefix="KADAPT_GATEWAY_", extra="ignore")

    redis_url: str | None = None
    sampler_url: str = "http://127.0.0.1:8001"
    model_repository: Path | None = Field(
        default=Path("models"),
        description="fixed-mask bundles a scan's `policy.fallback` may name (`name` or `name/version`), "
        "read at scan creation; the sampler's repository. Empty: mask families only",
    )
    data_dir: Path = Path("kadapt-data")
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_scan_bytes: int = Field(
        default=8 * 1024**3, gt=0, description="largest per-scan k-space file a header may ask for"
    )
    sampler_margin_ms: float = Field(
        default=2.0,
        ge=0.0,
        description="least margin kept from the plan deadline for recording and answering",
    )
    sampler_margin_fraction: float = Field(default=0.3, ge=0.0, lt=1.0)
    sampler_pool_size: int = Field(default=32, gt=0)
    offload_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        description="ingest bodies above this decode in a worker thread (file writes always run in one)",
    )
    dicom_deidentify: bool = Field(
        default=False, description="default of the images endpoint's deidentify query for format=dicom"
    )
    sampler_token: SecretStr | None = Field(
        default=None, description="bearer token sent to the sampler (a scanner-scope token)"
    )
    log_json: bool = True
    log_level: str = "info"
    mrd_port: int | None = Field(
        default=None, ge=0, le=65535, description="MRD streaming TCP port (9002 by convention); unset: off"
    )
    mrd_host: str = Field(default="127.0.0.1", description="MRD bind address (0.0.0.0 for a scanner network)")
    mrd_max_connections: int = Field(
        default=16, gt=0, description="concurrent MRD sessions; more are refused"
    )
    mrd_max_message_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="largest single MRD message a client may declare"
    )
    mrd_batch_readouts: int = Field(
        default=64, gt=0, description="readouts forwarded to ingest at once (the per-connection bound)"
    )
    mrd_flush_ms: float = Field(
        default=5.0, ge=0.0, description="a partial batch is ingested after this long without new bytes"
    )
    mrd_idle_timeout_s: float = Field(default=300.0, gt=0.0, description="a silent session is closed")
    mrd_write_timeout_s: float = Field(default=60.0, gt=0.0, description="a client not reading is dropped")
    mrd_recon_timeout_s: float = Field(default=600.0, gt=0.0, description="wait for images after CLOSE")
    mrd_dicom_dir: Path | None = Field(
        default=None, description="MRD sessions with dicom=on write <dir>/<scan_id>/*.dcm; unset: refused"
    )

    @field_validator("model_repository", mode="before")
    @classmethod
    def _empty_repository_is_none(cls, value: object) -> object:
        """``KADAPT_GATEWAY_MODEL_REPOSITORY=`` (empty) turns bundle fallbacks off, as None does."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def scans_dir(self) -> Path:
        return self.data_dir / "scans"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"
