"""Patient data out of logs: MRD header fields blanked in any text, patient keys dropped from log events.

The ISMRMRD XML header (``/usr/share/ismrmrd/schema/ismrmrd.xsd``) carries the patient in
``subjectInformation`` (patientName, patientWeight_kg, patientHeight_m, patientID, patientBirthdate,
patientGender) and identifying study, series and site data in ``studyInformation``,
``measurementInformation`` and ``acquisitionSystemInformation`` (the same kinds of fields the DICOM
de-identification of :mod:`kadapt.dicom.deidentify` empties). :func:`redact_header` blanks the text of
every such element, by pattern rather than by parsing, so truncated or malformed XML (an error message,
a traceback) is redacted too; :func:`redact_log_event` is a structlog processor (plain Python: the core
needs no structlog import for it) that the gateway runs on every log line as defence in depth.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

REDACTED = "[redacted]"

# Elements of the ISMRMRD header whose text identifies a patient, a study or a site.
PATIENT_ELEMENTS = (
    "patientName",
    "patientWeight_kg",
    "patientHeight_m",
    "patientID",
    "patientBirthdate",
    "patientGender",
)
IDENTIFYING_ELEMENTS = (
    *PATIENT_ELEMENTS,
    "studyDate",
    "studyTime",
    "studyID",
    "accessionNumber",
    "referringPhysicianName",
    "studyDescription",
    "studyInstanceUID",
    "measurementID",  # Siemens ids embed the patient id
    "seriesDate",
    "seriesTime",
    "seriesDescription",
    "seriesInstanceUIDRoot",
    "frameOfReferenceUID",
    "institutionName",
    "stationName",
    "deviceID",
    "deviceSerialNumber",
)
_ELEMENT = re.compile(
    r"<(?P<prefix>[\w.-]+:)?(?P<tag>" + "|".join(IDENTIFYING_ELEMENTS) + r")(?P<attrs>\s[^<>]*)?>"
    r"(?P<text>[^<]*)(?:</(?P=prefix)?(?P=tag)\s*>)?",
)
# Log keys that name patient data whatever their value: patient_*, patientName, header_xml, ...
_PATIENT_KEY = re.compile(r"^(patient|subject|header_xml$|birth)", re.IGNORECASE)
_MAX_DEPTH = 4


def redact_header(text: str) -> str:
    """``text`` with the content of every identifying MRD header element replaced by ``[redacted]``
    (tags kept, so the structure stays readable); text without any such element comes back unchanged."""
    if "<" not in text:
        return text

    def blank(match: re.Match[str]) -> str:
        prefix = match.group("prefix") or ""
        tag = match.group("tag")
        return f"<{prefix}{tag}{match.group('attrs') or ''}>{REDACTED}</{prefix}{tag}>"

    return _ELEMENT.sub(blank, text)


def is_patient_key(key: str) -> bool:
    """Whether a log key names patient data (``patient_*``, ``patientID``, ``subject*``, ``header_xml``)."""
    return bool(_PATIENT_KEY.match(key))


def _redact_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact_header(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            key: _redact_value(item, depth + 1)
            for key, item in value.items()
            if not (isinstance(key, str) and is_patient_key(key))
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(item, depth + 1) for item in value)
    return value


def redact_log_event(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: drop patient keys (also inside nested dicts) and blank identifying MRD header
    elements in every string value. Place it after ``format_exc_info`` so tracebacks are covered."""
    for key in [key for key in event_dict if is_patient_key(key)]:
        del event_dict[key]
    for key, value in event_dict.items():
        event_dict[key] = _redact_value(value, 0)
    return event_dict
