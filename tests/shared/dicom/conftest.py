"""DICOM test kit: an MRD header from ``make_header`` hand-extended with the patient, study, measurement
and system sections a scanner writes (schema-valid, checked against ``ismrmrd.xsd``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kadapt.mrd.header import make_header

SUBJECT_STUDY_MEASUREMENT = """
  <subjectInformation>
    <patientName>Doe^Jane</patientName>
    <patientWeight_kg>61.5</patientWeight_kg>
    <patientHeight_m>1.68</patientHeight_m>
    <patientID>PID-0042</patientID>
    <patientBirthdate>1980-02-29</patientBirthdate>
    <patientGender>F</patientGender>
  </subjectInformation>
  <studyInformation>
    <studyDate>2024-05-17</studyDate>
    <studyTime>09:41:07</studyTime>
    <studyID>ST77</studyID>
    <accessionNumber>987654321</accessionNumber>
    <referringPhysicianName>House^Gregory</referringPhysicianName>
    <studyDescription>Knee^Routine</studyDescription>
    <bodyPartExamined>knee</bodyPartExamined>
  </studyInformation>
  <measurementInformation>
    <measurementID>45070_100042_200077_12</measurementID>
    <seriesDate>2024-05-17</seriesDate>
    <seriesTime>09:55:31.250</seriesTime>
    <patientPosition>FFS</patientPosition>
    <initialSeriesNumber>5</initialSeriesNumber>
    <protocolName>t2_tse_cor</protocolName>
    <sequenceName>tse2d1_11</sequenceName>
    <seriesInstanceUIDRoot>1.3.12.2.1107.5.2.19.45070</seriesInstanceUIDRoot>
    <frameOfReferenceUID>1.3.12.2.1107.5.2.19.45070.1.20240517094107.0.0.0</frameOfReferenceUID>
  </measurementInformation>
"""

SYSTEM_FIELDS = """
    <systemVendor>SIEMENS</systemVendor>
    <systemModel>Prisma</systemModel>
    <systemFieldStrength_T>2.89362</systemFieldStrength_T>
    <institutionName>St Elsewhere Hospital</institutionName>
    <stationName>MRC45070</stationName>
"""

SEQUENCE_PARAMETERS = """
  <sequenceParameters>
    <TR>3000</TR>
    <TE>98</TE>
    <flipAngle_deg>150</flipAngle_deg>
    <sequence_type>TSE</sequence_type>
  </sequenceParameters>
"""


def extend_header(xml: str) -> str:
    """``make_header`` XML (with ``coils``) plus subject/study/measurement/system/sequence sections, in
    the schema's element order."""
    xml = xml.replace(
        "<acquisitionSystemInformation>", SUBJECT_STUDY_MEASUREMENT + "<acquisitionSystemInformation>"
    )
    xml = xml.replace("<receiverChannels>", SYSTEM_FIELDS + "<receiverChannels>", 1)
    return xml.replace("</ismrmrdHeader>", SEQUENCE_PARAMETERS + "</ismrmrdHeader>")


@pytest.fixture
def rich_header() -> Callable[..., str]:
    """``rich_header(**make_header_options)``: a scanner-like header (defaults: 2x oversampled readout
    of 32, 24 phase-encode lines, 4 coils, FOV 200 x 180 x 4 mm)."""

    def build(**options: Any) -> str:
        settings: dict[str, Any] = {
            "readout": 64,
            "recon_readout": 32,
            "width": 24,
            "coils": 4,
            "fov_mm": (200.0, 180.0, 4.0),
        }
        settings.update(options)
        return extend_header(make_header(**settings))

    return build
