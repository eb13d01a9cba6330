"""Patient, study, series and system facts of an ISMRMRD XML header, in DICOM's value formats.

The MRD header (ISMRMRD schema) carries what a DICOM writer needs beside the pixels in four optional
sections — ``subjectInformation``, ``studyInformation``, ``measurementInformation``,
``acquisitionSystemInformation`` — plus ``experimentalConditions`` and ``sequenceParameters``.
:func:`read_study_info` collects them as DICOM strings (dates ``YYYYMMDD``, times ``HHMMSS.ffffff``,
code strings upper case). Scanners write these sections loosely, and an image export must not fail on a
malformed birth date, so a value that does not fit its DICOM value representation is dropped (left
empty), never guessed: identifiers are never truncated (a shortened accession number would name
another study), free text is cut to the VR's length.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kadapt.errors import InvalidHeaderError

# The patient positions ISMRMRD allows are DICOM's Patient Position (0018,5100) terms.
PATIENT_POSITIONS = frozenset({"HFP", "HFS", "HFDR", "HFDL", "FFP", "FFS", "FFDR", "FFDL"})
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})")
_TIME = re.compile(r"^(\d{2}):?(\d{2}):?(\d{2})(\.\d{1,6})?")
# sequenceParameters/sequence_type (free text) -> Scanning Sequence (0018,0020) defined terms.
_SCANNING_SEQUENCES = (
    ("epi", "EP"),
    ("inversion", "IR"),
    ("tse", "SE"),
    ("fse", "SE"),
    ("spin", "SE"),
    ("haste", "SE"),
    ("flash", "GR"),
    ("gre", "GR"),
    ("fisp", "GR"),
    ("ssfp", "GR"),
    ("trufi", "GR"),
    ("gradient", "GR"),
)


@dataclass(frozen=True, slots=True)
class StudyInfo:
    """What the DICOM writer takes from the MRD XML header; every text is DICOM-ready, ``""`` = absent."""

    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    patient_weight_kg: float | None = None
    patient_size_m: float | None = None
    study_instance_uid: str = ""
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    accession_number: str = ""
    referring_physician: str = ""
    study_description: str = ""
    body_part: str = ""
    measurement_id: str = ""
    series_date: str = ""
    series_time: str = ""
    patient_position: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    series_instance_uid_root: str = ""
    frame_of_reference_uid: str = ""
    system_vendor: str = ""
    system_model: str = ""
    field_strength_t: float | None = None
    institution_name: str = ""
    station_name: str = ""
    imaging_frequency_mhz: float | None = None
    repetition_time_ms: float | None = None
    echo_time_ms: float | None = None
    inversion_time_ms: float | None = None
    flip_angle_deg: float | None = None
    scanning_sequence: str = "RM"

    @property
    def study_key(self) -> str:
        """The measurement id without its last ``_`` field: Siemens ids read
        ``device_patient_study_measurement``, so every series of one session shares this key."""
        head, _, _ = self.measurement_id.rpartition("_")
        return head or self.measurement_id


def _parse_root(header_xml: str | bytes) -> ET.Element:
    text = header_xml.decode("utf-8", errors="replace") if isinstance(header_xml, bytes) else header_xml
    text = text.split("\0", 1)[0].strip()  # FIRE clients NUL-terminate text payloads
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InvalidHeaderError(f"MRD header is not well-formed XML: {exc}") from None
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
    if root.tag != "ismrmrdHeader":
        raise InvalidHeaderError(f"MRD header root is <{root.tag}>, expected <ismrmrdHeader>")
    return root


def _text(root: ET.Element, path: str) -> str:
    return " ".join((root.findtext(path) or "").split())


def _free_text(root: ET.Element, path: str, limit: int) -> str:
    # Backslash separates DICOM values; free text is cut to the VR's maximum length.
    return _text(root, path).replace("\\", "/")[:limit]


def _identifier(root: ET.Element, path: str, limit: int) -> str:
    value = _text(root, path).replace("\\", "/")
    return value if len(value) <= limit else ""


def _number(root: ET.Element, path: str) -> float | None:
    try:
        value = float(_text(root, path))
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def dicom_date(text: str) -> str:
    """An ``xs:date`` (``YYYY-MM-DD``, optional zone) as a DICOM DA ``YYYYMMDD``; ``""`` if it is not one."""
    match = _DATE.match(text.strip())
    if not match:
        return ""
    year, month, day = match.groups()
    return f"{year}{month}{day}" if 1 <= int(month) <= 12 and 1 <= int(day) <= 31 else ""


def dicom_time(text: str) -> str:
    """An ``xs:time`` (``HH:MM:SS[.ffffff]``) as a DICOM TM ``HHMMSS[.ffffff]``; ``""`` if it is not one."""
    match = _TIME.match(text.strip())
    if not match:
        return ""
    hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 60:
        return ""
    return f"{hours}{minutes}{seconds}{fraction or ''}"


def valid_uid(text: str) -> str:
    """``text`` if it is a valid DICOM UID (digits and dots, at most 64 characters), else ``""``."""
    return text if len(text) <= 64 and _UID.match(text) else ""


def _scanning_sequence(sequence_type: str) -> str:
    lowered = sequence_type.lower()
    for needle, term in _SCANNING_SEQUENCES:
        if needle in lowered:
            return term
    return "RM"  # research mode: DICOM's term for a sequence it has no name for


def read_study_info(header_xml: str | bytes) -> StudyInfo:
    """Collect the DICOM-relevant facts of an MRD XML header (NUL-terminated text tolerated).

    Not well-formed XML or another root element raises :class:`InvalidHeaderError`; every section and
    field is optional.
    """
    root = _parse_root(header_xml)
    subject, study = "subjectInformation/", "studyInformation/"
    measurement, system = "measurementInformation/", "acquisitionSystemInformation/"
    sequence = "sequenceParameters/"
    sex = _text(root, subject + "patientGender").upper()
    position = _text(root, measurement + "patientPosition").upper()
    frequency_hz = _number(root, "experimentalConditions/H1resonanceFrequency_Hz")
    uid_root = _text(root, measurement + "seriesInstanceUIDRoot").rstrip(".")
    weight, size = _number(root, subject + "patientWeight_kg"), _number(root, subject + "patientHeight_m")
    field = _number(root, system + "systemFieldStrength_T")
    return StudyInfo(
        patient_name=_free_text(root, subject + "patientName", 64),
        patient_id=_identifier(root, subject + "patientID", 64),
        patient_birth_date=dicom_date(_text(root, subject + "patientBirthdate")),
        patient_sex=sex if sex in {"M", "F", "O"} else "",
        patient_weight_kg=weight if weight is not None and weight > 0 else None,
        patient_size_m=size if size is not None and size > 0 else None,
        study_instance_uid=valid_uid(_text(root, study + "studyInstanceUID")),
        study_date=dicom_date(_text(root, study + "studyDate")),
        study_time=dicom_time(_text(root, study + "studyTime")),
        study_id=_identifier(root, study + "studyID", 16),
        accession_number=_identifier(root, study + "accessionNumber", 16),
        referring_physician=_free_text(root, study + "referringPhysicianName", 64),
        study_description=_free_text(root, study + "studyDescription", 64),
        body_part=_identifier(root, study + "bodyPartExamined", 16).upper(),
        measurement_id=_text(root, measurement + "measurementID"),
        series_date=dicom_date(_text(root, measurement + "seriesDate")),
        series_time=dicom_time(_text(root, measurement + "seriesTime")),
        patient_position=position if position in PATIENT_POSITIONS else "",
        protocol_name=_free_text(root, measurement + "protocolName", 64),
        sequence_name=_free_text(root, measurement + "sequenceName", 16),
        series_instance_uid_root=uid_root if valid_uid(uid_root) and len(uid_root) <= 40 else "",
        frame_of_reference_uid=valid_uid(_text(root, measurement + "frameOfReferenceUID")),
        system_vendor=_free_text(root, system + "systemVendor", 64),
        system_model=_free_text(root, system + "systemModel", 64),
        field_strength_t=field if field is not None and field > 0 else None,
        institution_name=_free_text(root, system + "institutionName", 64),
        station_name=_free_text(root, system + "stationName", 16),
        imaging_frequency_mhz=frequency_hz / 1e6 if frequency_hz is not None and frequency_hz > 0 else None,
        repetition_time_ms=_number(root, sequence + "TR"),
        echo_time_ms=_number(root, sequence + "TE"),
        inversion_time_ms=_number(root, sequence + "TI"),
        flip_angle_deg=_number(root, sequence + "flipAngle_deg"),
        scanning_sequence=_scanning_sequence(_text(root, sequence + "sequence_type")),
    )
