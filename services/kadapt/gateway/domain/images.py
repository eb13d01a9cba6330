"""Image encodings the gateway serves: ``.npy``, 8-bit PNG previews, MRD IMAGE streams and DICOM.

The magnitude volume is float32 ``(slice, frame, H, W)`` as the recon stores it. The PNG writer is a
few lines of zlib (greyscale, 8 bits, one IDAT chunk) so the gateway needs no imaging library. DICOM
comes from the core (:mod:`kadapt.dicom`): one MR image per (slice, frame) in a ZIP archive, or a
single ``application/dicom`` file when one slice is asked for.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from kadapt.dicom import DICOM_MEDIA_TYPE, dicom_bytes, dicom_datasets, dicom_file_name
from kadapt.errors import EncodeOutOfRangeError, InvalidInputError
from kadapt.mrd.stream import encode_message, make_image_messages
from kadapt.schemas import ScanPolicy

NPY_MEDIA_TYPE = "application/x-npy"
PNG_MEDIA_TYPE = "image/png"
MRD_MEDIA_TYPE = "application/vnd.ismrmrd.stream"
ZIP_MEDIA_TYPE = "application/zip"
IMAGE_FORMATS = ("npy", "png", "mrd", "dicom")


@dataclass(frozen=True, slots=True)
class DicomOptions:
    """What a DICOM export needs beside the pixels: the scan's MRD XML header, the series description,
    de-identification, and strings mixed into the derived series UID (the scan id)."""

    header_xml: str
    series_description: str
    deidentify: bool = False
    uid_entropy: tuple[str, ...] = ()


def describe_series(policy: ScanPolicy, recon_method_used: str | None = None) -> str:
    """Series Description of a scan's images: ``kadapt <sampler> R<R> <recon>`` (no header text, so it
    survives de-identification)."""
    return f"kadapt {policy.sampler} R{policy.acceleration:g} {recon_method_used or policy.recon}"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_npy(array: NDArray[np.generic]) -> bytes:
    """Any array -> ``.npy`` bytes (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def window_to_uint8(image: NDArray[np.floating], percentile: float = 99.5) -> NDArray[np.uint8]:
    """Magnitude ``(H, W)`` -> 8-bit ``(H, W)``, windowed to ``[0, percentile]`` so a few bright voxels
    (vessels, fat, artefacts) do not darken the whole preview."""
    finite = np.nan_to_num(np.abs(image.astype(np.float32)), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.percentile(finite, percentile)) if finite.size else 0.0
    if top <= 0.0:
        return np.zeros(finite.shape, dtype=np.uint8)
    scaled = np.clip(finite / top, 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(pixels: NDArray[np.uint8]) -> bytes:
    """8-bit greyscale ``(H, W)`` -> PNG bytes (rows top to bottom, filter type 0 on every row)."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise InvalidInputError(f"PNG pixels must be uint8 (H, W), got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), pixels], axis=1)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def select_image(magnitude: NDArray[np.floating], slice_index: int, frame: int) -> NDArray[np.floating]:
    """Image ``(H, W)`` of ``magnitude`` ``(slice, frame, H, W)``; :class:`EncodeOutOfRangeError` naming
    the index outside the volume."""
    slices, frames = magnitude.shape[0], magnitude.shape[1]
    if not 0 <= slice_index < slices:
        raise EncodeOutOfRangeError(f"slice={slice_index} outside [0, {slices})")
    if not 0 <= frame < frames:
        raise EncodeOutOfRangeError(f"frame={frame} outside [0, {frames})")
    image: NDArray[np.floating] = magnitude[slice_index, frame]
    return image


def encode_dicom(
    volume: NDArray[np.floating], options: DicomOptions, *, slice_index: int | None, frame: int | None
) -> tuple[bytes, str]:
    """DICOM of ``volume`` ``(slice, frame, H, W)``: with ``slice_index`` the one image
    ``(slice_index, frame or 0)`` as ``application/dicom``; without, a ZIP of one
    ``slice<sss>_frame<fff>.dcm`` per (slice, frame) — only frame ``frame`` when given. The scaling and
    series UIDs are those of the whole series either way."""
    slices, frames = volume.shape[0], volume.shape[1]
    if slice_index is not None:
        select_image(volume, slice_index, frame or 0)  # names the index outside the volume
        wanted = [(slice_index, frame or 0)]
    else:
        if frame is not None:
            select_image(volume, 0, frame)
        wanted = [(s, f) for s in range(slices) for f in range(frames) if frame is None or f == frame]
    datasets = dicom_datasets(
        volume,
        options.header_xml,
        series_description=options.series_description,
        deidentify=options.deidentify,
        uid_entropy=options.uid_entropy,
        only=wanted,
    )
    if slice_index is not None:
        return dicom_bytes(datasets[0]), DICOM_MEDIA_TYPE
    buffer = io.BytesIO()
    # Level 1: most of the gain of deflate on 16-bit magnitude images at a fraction of the time.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for (s, f), dataset in zip(wanted, datasets, strict=True):
            archive.writestr(dicom_file_name(s, f), dicom_bytes(dataset))
    return buffer.getvalue(), ZIP_MEDIA_TYPE


def encode_images(
    magnitude: NDArray[np.floating],
    image_format: str,
    *,
    slice_index: int | None = None,
    frame: int | None = None,
    field_of_view_mm: tuple[float, float, float] = (256.0, 256.0, 5.0),
    dicom: DicomOptions | None = None,
) -> tuple[bytes, str]:
    """Encode the magnitude volume ``(slice, frame, H, W)``: returns ``(body, media type)``.

    ``npy``: the float32 volume; ``png``: one image ``(slice_index, frame)`` (0 when not given) windowed
    to the 99.5th percentile; ``mrd``: a stream of IMAGE messages, one per (slice, frame), with
    ``field_of_view_mm`` (readout, phase, slice thickness) from the header's recon space; ``dicom``:
    :func:`encode_dicom` with ``dicom`` (required: the header and the series description).
    """
    volume = np.asarray(magnitude, dtype=np.float32)
    if volume.ndim != 4:
        raise InvalidInputError(f"images must be (slice, frame, H, W), got shape {volume.shape}")
    if image_format == "npy":
        return encode_npy(volume), NPY_MEDIA_TYPE
    if image_format == "png":
        image = select_image(volume, slice_index or 0, frame or 0)
        return encode_png(window_to_uint8(image)), PNG_MEDIA_TYPE
    if image_format == "mrd":
        messages = make_image_messages(volume, field_of_view=field_of_view_mm)
        return b"".join(encode_message(message) for message in messages), MRD_MEDIA_TYPE
    if image_format == "dicom":
        if dicom is None:
            raise InvalidInputError("image format 'dicom' needs the scan's MRD header (DicomOptions)")
        return encode_dicom(volume, dicom, slice_index=slice_index, frame=frame)
    raise InvalidInputError(f"image format {image_format!r} is not one of {', '.join(IMAGE_FORMATS)}")
