"""Builders for MRD messages: acquisition headers (one or many at once) and magnitude images.

Defaults follow what ISMRMRD writers put in a header (version 1, unit read/phase/slice directions, the
channel mask of the active coils, a centred echo) so that Gadgetron and python-ismrmrd-server accept the
result without further fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kadapt.errors import EncodeOutOfRangeError, GeometryMismatchError, InvalidInputError, NonFiniteDataError
from kadapt.mrd.constants import (
    ACQ_HEADER_DTYPE,
    CHANNEL_MASKS,
    IMAGE_HEADER_DTYPE,
    IMAGE_PIXEL_DTYPES,
    WAVEFORM_HEADER_DTYPE,
    AcquisitionFlag,
    ImageDataType,
    ImageType,
    flag_mask,
)
from kadapt.mrd.messages import Acquisition, Image, MetaValue, Waveform, serialize_meta

Vector3 = tuple[float, float, float]
_UINT16_MAX = 0xFFFF
# USHORT images use 12 bits, the range DICOM viewers and scanner consoles expect.
USHORT_MAX = 4095


def channel_mask(coils: int) -> NDArray[np.uint64]:
    """The 16-word ``channel_mask`` with channels ``0 .. coils - 1`` active; channel c is bit c % 64 of word
    c // 64."""
    if not 0 <= coils <= 64 * CHANNEL_MASKS:
        raise GeometryMismatchError(f"coils={coils} outside 0..{64 * CHANNEL_MASKS}")
    words = np.zeros(CHANNEL_MASKS, dtype=np.uint64)
    full, rest = divmod(coils, 64)
    words[:full] = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    if rest:
        words[full] = np.uint64((1 << rest) - 1)
    return words


def _check_uint16(name: str, values: ArrayLike) -> None:
    array = np.asarray(values)
    if array.size and (array.min() < 0 or array.max() > _UINT16_MAX):
        bad = array.min() if array.min() < 0 else array.max()
        raise EncodeOutOfRangeError(
            f"{name}={int(bad)} does not fit the MRD uint16 counter (0..{_UINT16_MAX})"
        )


def make_acquisition_heads(
    count: int,
    *,
    coils: int,
    samples: int,
    trajectory_dimensions: int = 0,
    center_sample: int | None = None,
    sample_time_us: float = 5.0,
) -> NDArray[np.void]:
    """``count`` acquisition headers ``(count,)`` of ``ACQ_HEADER_DTYPE`` with the shared defaults filled.

    ``center_sample`` defaults to ``samples // 2`` (a centred echo). Encoding counters, flags and
    scan counters are left at zero for the caller to set column-wise.
    """
    _check_uint16("samples", samples)
    _check_uint16("coils", coils)
    heads = np.zeros(count, dtype=ACQ_HEADER_DTYPE)
    heads["version"] = 1
    heads["number_of_samples"] = samples
    heads["available_channels"] = coils
    heads["active_channels"] = coils
    heads["channel_mask"] = channel_mask(coils)
    heads["center_sample"] = samples // 2 if center_sample is None else center_sample
    heads["trajectory_dimensions"] = trajectory_dimensions
    heads["sample_time_us"] = sample_time_us
    heads["read_dir"] = (1.0, 0.0, 0.0)
    heads["phase_dir"] = (0.0, 1.0, 0.0)
    heads["slice_dir"] = (0.0, 0.0, 1.0)
    return heads


