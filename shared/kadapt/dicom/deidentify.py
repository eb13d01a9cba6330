"""De-identification of the DICOM series kadapt writes: a subset of the DICOM PS3.15 Annex E Basic
Application Confidentiality Profile, covering every attribute the writer can fill from an MRD header.

Actions (PS3.15 Table E.1-1 letters):

- Z, kept with an empty value (type 2 attributes must stay present): Patient's Name, Patient ID,
  Patient's Birth Date, Patient's Sex, Accession Number, Referring Physician's Name, Study ID, Study
  Date, Study Time, Content Date, Content Time.
- X, removed: patient weight, size, age, address, birth time, other IDs and names, comments; institution
  name, address and department, station name, device serial number, operator and physician names;
  series / acquisition / instance-creation dates and times; study description, protocol name,
  derivation description, image comments; every private attribute.
- U, replaced: Study, Series, SOP Instance and Frame of Reference UIDs get fresh random UIDs, one
  mapping per call so the series stays consistent (the file meta's Media Storage SOP Instance UID
  follows). Fresh rather than hashed: a hash of a Siemens measurement id (which embeds the patient id)
  could be recomputed by anyone holding the id.
- Kept: the kadapt-written Series Description (it names the policy, never header text), the pixel data,
  geometry, sequence timing, equipment type (Manufacturer, field strength).

Dates are removed, not shifted (Longitudinal Temporal Information Modified = REMOVED). Patient
Identity Removed is YES, and De-identification Method plus its code sequence (DCM 113100, Basic
Application Confidentiality Profile) record what was done. Nested sequences are not walked: the
writer puts no identifying data in any.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

DEIDENTIFICATION_METHOD = "kadapt: PS3.15 basic profile subset; dates removed; new UIDs"

EMPTIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ContentDate",
    "ContentTime",
)
REMOVED = (
    "PatientWeight",
    "PatientSize",
    "PatientAge",
    "PatientAddress",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientComments",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "OperatorsName",
    "PerformingPhysicianName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "StudyDescription",
    "ProtocolName",
    "DerivationDescription",
    "ImageComments",
)
REPLACED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _replacement(uid: str, mapping: dict[str, str]) -> str:
    if uid not in mapping:
        mapping[uid] = str(generate_uid())
    return mapping[uid]


def deidentify_datasets(datasets: Sequence[Dataset]) -> None:
    """De-identify ``datasets`` (one series or study) in place, as the module docstring lists.

    UIDs are remapped consistently across the sequence: equal UIDs before are equal after.
    """
    mapping: dict[str, str] = {}
    for dataset in datasets:
        for keyword in EMPTIED:
            if keyword in dataset:
                dataset[keyword].value = ""
        for keyword in REMOVED:
            if keyword in dataset:
                del dataset[keyword]
        dataset.remove_private_tags()
        for keyword in REPLACED_UIDS:
            if keyword in dataset:
                setattr(dataset, keyword, _replacement(str(dataset[keyword].value), mapping))
        meta = getattr(dataset, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in dataset:
            meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = DEIDENTIFICATION_METHOD
        code = Dataset()
        code.CodeValue = "113100"
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        dataset.DeidentificationMethodCodeSequence = [code]
        dataset.LongitudinalTemporalInformationModified = "REMOVED"
