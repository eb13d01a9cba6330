"""Image encodings the gateway serves: ``.npy``, 8-bit PNG previews and MRD IMAGE streams.

The magnitude volume is float32 ``(slice, frame, H, W)`` as the recon stores it. The PNG writer is a
few lines of zlib (greyscale, 8 bits, one IDAT chunk) so the gateway needs no imaging library.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import EncodeOutOfRangeError, InvalidInputError
from kadapt.mrd.stream import encode_message, make_image_messages

NPY_MEDIA_TYPE = "application/x-npy"
PNG_MEDIA_TYPE = "image/png"
MRD_MEDIA_TYPE = "application/vnd.ismrmrd.stream"
IMAGE_FORMATS = ("npy", "png", "mrd")

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


def encode_images(
    magnitude: NDArray[np.floating],
    image_format: str,
    *,
    slice_index: int = 0,
    frame: int = 0,
    field_of_view_mm: tuple[float, float, float] = (256.0, 256.0, 5.0),
) -> tuple[bytes, str]:
    """Encode the magnitude volume ``(slice, frame, H, W)``: returns ``(body, media type)``.

    ``npy``: the float32 volume; ``png``: one image ``(slice_index, frame)`` windowed to the 99.5th
    percentile; ``mrd``: a stream of IMAGE messages, one per (slice, frame), with ``field_of_view_mm``
    (readout, phase, slice thickness) from the header's recon space.
    """
    volume = np.asarray(magnitude, dtype=np.float32)
    if volume.ndim != 4:
        raise InvalidInputError(f"images must be (slice, frame, H, W), got shape {volume.shape}")
    if image_format == "npy":
        return encode_npy(volume), NPY_MEDIA_TYPE
    if image_format == "png":
        return encode_png(window_to_uint8(select_image(volume, slice_index, frame))), PNG_MEDIA_TYPE
    if image_format == "mrd":
        messages = make_image_messages(volume, field_of_view=field_of_view_mm)
        return b"".join(encode_message(message) for message in messages), MRD_MEDIA_TYPE
    raise InvalidInputError(f"image format {image_format!r} is not one of {', '.join(IMAGE_FORMATS)}")
