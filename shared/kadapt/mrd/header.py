"""The ISMRMRD XML header: what kadapt needs of it (``parse_header``) and a minimal valid one
(``make_header``).

Only the first ``<encoding>`` (encoding space 0) matters to a 2D Cartesian scan. kadapt's k-space layout
is fastMRI's ``(..., coil, H, W)``: H is the readout after oversampling removal (the recon matrix x),
W the phase-encode axis (the encoded matrix y), and readout ``kspace_encode_step_1 = ky`` lands in column
``ky + ky_offset`` so that the header's k-space centre sits at ``W // 2`` (fastMRI's padding convention:
column = ky - center + W // 2).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kadapt.errors import InvalidHeaderError

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
_COUNTERS = ("slice", "phase", "repetition", "contrast", "average")


@dataclass(frozen=True, slots=True)
class EncodingLimit:
    """One ``encodingLimits`` entry (inclusive minimum and maximum)."""

    minimum: int
    maximum: int
    center: int


@dataclass(frozen=True, slots=True)
class EncodingInfo:
    """The geometry of encoding space 0.

    Matrices and fields of view are ``(x, y, z)`` = (readout, phase encode, partition/slice); counts are
    ``maximum + 1`` of the matching ``encodingLimits`` entry (1 when absent).
    """

    encoded_matrix: tuple[int, int, int]
    recon_matrix: tuple[int, int, int]
    encoded_fov_mm: tuple[float, float, float]
    recon_fov_mm: tuple[float, float, float]
    ky: EncodingLimit
    slices: int
    phases: int
    repetitions: int
    contrasts: int
    averages: int
    receiver_channels: int | None
    trajectory: str

    @property
    def readout_oversampling(self) -> float:
        """``encoded x / recon x`` (2.0 for the usual 2x readout oversampling)."""
        return self.encoded_matrix[0] / self.recon_matrix[0]

    @property
    def encoded_readout(self) -> int:
        """Samples per full readout, oversampling included (encoded matrix x)."""
        return self.encoded_matrix[0]

    @property
    def height(self) -> int:
        """H: readout length after oversampling removal (recon matrix x)."""
        return self.recon_matrix[0]

    @property
    def width(self) -> int:
        """W: phase-encode lines (encoded matrix y)."""
        return self.encoded_matrix[1]

    @property
    def frames(self) -> int:
        """Cardiac frames: the ``phase`` count."""
        return self.phases

    @property
    def ky_offset(self) -> int:
        """Column of ky is ``ky + ky_offset``: puts ``ky.center`` at ``W // 2``."""
        return self.width // 2 - self.ky.center


def _strip_namespaces(root: ET.Element) -> None:
    # Headers arrive with the ISMRMRD default namespace, with a prefix, or (hand-written) without one.
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]


def _required(parent: ET.Element, path: str, where: str) -> ET.Element:
    element = parent.find(path)
    if element is None:
        raise InvalidHeaderError(f"MRD header has no <{path}> in <{where}>")
    return element


