"""DICOM output of kadapt's images: MR Image Storage series written from the magnitude volume and the
scan's MRD XML header, with optional de-identification (``docs/dicom.md``).

Submodules: ``study`` (MRD XML -> patient / study / system facts in DICOM formats), ``geometry``
(image plane, spacing, default axial stack, per-slice geometry from acquisition headers), ``writer``
(``dicom_datasets``, ``write_dicom_series``, ``dicom_bytes``), ``deidentify`` (the PS3.15 basic-profile
subset). Imports pydicom and numpy only — no web framework, no service.
"""

from kadapt.dicom.deidentify import deidentify_datasets
from kadapt.dicom.geometry import SliceGeometry, slice_geometry_from_acquisitions
from kadapt.dicom.writer import (
    DICOM_MEDIA_TYPE,
    dicom_bytes,
    dicom_datasets,
    dicom_file_name,
    quantise_series,
    write_dicom_series,
)

__all__ = [
    "DICOM_MEDIA_TYPE",
    "SliceGeometry",
    "deidentify_datasets",
    "dicom_bytes",
    "dicom_datasets",
    "dicom_file_name",
    "quantise_series",
    "slice_geometry_from_acquisitions",
    "write_dicom_series",
]
