"""MRD streaming messages as Python objects, and the bulk acquisition form.

One dataclass per message id (``kadapt.mrd.constants.MessageId``). Binary headers stay numpy structured
scalars (0-d arrays of the dtypes in ``constants``) so that a decoded message is a set of views on the
received bytes, with no per-field Python objects; the properties read single fields on demand. Arrays of
decoded messages are read-only views of the payload: copy before modifying.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray

from kadapt.errors import GeometryMismatchError, InvalidInputError
from kadapt.mrd.constants import (
    ACQ_HEADER_DTYPE,
    IMAGE_HEADER_DTYPE,
    IMAGE_PIXEL_DTYPES,
    WAVEFORM_HEADER_DTYPE,
    AcquisitionFlag,
)

HeaderScalar: TypeAlias = NDArray[np.void]
ComplexReadouts: TypeAlias = NDArray[np.complex64]
MetaValue: TypeAlias = str | int | float | Sequence[str | int | float]


def _check_head(head: HeaderScalar, dtype: np.dtype[np.void], what: str) -> None:
    if not isinstance(head, np.ndarray) or head.dtype != dtype or head.shape != ():
        shape = getattr(head, "shape", None)
        raise GeometryMismatchError(
            f"{what} head must be a 0-d array of the MRD {what} header dtype, got "
            f"{type(head).__name__} shape={shape} dtype={getattr(head, 'dtype', None)}"
        )


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """ID 1: name of a server-side configuration (at most 1023 UTF-8 bytes)."""

    name: str


@dataclass(frozen=True, slots=True)
class ConfigText:
    """ID 2: configuration text (XML or JSON) sent inline."""

    text: str


@dataclass(frozen=True, slots=True)
class Header:
    """ID 3: the ISMRMRD XML header of the measurement."""

    xml: str


@dataclass(frozen=True, slots=True)
class Close:
    """ID 4: end of the session in this direction."""


@dataclass(frozen=True, slots=True)
class Text:
    """ID 5: free text; kadapt sends its plans as JSON in TEXT messages."""

    text: str


@dataclass(frozen=True, slots=True)
class Feedback:
    """ID 1028 (FIRE): named feedback for the running sequence; ``data`` is the packed struct."""

    name: str
    data: bytes


@dataclass(frozen=True, slots=True, eq=False)
class Acquisition:
    """ID 1008: one readout.

    ``head``: 0-d array of ``ACQ_HEADER_DTYPE``; ``data``: complex64 ``(coils, samples)``;
    ``traj``: float32 ``(samples, trajectory_dimensions)``. Shapes must agree with the header.
    """

    head: HeaderScalar
    data: ComplexReadouts
    traj: NDArray[np.float32]

    def __post_init__(self) -> None:
        _check_head(self.head, ACQ_HEADER_DTYPE, "acquisition")
        coils, samples, dims = self.active_channels, self.number_of_samples, self.trajectory_dimensions
        if self.data.dtype != np.complex64 or self.data.shape != (coils, samples):
            raise GeometryMismatchError(
                f"acquisition data is {self.data.dtype} {self.data.shape}, header says complex64 "
                f"(active_channels={coils}, number_of_samples={samples})"
            )
        if self.traj.dtype != np.float32 or self.traj.shape != (samples, dims):
            raise GeometryMismatchError(
                f"acquisition trajectory is {self.traj.dtype} {self.traj.shape}, header says float32 "
                f"(number_of_samples={samples}, trajectory_dimensions={dims})"
            )

    @property
    def flags(self) -> int:
        return int(self.head["flags"])

    def is_flag_set(self, flag: AcquisitionFlag | int) -> bool:
        """Whether ISMRMRD flag bit ``flag`` (1..64) is set."""
        return bool(self.flags & (1 << (int(flag) - 1)))

    @property
    def ky(self) -> int:
        """Phase-encode line: ``idx.kspace_encode_step_1``."""
        return int(self.head["idx"]["kspace_encode_step_1"])

    @property
    def slice(self) -> int:
        return int(self.head["idx"]["slice"])

    @property
    def phase(self) -> int:
        """Cardiac frame: ``idx.phase``."""
        return int(self.head["idx"]["phase"])

    @property
    def repetition(self) -> int:
        return int(self.head["idx"]["repetition"])

    @property
    def active_channels(self) -> int:
        return int(self.head["active_channels"])

    @property
    def number_of_samples(self) -> int:
        return int(self.head["number_of_samples"])

    @property
    def trajectory_dimensions(self) -> int:
        return int(self.head["trajectory_dimensions"])

    @property
    def center_sample(self) -> int:
        return int(self.head["center_sample"])

    @property
    def scan_counter(self) -> int:
        return int(self.head["scan_counter"])


@dataclass(frozen=True, slots=True, eq=False)
class Image:
    """ID 1022: one image.

    ``head``: 0-d array of ``IMAGE_HEADER_DTYPE``; ``attributes``: ISMRMRD meta XML (may be empty);
    ``data``: ``(channels, z, y, x)`` with the dtype of ``head.data_type``, x = ``matrix_size[0]`` (the
    readout direction, ``read_dir``).
    """

    head: HeaderScalar
    attributes: str
    data: NDArray[np.generic]

    def __post_init__(self) -> None:
        _check_head(self.head, IMAGE_HEADER_DTYPE, "image")
        pixel_dtype = IMAGE_PIXEL_DTYPES.get(self.data_type)
        if pixel_dtype is None:
            raise InvalidInputError(f"image data_type {self.data_type} is not an MRD data type (1..8)")
        x, y, z = self.matrix_size
        expected = (self.channels, z, y, x)
        if self.data.dtype != pixel_dtype or self.data.shape != expected:
            raise GeometryMismatchError(
                f"image data is {self.data.dtype} {self.data.shape}, header says {pixel_dtype} "
                f"(channels, z, y, x)={expected}"
            )

    @property
    def data_type(self) -> int:
        return int(self.head["data_type"])

    @property
    def matrix_size(self) -> tuple[int, int, int]:
        """``(x, y, z)`` as in the header."""
        x, y, z = (int(v) for v in self.head["matrix_size"])
        return x, y, z

    @property
    def channels(self) -> int:
        return int(self.head["channels"])

    @property
    def slice(self) -> int:
        return int(self.head["slice"])

    @property
    def phase(self) -> int:
        return int(self.head["phase"])

    @property
    def image_index(self) -> int:
        return int(self.head["image_index"])

    @property
    def image_series_index(self) -> int:
        return int(self.head["image_series_index"])

    @property
    def meta(self) -> dict[str, list[str]]:
        """The attributes parsed as ISMRMRD meta (name -> values)."""
        return parse_meta(self.attributes)


@dataclass(frozen=True, slots=True, eq=False)
class Waveform:
    """ID 1026: physiological or gradient waveform; ``data`` uint32 ``(channels, samples)``."""

    head: HeaderScalar
    data: NDArray[np.uint32]

    def __post_init__(self) -> None:
        _check_head(self.head, WAVEFORM_HEADER_DTYPE, "waveform")
        expected = (int(self.head["channels"]), int(self.head["number_of_samples"]))
        if self.data.dtype != np.uint32 or self.data.shape != expected:
            raise GeometryMismatchError(
                f"waveform data is {self.data.dtype} {self.data.shape}, header says uint32 "
                f"(channels, number_of_samples)={expected}"
            )


Message: TypeAlias = (
    ConfigFile | ConfigText | Header | Close | Text | Acquisition | Image | Waveform | Feedback
)


@dataclass(frozen=True, slots=True, eq=False)
class AcquisitionBatch:
    """Many readouts of one shape, without a Python object per readout (the bulk form).

    ``heads``: ``(n,)`` of ``ACQ_HEADER_DTYPE``; ``data``: complex64 ``(n, coils, samples)``;
    ``traj``: float32 ``(n, samples, trajectory_dimensions)`` or None when there is no trajectory.
    """

    heads: NDArray[np.void]
    data: ComplexReadouts
    traj: NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        heads, data = self.heads, self.data
        if heads.dtype != ACQ_HEADER_DTYPE or heads.ndim != 1:
            raise GeometryMismatchError(
                f"heads must be (n,) of ACQ_HEADER_DTYPE, got {heads.dtype} {heads.shape}"
            )
        if data.dtype != np.complex64 or data.ndim != 3 or data.shape[0] != heads.shape[0]:
            raise GeometryMismatchError(
                f"data must be complex64 (n={heads.shape[0]}, coils, samples), got {data.dtype} {data.shape}"
            )
        dims = 0 if self.traj is None else self.traj.shape[-1]
        if self.traj is not None and (
            self.traj.dtype != np.float32 or self.traj.shape != (data.shape[0], data.shape[2], dims)
        ):
            raise GeometryMismatchError(
                f"traj must be float32 (n, samples={data.shape[2]}, dims), "
                f"got {self.traj.dtype} {self.traj.shape}"
            )
        for field, size in (
            ("active_channels", data.shape[1]),
            ("number_of_samples", data.shape[2]),
            ("trajectory_dimensions", dims),
        ):
            wrong = np.flatnonzero(heads[field] != size)
            if wrong.size:
                index = int(wrong[0])
                raise GeometryMismatchError(
                    f"readout {index}: header {field}={int(heads[field][index])} but the data has {size}"
                )

    def __len__(self) -> int:
        return int(self.heads.shape[0])

    def acquisition(self, index: int) -> Acquisition:
        """Readout ``index`` as an :class:`Acquisition` (views, no copy)."""
        samples = self.data.shape[2]
        traj = np.zeros((samples, 0), dtype=np.float32) if self.traj is None else self.traj[index]
        return Acquisition(self.heads[index : index + 1].reshape(()), self.data[index], traj)

    def acquisitions(self) -> list[Acquisition]:
        """All readouts as :class:`Acquisition` objects (views)."""
        return [self.acquisition(i) for i in range(len(self))]

    @classmethod
    def from_acquisitions(cls, acquisitions: Sequence[Acquisition]) -> AcquisitionBatch:
        """Stack readouts of one shape; GeometryMismatchError names the first readout that differs."""
        if not acquisitions:
            raise InvalidInputError("cannot build an AcquisitionBatch from zero acquisitions")
        first = acquisitions[0]
        for index, acq in enumerate(acquisitions):
            if acq.data.shape != first.data.shape or acq.traj.shape != first.traj.shape:
                raise GeometryMismatchError(
                    f"readout {index} has data {acq.data.shape} traj {acq.traj.shape}, readout 0 has "
                    f"data {first.data.shape} traj {first.traj.shape}"
                )
        heads = np.stack([acq.head for acq in acquisitions])
        data = np.stack([acq.data for acq in acquisitions])
        traj = np.stack([acq.traj for acq in acquisitions]) if first.trajectory_dimensions else None
        return cls(heads, data, traj)


def serialize_meta(meta: Mapping[str, MetaValue]) -> str:
    """ISMRMRD meta XML for image attributes, byte-identical to ``ismrmrd.Meta.serialize``."""
    if not meta:
        return ""
    root = ET.Element("ismrmrdMeta")
    for name, value in meta.items():
        child = ET.SubElement(root, "meta")
        ET.SubElement(child, "name").text = name
        values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        for item in values:
            ET.SubElement(child, "value").text = str(item)
    output = io.BytesIO()
    ET.ElementTree(root).write(output, encoding="UTF-8", xml_declaration=True)
    return output.getvalue().decode("utf-8")


def parse_meta(text: str) -> dict[str, list[str]]:
    """Parse ISMRMRD meta XML into ``name -> [values]``; empty text gives an empty dict."""
    if not text.strip():
        return {}
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InvalidInputError(f"image attributes are not XML: {exc}") from exc
    if root.tag != "ismrmrdMeta":
        raise InvalidInputError(f"image attributes root is <{root.tag}>, expected <ismrmrdMeta>")
    meta: dict[str, list[str]] = {}
    for child in root.findall("meta"):
        name = child.findtext("name")
        if name is None:
            raise InvalidInputError("image attributes: <meta> without <name>")
        meta.setdefault(name, []).extend(v.text or "" for v in child.findall("value"))
    return meta