def _number(parent: ET.Element, path: str, where: str, kind: type[int] | type[float]) -> float:
    text = (_required(parent, path, where).text or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise InvalidHeaderError(f"MRD header <{where}/{path}> is {text!r}, not a number") from None
    if kind is int and not value.is_integer():
        raise InvalidHeaderError(f"MRD header <{where}/{path}> is {text!r}, not an integer")
    return value


def _space(encoding: ET.Element, name: str) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    space = _required(encoding, name, "encoding")
    matrix = _required(space, "matrixSize", name)
    fov = _required(space, "fieldOfView_mm", name)
    where = f"{name}/matrixSize"
    x, y, z = (int(_number(matrix, axis, where, int)) for axis in "xyz")
    if min(x, y, z) < 1:
        raise InvalidHeaderError(f"MRD header <{where}> is ({x}, {y}, {z}); every size must be >= 1")
    fx, fy, fz = (_number(fov, axis, f"{name}/fieldOfView_mm", float) for axis in "xyz")
    return (x, y, z), (fx, fy, fz)


def _limit(limits: ET.Element | None, name: str) -> EncodingLimit | None:
    element = None if limits is None else limits.find(name)
    if element is None:
        return None
    where = f"encodingLimits/{name}"
    values = [int(_number(element, field, where, int)) for field in ("minimum", "maximum", "center")]
    if values[0] < 0 or values[1] < values[0]:
        raise InvalidHeaderError(f"MRD header <{where}> has minimum {values[0]} > maximum {values[1]}")
    return EncodingLimit(*values)


def parse_header(xml: str | bytes, *, encoding_index: int = 0) -> EncodingInfo:
    """Parse an ISMRMRD XML header (NUL-terminated text tolerated) into :class:`EncodingInfo`.

    Malformed XML or a missing required element raises InvalidHeaderError naming it.
    """
    text = xml.decode("utf-8", errors="replace") if isinstance(xml, bytes) else xml
    text = text.split("\0", 1)[0].strip()
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InvalidHeaderError(f"MRD header is not well-formed XML: {exc}") from None
    _strip_namespaces(root)
    if root.tag != "ismrmrdHeader":
        raise InvalidHeaderError(f"MRD header root is <{root.tag}>, expected <ismrmrdHeader>")
    encodings = root.findall("encoding")
    if len(encodings) <= encoding_index:
        raise InvalidHeaderError(
            f"MRD header has {len(encodings)} <encoding> element(s), encoding {encoding_index} is missing"
        )
    encoding = encodings[encoding_index]
    encoded_matrix, encoded_fov = _space(encoding, "encodedSpace")
    recon_matrix, recon_fov = _space(encoding, "reconSpace")
    limits = encoding.find("encodingLimits")
    width = encoded_matrix[1]
    ky = _limit(limits, "kspace_encoding_step_1") or EncodingLimit(0, width - 1, width // 2)
    counts = {name: (lim.maximum + 1 if (lim := _limit(limits, name)) else 1) for name in _COUNTERS}
    channels_element = root.find("acquisitionSystemInformation/receiverChannels")
    receiver_channels = (
        None
        if channels_element is None
        else int(_number(root, "acquisitionSystemInformation/receiverChannels", "ismrmrdHeader", int))
    )
    trajectory = (encoding.findtext("trajectory") or "cartesian").strip()
    return EncodingInfo(
        encoded_matrix=encoded_matrix,
        recon_matrix=recon_matrix,
        encoded_fov_mm=encoded_fov,
        recon_fov_mm=recon_fov,
        ky=ky,
        slices=counts["slice"],
        phases=counts["phase"],
        repetitions=counts["repetition"],
        contrasts=counts["contrast"],
        averages=counts["average"],
        receiver_channels=receiver_channels,
        trajectory=trajectory,
    )


def _sub(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = f"{text:.6f}" if isinstance(text, float) else str(text)
    return element


def _xyz(parent: ET.Element, tag: str, values: tuple[float, float, float] | tuple[int, int, int]) -> None:
    element = _sub(parent, tag)
    for axis, value in zip("xyz", values, strict=True):
        _sub(element, axis, value)


def _limit_element(parent: ET.Element, tag: str, maximum: int, center: int, minimum: int = 0) -> None:
    element = _sub(parent, tag)
    _sub(element, "minimum", minimum)
    _sub(element, "maximum", maximum)
    _sub(element, "center", center)


def make_header(
    *,
    readout: int,
    width: int,
    recon_readout: int | None = None,
    slices: int = 1,
    frames: int = 1,
    repetitions: int = 1,
    coils: int | None = None,
    fov_mm: tuple[float, float, float] = (256.0, 256.0, 5.0),
    center_line: int | None = None,
    ky_minimum: int = 0,
    ky_maximum: int | None = None,
    acceleration: int | None = None,
    calibration_mode: str = "embedded",
    h1_resonance_frequency_hz: int = 63_500_000,
    trajectory: str = "cartesian",
) -> str:
    """A minimal ISMRMRD XML header accepted by :func:`parse_header` and ``ismrmrd.xsd.CreateFromDocument``.

    ``readout``: samples per readout including oversampling (encoded x); ``width``: phase-encode lines
    (encoded y, W); ``recon_readout``: H after oversampling removal (default ``readout``); ``fov_mm``: the
    recon field of view (readout, phase, slice thickness) — the encoded readout FOV scales with the
    oversampling; ``center_line`` defaults to ``width // 2``; ``frames`` is the cardiac phase count.
    """
    recon_readout = readout if recon_readout is None else recon_readout
    center_line = width // 2 if center_line is None else center_line
    ky_maximum = width - 1 if ky_maximum is None else ky_maximum
    for name, value in (("readout", readout), ("width", width), ("recon_readout", recon_readout)):
        if value < 1:
            raise InvalidHeaderError(f"{name}={value} must be >= 1")
    if not ky_minimum <= center_line <= ky_maximum:
        raise InvalidHeaderError(f"center_line={center_line} outside ky limits {ky_minimum}..{ky_maximum}")
    root = ET.Element("ismrmrdHeader", {"xmlns": ISMRMRD_NAMESPACE})
    if coils is not None:
        _sub(_sub(root, "acquisitionSystemInformation"), "receiverChannels", coils)
    _sub(_sub(root, "experimentalConditions"), "H1resonanceFrequency_Hz", h1_resonance_frequency_hz)
    encoding = _sub(root, "encoding")
    fov_x, fov_y, fov_z = (float(v) for v in fov_mm)
    encoded = _sub(encoding, "encodedSpace")
    _xyz(encoded, "matrixSize", (readout, width, 1))
    _xyz(encoded, "fieldOfView_mm", (fov_x * readout / recon_readout, fov_y, fov_z))
    recon = _sub(encoding, "reconSpace")
    _xyz(recon, "matrixSize", (recon_readout, width, 1))
    _xyz(recon, "fieldOfView_mm", (fov_x, fov_y, fov_z))
    limits = _sub(encoding, "encodingLimits")
    _limit_element(limits, "kspace_encoding_step_1", ky_maximum, center_line, ky_minimum)
    _limit_element(limits, "kspace_encoding_step_2", 0, 0)
    _limit_element(limits, "slice", slices - 1, (slices - 1) // 2)
    _limit_element(limits, "phase", frames - 1, 0)
    _limit_element(limits, "repetition", repetitions - 1, 0)
    _sub(encoding, "trajectory", trajectory)
    if acceleration is not None:
        parallel = _sub(encoding, "parallelImaging")
        factor = _sub(parallel, "accelerationFactor")
        _sub(factor, "kspace_encoding_step_1", acceleration)
        _sub(factor, "kspace_encoding_step_2", 1)
        _sub(parallel, "calibrationMode", calibration_mode)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
