"""The bounds and outputs of one MRD session, from the gateway's ``mrd_*`` and ``dicom_*`` settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kadapt.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class SessionOptions:
    """Per-connection bounds and the DICOM output (from the ``mrd_*`` and ``dicom_*`` settings)."""

    max_message_bytes: int = 64 * 1024 * 1024
    batch_readouts: int = 64
    flush_s: float = 0.005
    idle_timeout_s: float = 300.0
    write_timeout_s: float = 60.0
    recon_timeout_s: float = 600.0
    read_chunk_bytes: int = 1 << 20
    linger_s: float = 2.0
    dicom_dir: Path | None = None
    dicom_deidentify: bool = False

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> SessionOptions:
        return cls(
            max_message_bytes=settings.mrd_max_message_bytes,
            batch_readouts=settings.mrd_batch_readouts,
            flush_s=settings.mrd_flush_ms / 1000.0,
            idle_timeout_s=settings.mrd_idle_timeout_s,
            write_timeout_s=settings.mrd_write_timeout_s,
            recon_timeout_s=settings.mrd_recon_timeout_s,
            dicom_dir=settings.mrd_dicom_dir,
            dicom_deidentify=settings.dicom_deidentify,
        )
