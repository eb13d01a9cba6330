"""kadapt.mrd.redact: MRD header patient fields blanked in text, patient keys dropped from log events."""

from __future__ import annotations

import json
from typing import Any

from kadapt.mrd.header import make_header, parse_header
from kadapt.mrd.redact import PATIENT_ELEMENTS, REDACTED, redact_header, redact_log_event

SUBJECT = (
    "<subjectInformation><patientName>DOE^JANE</patientName><patientWeight_kg>61.5</patientWeight_kg>"
    "<patientID>PID-0042</patientID><patientBirthdate>1970-01-31</patientBirthdate>"
    "<patientGender>F</patientGender></subjectInformation>"
    "<studyInformation><studyDate>2024-05-01</studyDate><accessionNumber>ACC-77</accessionNumber>"
    "<referringPhysicianName>DR^WHO</referringPhysicianName></studyInformation>"
    "<measurementInformation><measurementID>45123_PID-0042_1</measurementID>"
    "<patientPosition>HFS</patientPosition></measurementInformation>"
)
IDENTIFYING = ("DOE^JANE", "61.5", "PID-0042", "1970-01-31", "2024-05-01", "ACC-77", "DR^WHO")


def header_with_patient() -> str:
    header = make_header(readout=64, recon_readout=32, width=32, coils=2)
    start = header.index(">", header.index("<ismrmrdHeader")) + 1
    return header[:start] + SUBJECT + header[start:]


def test_redacted_header_keeps_structure_and_geometry() -> None:
    header = header_with_patient()
    redacted = redact_header(header)
    for value in IDENTIFYING:
        assert value not in redacted
    assert "<patientGender>[redacted]</patientGender>" in redacted
    assert "<patientPosition>HFS</patientPosition>" in redacted  # not identifying, kept
    assert parse_header(redacted) == parse_header(header)  # still a valid header, same geometry


def test_truncated_and_prefixed_xml_is_redacted_too() -> None:
    assert redact_header("bad header near <patientName>DOE^JA") == (
        f"bad header near <patientName>{REDACTED}</patientName>"
    )
    assert "DOE" not in redact_header('<ns:patientName a="1">DOE</ns:patientName >')
    assert redact_header("no xml, patientName DOE") == "no xml, patientName DOE"
    assert redact_header("<patientName/>") == "<patientName/>"


def test_log_processor_drops_patient_keys_and_redacts_values() -> None:
    event: dict[str, Any] = {
        "event": "scan_created",
        "patient_name": "DOE^JANE",
        "patientID": "PID-0042",
        "header_xml": header_with_patient(),
        "scan_id": "a" * 32,
        "detail": {"patient_birthdate": "1970-01-31", "policy": {"sampler": "vd-random"}},
        "exception": "Traceback ...\nValueError: <patientName>DOE^JANE</patientName>",
        "lines": [1, 2, "<patientID>PID-0042</patientID>"],
    }
    out = redact_log_event(None, "info", event)
    assert set(out) == {"event", "scan_id", "detail", "exception", "lines"}
    assert out["detail"] == {"policy": {"sampler": "vd-random"}}
    rendered = json.dumps(out)
    for value in IDENTIFYING:
        assert value not in rendered
    assert out["lines"][:2] == [1, 2]


def test_every_subject_information_field_of_the_schema_is_covered() -> None:
    # ismrmrd.xsd subjectInformationType (patientHeight_m since ISMRMRD 1.13)
    assert set(PATIENT_ELEMENTS) >= {
        "patientName",
        "patientWeight_kg",
        "patientID",
        "patientBirthdate",
        "patientGender",
    }