def make_acquisition(
    ky: int,
    data: ArrayLike,
    *,
    slice: int = 0,  # noqa: A002 - the MRD counter's own name
    phase: int = 0,
    repetition: int = 0,
    contrast: int = 0,
    average: int = 0,
    segment: int = 0,
    kspace_encode_step_2: int = 0,
    flags: Iterable[AcquisitionFlag | int] = (),
    center_sample: int | None = None,
    sample_time_us: float = 5.0,
    trajectory: ArrayLike | None = None,
    scan_counter: int = 0,
    measurement_uid: int = 0,
    acquisition_time_stamp: int = 0,
    physiology_time_stamp: Sequence[int] = (0, 0, 0),
    position: Vector3 = (0.0, 0.0, 0.0),
    read_dir: Vector3 = (1.0, 0.0, 0.0),
    phase_dir: Vector3 = (0.0, 1.0, 0.0),
    slice_dir: Vector3 = (0.0, 0.0, 1.0),
    patient_table_position: Vector3 = (0.0, 0.0, 0.0),
    discard_pre: int = 0,
    discard_post: int = 0,
    user_int: Sequence[int] | None = None,
    user_float: Sequence[float] | None = None,
) -> Acquisition:
    """One readout as an :class:`Acquisition`.

    ``data``: complex ``(coils, samples)`` (cast to complex64); ``trajectory``: float ``(samples, dims)``
    or None. ``ky`` is ``idx.kspace_encode_step_1``; ``phase`` the cardiac frame. Counters outside uint16
    raise EncodeOutOfRangeError.
    """
    samples_data = np.ascontiguousarray(data, dtype=np.complex64)
    if samples_data.ndim != 2:
        raise GeometryMismatchError(
            f"acquisition data must be (coils, samples), got shape {samples_data.shape}"
        )
    coils, samples = samples_data.shape
    traj = (
        np.zeros((samples, 0), dtype=np.float32)
        if trajectory is None
        else np.ascontiguousarray(trajectory, dtype=np.float32)
    )
    if traj.ndim != 2 or traj.shape[0] != samples:
        raise GeometryMismatchError(f"trajectory must be (samples={samples}, dims), got shape {traj.shape}")
    counters = {
        "kspace_encode_step_1": ky,
        "kspace_encode_step_2": kspace_encode_step_2,
        "average": average,
        "slice": slice,
        "contrast": contrast,
        "phase": phase,
        "repetition": repetition,
        "segment": segment,
    }
    for name, value in counters.items():
        _check_uint16(name, value)
    head = make_acquisition_heads(
        1,
        coils=coils,
        samples=samples,
        trajectory_dimensions=traj.shape[1],
        center_sample=center_sample,
        sample_time_us=sample_time_us,
    )
    for name, value in counters.items():
        head["idx"][name] = value
    head["flags"] = flag_mask(*flags)
    head["scan_counter"] = scan_counter
    head["measurement_uid"] = measurement_uid
    head["acquisition_time_stamp"] = acquisition_time_stamp
    head["physiology_time_stamp"] = physiology_time_stamp
    head["position"] = position
    head["read_dir"] = read_dir
    head["phase_dir"] = phase_dir
    head["slice_dir"] = slice_dir
    head["patient_table_position"] = patient_table_position
    head["discard_pre"] = discard_pre
    head["discard_post"] = discard_post
    if user_int is not None:
        head["user_int"] = user_int
    if user_float is not None:
        head["user_float"] = user_float
    return Acquisition(head.reshape(()), samples_data, traj)


