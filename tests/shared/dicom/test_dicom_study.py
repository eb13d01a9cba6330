"""MRD XML -> DICOM-formatted patient, study and system facts."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import h5py
import ismrmrd.xsd
import pytest

from kadapt.dicom.study import dicom_date, dicom_time, read_study_info, valid_uid
from kadapt.errors import InvalidHeaderError
from kadapt.mrd.header import make_header


def test_the_hand_extended_header_is_schema_valid(rich_header: Callable[..., str]) -> None:
    parsed = ismrmrd.xsd.CreateFromDocument(rich_header())
    assert parsed.subjectInformation.patientID == "PID-0042"
    assert parsed.measurementInformation.patientPosition.name == "FFS"


def test_every_section_is_read_in_dicom_formats(rich_header: Callable[..., str]) -> None:
    info = read_study_info(rich_header())
    assert (info.patient_name, info.patient_id, info.patient_birth_date, info.patient_sex) == (
        "Doe^Jane",
        "PID-0042",
        "19800229",
        "F",
    )
    assert (info.patient_weight_kg, info.patient_size_m) == (61.5, 1.68)
    assert (info.study_date, info.study_time, info.study_id, info.accession_number) == (
        "20240517",
        "094107",
        "ST77",
        "987654321",
    )
    assert info.referring_physician == "House^Gregory"
    assert info.body_part == "KNEE"
    assert (info.series_date, info.series_time) == ("20240517", "095531.250")
    assert info.patient_position == "FFS"
    assert info.protocol_name == "t2_tse_cor"
    assert info.measurement_id == "45070_100042_200077_12"
    assert info.study_key == "45070_100042_200077"
    assert info.series_instance_uid_root == "1.3.12.2.1107.5.2.19.45070"
    assert info.frame_of_reference_uid.startswith("1.3.12.2.1107.5.2.19.45070.1.")
    assert (info.system_vendor, info.system_model, info.field_strength_t) == ("SIEMENS", "Prisma", 2.89362)
    assert (info.institution_name, info.station_name) == ("St Elsewhere Hospital", "MRC45070")
    assert info.imaging_frequency_mhz == pytest.approx(63.5)
    assert (info.repetition_time_ms, info.echo_time_ms, info.flip_angle_deg) == (3000.0, 98.0, 150.0)
    assert info.scanning_sequence == "SE"


def test_a_minimal_header_gives_empty_fields() -> None:
    info = read_study_info(make_header(readout=32, width=16) + "\0\0")  # NUL-terminated as FIRE sends it
    assert info.patient_name == info.patient_id == info.study_instance_uid == info.measurement_id == ""
    assert info.field_strength_t is None
    assert info.scanning_sequence == "RM"


def test_values_that_do_not_fit_their_vr_are_dropped_not_guessed(rich_header: Callable[..., str]) -> None:
    xml = (
        rich_header()
        .replace("1980-02-29", "29/02/1980")
        .replace("987654321", "ACCESSION-NUMBER-TOO-LONG")
        .replace(">F<", ">female<")
        .replace("FFS", "SITTING")
        .replace("1.3.12.2.1107.5.2.19.45070.1.", "1.3.x.")
        .replace("09:41:07", "25:00:00")
    )
    info = read_study_info(xml)
    assert info.patient_birth_date == info.accession_number == info.patient_sex == ""
    assert info.patient_position == info.frame_of_reference_uid == info.study_time == ""
    assert info.patient_id == "PID-0042"  # the rest is kept


def test_value_converters() -> None:
    assert dicom_date("2024-05-17Z") == "20240517"
    assert dicom_date("2024-13-01") == ""
    assert dicom_time("07:08:09.123456") == "070809.123456"
    assert dicom_time("noon") == ""
    assert valid_uid("1.2.840.10008.5.1.4.1.1.4") == "1.2.840.10008.5.1.4.1.1.4"
    assert valid_uid("1.02.3") == valid_uid("1." + "1" * 70) == ""


def test_malformed_xml_is_an_invalid_header() -> None:
    with pytest.raises(InvalidHeaderError, match="not well-formed"):
        read_study_info("<ismrmrdHeader>")
    with pytest.raises(InvalidHeaderError, match="<encoding>"):
        read_study_info("<encoding/>")


@pytest.mark.skipif(shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None, reason="ismrmrd-tools")
def test_the_header_of_a_real_mrd_file(tmp_path: Path) -> None:
    subprocess.run(
        ["ismrmrd_generate_cartesian_shepp_logan", "-m", "32", "-c", "2", "-o", str(tmp_path / "sl.h5")],
        check=True,
        capture_output=True,
    )
    with h5py.File(tmp_path / "sl.h5") as file:
        xml = file["dataset/xml"][0].decode()
    info = read_study_info(xml)
    assert info.institution_name == "ISMRM Synthetic Imaging Lab"
    assert info.imaging_frequency_mhz == pytest.approx(63.5)
    assert info.patient_name == ""
