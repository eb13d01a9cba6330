"""The model-bundle manifest: what a bundle is, what it accepts, and the sha256 of every file.

A bundle lives at ``<repository>/<name>/<version>/`` (Triton's model-repository layout) and holds
``manifest.json`` plus its files (``model.onnx``, ``model.pt``, ``mask.npy``, ...). The manifest is a
strict pydantic model: unknown keys are rejected and nothing is coerced, so a manifest written by a newer
trainer with fields this code does not know fails loudly instead of being half-understood.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_validator

SCHEMA_VERSION: Literal[1] = 1
"""The manifest schema this code reads and writes."""

MANIFEST_FILENAME = "manifest.json"

BundleKind = Literal["mnet", "ads", "fixed-mask", "modl", "vsharp", "unet", "smp"]
"""Samplers: ``mnet`` (single pass), ``ads`` (cascade), ``fixed-mask`` (a population mask ``mask.npy``);
reconstructors: ``modl``, ``vsharp``, ``unet``; ``smp`` a downstream segmentation model."""

# Names and versions become directory names: keep them path-safe and free of separators.
BUNDLE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
BUNDLE_VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z._-]*$"
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_CHUNK_BYTES = 1 << 20


class _StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class TensorSpec(_StrictModel):
    """One model input or output. ``shape`` mixes fixed sizes and symbolic dims, e.g.
    ``("batch", 2, 320, 320)``; ``dtype`` is a numpy dtype name (``float32``, ``complex64``, ``bool``)."""

    name: str = Field(min_length=1)
    shape: tuple[int | str, ...]
    dtype: str = Field(min_length=1)


class BundleGeometry(_StrictModel):
    """The matrix a bundle accepts, fastMRI layout ``(frame, coil, H, W)``.

    ``ky`` is the number of phase-encode lines W; ``kx`` the readout length H, ``coils`` the coil count
    and ``frames`` the frame count, each ``None`` when the bundle accepts any (coil-agnostic etc.).
    """

    ky: int = Field(gt=0)
    kx: int | None = Field(default=None, gt=0)
    coils: int | None = Field(default=None, gt=0)
    frames: int | None = Field(default=None, gt=0)


class Manifest(_StrictModel):
    """``manifest.json`` of one bundle (architecture.md section 6).

    ``files`` maps every file of the bundle (plain file names, no directories, never the manifest
    itself) to its lowercase hex sha256; :func:`kadapt.bundles.write_bundle` fills it in and
    :func:`kadapt.bundles.load_bundle` verifies it. ``accelerations`` are the R values the bundle accepts
    (R = W / acquired lines, ACS included), ``num_acs`` the ACS block it was trained with.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=BUNDLE_NAME_PATTERN, max_length=128)
    version: str = Field(pattern=BUNDLE_VERSION_PATTERN, max_length=64)
    kind: BundleKind
    geometry: BundleGeometry
    accelerations: tuple[float, ...] = Field(min_length=1)
    num_acs: int = Field(ge=1)
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    normalisation: str = "none"
    opset: int | None = Field(default=None, ge=1)
    files: dict[str, str] = Field(default_factory=dict)
    training: dict[str, JsonValue] = Field(default_factory=dict)
    validation: dict[str, JsonValue] = Field(default_factory=dict)
    code_version: str = Field(min_length=1)
    created: AwareDatetime

    @field_validator("accelerations")
    @classmethod
    def _accelerations_above_one(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [r for r in value if not r > 1.0]
        if bad:
            raise ValueError(f"accelerations must be > 1, got {bad}")
        return value

    @field_validator("files")
    @classmethod
    def _plain_names_and_digests(cls, value: dict[str, str]) -> dict[str, str]:
        for filename, digest in value.items():
            check_bundle_filename(filename)
            if not _SHA256_PATTERN.match(digest):
                raise ValueError(f"file {filename!r}: {digest!r} is not a lowercase hex sha256")
        return value

    @property
    def ref(self) -> str:
        """``name/version``, how logs, metrics and readiness reports name this bundle."""
        return f"{self.name}/{self.version}"


def check_bundle_filename(filename: str) -> str:
    """Return ``filename`` if it is a plain file name a bundle may hold, else raise ``ValueError``
    (path separators, ``.``/``..``, hidden files and the manifest itself are refused)."""
    if (
        not filename
        or filename in {".", "..", MANIFEST_FILENAME}
        or filename.startswith(".")
        or "/" in filename
        or "\\" in filename
    ):
        raise ValueError(f"{filename!r} is not a plain bundle file name")
    return filename


def sha256_bytes(data: bytes) -> str:
    """Lowercase hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Lowercase hex sha256 of the file at ``path``, read in 1 MiB chunks (model files can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def natural_version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders versions naturally: ``2 < 10``, ``1.9 < 1.10``, ``1a < 1b``.

    Digit runs compare as numbers and rank above text runs, so ``"10" > "9"`` and ``"2" > "1-rc"``.
    """
    parts = re.findall(r"\d+|\D+", version)
    return tuple((1, int(part)) if part.isdigit() else (0, part) for part in parts)


def utc_now() -> datetime:
    """The ``created`` timestamp for a new manifest (timezone-aware UTC)."""
    return datetime.now(timezone.utc)