def make_image_messages(
    magnitude: ArrayLike,
    *,
    field_of_view: Vector3,
    image_series_index: int = 1,
    data_type: ImageDataType = ImageDataType.FLOAT,
    first_image_index: int = 1,
    measurement_uid: int = 0,
    meta: Mapping[str, MetaValue] | None = None,
) -> list[Image]:
    """MRD magnitude images, one per (slice, frame), in slice-major order.

    ``magnitude``: real ``(slices, frames, H, W)`` in kadapt's layout (H = readout, W = phase encode).
    MRD's x is the readout direction (``read_dir``), so each image's pixels are ``(1, 1, W, H)`` =
    ``magnitude[s, f].T`` and ``matrix_size = (H, W, 1)``; ``field_of_view`` is (readout, phase, slice
    thickness) in mm. Header: ``slice = s``, ``phase = f``, running ``image_index`` from
    ``first_image_index``. FLOAT keeps the values; USHORT scales the volume maximum to 4095. Attributes
    carry ISMRMRD meta (DataRole, ImageProcessingHistory, WindowCenter, WindowWidth) plus ``meta``.
    """
    volume = np.asarray(magnitude)
    if volume.ndim != 4 or np.iscomplexobj(volume):
        raise GeometryMismatchError(
            f"magnitude must be real (slices, frames, H, W), got {volume.dtype} shape {volume.shape}"
        )
    if not np.all(np.isfinite(volume)):
        raise NonFiniteDataError(f"magnitude volume {volume.shape} contains NaN or Inf")
    if data_type not in (ImageDataType.FLOAT, ImageDataType.USHORT):
        raise InvalidInputError(f"data_type {data_type!r} is not supported for images; use FLOAT or USHORT")
    slices, frames, height, width = volume.shape
    _check_uint16("image matrix", (height, width, first_image_index + slices * frames - 1))
    peak = float(volume.max()) if volume.size else 0.0
    if data_type == ImageDataType.USHORT:
        scale = USHORT_MAX / peak if peak > 0 else 0.0
        pixels = np.rint(np.clip(volume, 0.0, None) * scale).astype(np.uint16)
        window_max = float(USHORT_MAX)
    else:
        pixels = volume.astype(np.float32)
        window_max = peak
    attributes = serialize_meta(
        {
            "DataRole": "Image",
            "ImageProcessingHistory": ["KADAPT"],
            "WindowCenter": f"{window_max / 2:g}",
            "WindowWidth": f"{window_max:g}",
            **(meta or {}),
        }
    )
    pixel_dtype = IMAGE_PIXEL_DTYPES[data_type]
    images: list[Image] = []
    for s in range(slices):
        for f in range(frames):
            head = np.zeros((), dtype=IMAGE_HEADER_DTYPE)
            head["version"] = 1
            head["data_type"] = data_type
            head["measurement_uid"] = measurement_uid
            head["matrix_size"] = (height, width, 1)
            head["field_of_view"] = field_of_view
            head["channels"] = 1
            head["read_dir"] = (1.0, 0.0, 0.0)
            head["phase_dir"] = (0.0, 1.0, 0.0)
            head["slice_dir"] = (0.0, 0.0, 1.0)
            head["slice"] = s
            head["phase"] = f
            head["image_type"] = ImageType.MAGNITUDE
            head["image_index"] = first_image_index + s * frames + f
            head["image_series_index"] = image_series_index
            head["attribute_string_len"] = len(attributes.encode("utf-8"))
            data = np.ascontiguousarray(pixels[s, f].T, dtype=pixel_dtype).reshape(1, 1, width, height)
            images.append(Image(head, attributes, data))
    return images


def make_waveform(
    data: ArrayLike,
    *,
    waveform_id: int = 0,
    time_stamp: int = 0,
    sample_time_us: float = 0.0,
    scan_counter: int = 0,
    measurement_uid: int = 0,
    flags: int = 0,
) -> Waveform:
    """A WAVEFORM message from ``data`` uint32 ``(channels, samples)`` (ECG, respiration, gradients)."""
    values = np.ascontiguousarray(data, dtype=np.uint32)
    if values.ndim != 2:
        raise GeometryMismatchError(f"waveform data must be (channels, samples), got shape {values.shape}")
    _check_uint16("waveform channels and samples", values.shape)
    head = np.zeros((), dtype=WAVEFORM_HEADER_DTYPE)
    head["version"] = 1
    head["flags"] = flags
    head["measurement_uid"] = measurement_uid
    head["scan_counter"] = scan_counter
    head["time_stamp"] = time_stamp
    head["number_of_samples"] = values.shape[1]
    head["channels"] = values.shape[0]
    head["sample_time_us"] = sample_time_us
    head["waveform_id"] = waveform_id
    return Waveform(head, values)
