"""kadapt magnitude images as a DICOM MR Image Storage series (one instance per slice and frame).

Content (``docs/dicom.md`` has the whole table): SOP class MR Image Storage, explicit VR little endian;
pixels uint16 over the full 16 bits, one scale for the whole series so intensities compare across
slices and frames, Rescale Slope / Intercept recorded so ``stored * slope + intercept`` gives the
float magnitude back within half a step; geometry from :mod:`kadapt.dicom.geometry` (images stored
``(Rows = W, Columns = H)``, readout along the columns, as kadapt's MRD images); patient, study and
system fields from the MRD XML header (:mod:`kadapt.dicom.study`); frame ``f`` is Temporal Position
Identifier ``f + 1``; Instance Number runs slice-major from 1 like the MRD ``image_index``.

UIDs. Study: the header's ``studyInstanceUID``, else derived from its ``measurementID`` study part, else
random. Series: derived from ``measurementID`` (under ``seriesInstanceUIDRoot`` when present), the
series number, the description and ``uid_entropy``, else random. Frame of reference: the header's, else
derived from ``measurementID``, else random. SOP instances: derived from the series UID and the
instance number. Derived UIDs (``pydicom.uid.generate_uid`` over those strings) make a second export of
the same images replace the first in a PACS instead of duplicating it; de-identified series always get
fresh UIDs (:mod:`kadapt.dicom.deidentify`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from kadapt.dicom.deidentify import deidentify_datasets
from kadapt.dicom.geometry import (
    SliceGeometry,
    default_slice_geometry,
    image_plane,
    pixel_spacing_mm,
    slice_spacing_mm,
    slice_thickness_mm,
)
from kadapt.dicom.study import StudyInfo, read_study_info
from kadapt.errors import EncodeOutOfRangeError, GeometryMismatchError, InvalidInputError, NonFiniteDataError
from kadapt.mrd.header import EncodingInfo, parse_header

DICOM_MEDIA_TYPE = "application/dicom"
STORED_MAX = 0xFFFF
_SERIES_NUMBER_MAX = 2**31 - 1


def _ds(value: float) -> str:
    """A Decimal String (at most 16 characters, so about 10 significant digits)."""
    return str(format_number_as_ds(float(value) + 0.0))  # + 0.0 turns -0.0 into 0.0


def _mm(value: float) -> str:
    # Positions to a nanometre: drops float noise such as 1e-14 that would cost the DS its digits.
    return _ds(round(float(value), 6))


def _software_version() -> str:
    try:
        return metadata.version("kadapt")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class QuantisedSeries:
    """uint16 pixels ``(slice, frame, H, W)`` with ``value = stored * slope + intercept``."""

    stored: NDArray[np.uint16]
    slope: float
    intercept: float


def quantise_series(magnitude: NDArray[np.floating]) -> QuantisedSeries:
    """Float ``(slice, frame, H, W)`` -> :class:`QuantisedSeries` over ``0 .. 65535``, one scale for the
    volume; slope and intercept are the values as a DICOM Decimal String records them, so a reader's
    ``stored * slope + intercept`` is within ``slope / 2`` of the input."""
    volume = np.asarray(magnitude)
    low = min(0.0, float(volume.min())) if volume.size else 0.0
    high = float(volume.max()) if volume.size else 0.0
    span = high - low
    slope = float(_ds(span / STORED_MAX)) if span > 0 else 1.0
    intercept = float(_ds(low))
    stored = np.clip(np.rint((volume - intercept) / slope), 0, STORED_MAX).astype(np.uint16)
    return QuantisedSeries(stored, slope, intercept)


def dicom_file_name(slice_index: int, frame: int) -> str:
    """File name of the instance of ``(slice_index, frame)`` in a series folder or ZIP archive."""
    return f"slice{slice_index:03d}_frame{frame:03d}.dcm"


def _check_volume(magnitude: NDArray[np.floating], encoding: EncodingInfo) -> NDArray[np.floating]:
    volume = np.asarray(magnitude)
    if volume.ndim != 4 or np.iscomplexobj(volume) or not np.issubdtype(volume.dtype, np.number):
        raise GeometryMismatchError(
            f"magnitude must be real (slice, frame, H, W), got {volume.dtype} shape {volume.shape}"
        )
    if not np.all(np.isfinite(volume)):
        raise NonFiniteDataError(f"magnitude volume {volume.shape} contains NaN or Inf")
    expected = (encoding.height, encoding.width)
    if volume.shape[2:] != expected:
        raise GeometryMismatchError(
            f"images are (H, W) = {volume.shape[2:]}, the header's recon readout x encoded phase "
            f"matrix is {expected}"
        )
    # float32 keeps the rounding error of the 16-bit steps below 0.01 step at a quarter of float64's memory.
    return volume.astype(np.float64 if volume.dtype == np.float64 else np.float32, copy=False)


def _series_uids(
    info: StudyInfo, series_number: int, series_description: str, uid_entropy: Sequence[str]
) -> tuple[str, str, str]:
    """(study, series, frame of reference) UIDs as the module docstring describes."""
    measurement = info.measurement_id
    study = info.study_instance_uid or str(
        generate_uid(entropy_srcs=["kadapt-study", info.study_key]) if measurement else generate_uid()
    )
    if measurement or info.series_instance_uid_root:
        root = info.series_instance_uid_root
        prefix = f"{root}." if root else PYDICOM_ROOT_UID
        sources = ["kadapt-series", measurement, str(series_number), series_description, *uid_entropy]
        series = str(generate_uid(prefix=prefix, entropy_srcs=sources))
    else:
        series = str(generate_uid())
    frame_of_reference = info.frame_of_reference_uid or str(
        generate_uid(entropy_srcs=["kadapt-frame-of-reference", measurement])
        if measurement
        else generate_uid()
    )
    return study, series, frame_of_reference


def _series_attributes(
    info: StudyInfo,
    encoding: EncodingInfo,
    quantised: QuantisedSeries,
    *,
    series_description: str,
    series_number: int,
    frames: int,
    spacing_between_slices: float,
    created_at: datetime,
) -> dict[str, object]:
    """Attributes every instance of the series shares (keyword -> value)."""
    top = float(np.percentile(quantised.stored, 99.5)) * quantised.slope + quantised.intercept
    width = top - quantised.intercept if top > quantised.intercept else 1.0
    scanner = f"{info.system_vendor} {info.system_model}".strip()
    derivation = "kadapt reconstruction from MRD raw data" + (f" acquired on {scanner}" if scanner else "")
    attributes: dict[str, object] = {
        "SpecificCharacterSet": "ISO_IR 192",
        "SOPClassUID": MRImageStorage,
        # Value 3 is required in MR images; OTHER is the defined term for an image that is no map.
        "ImageType": ["DERIVED", "PRIMARY", "OTHER"],
        "Modality": "MR",
        "Manufacturer": "kadapt",
        "ManufacturerModelName": "kadapt",
        "SoftwareVersions": _software_version(),
        "InstanceCreationDate": created_at.strftime("%Y%m%d"),
        "InstanceCreationTime": created_at.strftime("%H%M%S"),
        "ContentDate": created_at.strftime("%Y%m%d"),
        "ContentTime": created_at.strftime("%H%M%S"),
        "DerivationDescription": derivation,
        # Patient and study (type 2: present, empty when the header has nothing).
        "PatientName": info.patient_name,
        "PatientID": info.patient_id,
        "PatientBirthDate": info.patient_birth_date,
        "PatientSex": info.patient_sex,
        "StudyDate": info.study_date,
        "StudyTime": info.study_time,
        "StudyID": info.study_id,
        "AccessionNumber": info.accession_number,
        "ReferringPhysicianName": info.referring_physician,
        "SeriesNumber": series_number,
        "SeriesDescription": series_description,
        "PatientPosition": info.patient_position,
        "Laterality": "",  # type 2C: the header never says which side
        "PositionReferenceIndicator": "",
        # MR image module.
        "ScanningSequence": info.scanning_sequence,
        "SequenceVariant": "NONE",
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "EchoTime": _ds(info.echo_time_ms) if info.echo_time_ms is not None else "",
        "RepetitionTime": _ds(info.repetition_time_ms) if info.repetition_time_ms is not None else "",
        "EchoTrainLength": "",
        "ImagedNucleus": "1H",
        "InPlanePhaseEncodingDirection": "COL",  # phase encode runs down the columns (rows = W)
        "SliceThickness": _ds(slice_thickness_mm(encoding)),
        "SpacingBetweenSlices": _ds(spacing_between_slices),
        "PixelSpacing": [_ds(step) for step in pixel_spacing_mm(encoding)],
        "NumberOfTemporalPositions": frames,
        # Image pixel module: unsigned 16-bit greyscale.
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": encoding.width,
        "Columns": encoding.height,
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 0,
        "RescaleIntercept": _ds(quantised.intercept),
        "RescaleSlope": _ds(quantised.slope),
        "WindowCenter": _ds(quantised.intercept + width / 2.0),
        "WindowWidth": _ds(width),
    }
    if width < 1.0:  # LINEAR windows must be at least 1 wide; LINEAR_EXACT takes any positive width
        attributes["VOILUTFunction"] = "LINEAR_EXACT"
    if info.scanning_sequence == "IR" and info.inversion_time_ms is None:
        attributes["InversionTime"] = ""  # type 2C for inversion recovery: present, unknown
    optional: dict[str, object] = {
        "PatientWeight": _ds(info.patient_weight_kg) if info.patient_weight_kg is not None else None,
        "PatientSize": _ds(info.patient_size_m) if info.patient_size_m is not None else None,
        "StudyDescription": info.study_description,
        "BodyPartExamined": info.body_part,
        "SeriesDate": info.series_date,
        "SeriesTime": info.series_time,
        "ProtocolName": info.protocol_name,
        "SequenceName": info.sequence_name,
        "InstitutionName": info.institution_name,
        "StationName": info.station_name,
        "MagneticFieldStrength": _ds(info.field_strength_t) if info.field_strength_t is not None else None,
        "ImagingFrequency": _ds(info.imaging_frequency_mhz)
        if info.imaging_frequency_mhz is not None
        else None,
        "InversionTime": _ds(info.inversion_time_ms) if info.inversion_time_ms is not None else None,
        "FlipAngle": _ds(info.flip_angle_deg) if info.flip_angle_deg is not None else None,
        "CardiacNumberOfImages": frames if frames > 1 else None,
    }
    attributes.update({keyword: value for keyword, value in optional.items() if value})
    return attributes


def dicom_datasets(
    magnitude: NDArray[np.floating],
    header_xml: str,
    *,
    series_description: str,
    deidentify: bool = False,
    series_number: int = 1,
    slice_geometry: Mapping[int, SliceGeometry] | None = None,
    frame_interval_ms: float | None = None,
    uid_entropy: Sequence[str] = (),
    only: Iterable[tuple[int, int]] | None = None,
    created_at: datetime | None = None,
) -> list[Dataset]:
    """The DICOM series of ``magnitude`` float ``(slice, frame, H, W)`` as in-memory datasets, one per
    (slice, frame) in slice-major order (``only``: just these ``(slice, frame)`` pairs, same series UIDs
    and scaling).

    ``header_xml``: the scan's MRD XML header (H must be its recon readout, W its encoded phase matrix);
    ``slice_geometry``: slice index -> :class:`SliceGeometry` from the acquisition headers
    (``slice_geometry_from_acquisitions``), covering every slice; None: the default axial stack;
    ``frame_interval_ms``: sets Trigger Time ``f * interval`` for cine frames; ``uid_entropy``: strings
    mixed into the derived series UID (the gateway passes the scan id, so two scans of one MRD header
    never share a series); ``deidentify``: :func:`kadapt.dicom.deidentify.deidentify_datasets`.
    Raises :class:`GeometryMismatchError` (shape, geometry), :class:`NonFiniteDataError`,
    :class:`EncodeOutOfRangeError` (``only`` outside the volume), :class:`InvalidInputError`.
    """
    encoding = parse_header(header_xml)
    volume = _check_volume(magnitude, encoding)
    slices, frames = volume.shape[0], volume.shape[1]
    if not 0 <= series_number <= _SERIES_NUMBER_MAX:
        raise InvalidInputError(f"series_number={series_number} outside 0..{_SERIES_NUMBER_MAX}")
    if frame_interval_ms is not None and not (np.isfinite(frame_interval_ms) and frame_interval_ms >= 0):
        raise InvalidInputError(f"frame_interval_ms={frame_interval_ms} must be a finite number >= 0")
    description = " ".join(series_description.replace("\\", "/").split())[:64]
    thickness = slice_thickness_mm(encoding)
    geometry = dict(slice_geometry) if slice_geometry else default_slice_geometry(slices, thickness)
    missing = sorted(set(range(slices)) - set(geometry))
    if missing:
        raise GeometryMismatchError(f"slice_geometry has no entry for slice(s) {missing} of {slices}")
    wanted = [(s, f) for s in range(slices) for f in range(frames)] if only is None else list(only)
    for s, f in wanted:
        if not (0 <= s < slices and 0 <= f < frames):
            raise EncodeOutOfRangeError(f"image slice={s} frame={f} outside the volume ({slices}, {frames})")

    info = read_study_info(header_xml)
    quantised = quantise_series(volume)
    study_uid, series_uid, frame_uid = _series_uids(info, series_number, description, uid_entropy)
    shared = _series_attributes(
        info,
        encoding,
        quantised,
        series_description=description,
        series_number=series_number,
        frames=frames,
        spacing_between_slices=slice_spacing_mm({s: geometry[s] for s in range(slices)}, thickness),
        created_at=created_at or datetime.now(),
    )
    spacing = pixel_spacing_mm(encoding)
    datasets: list[Dataset] = []
    for s, f in wanted:
        instance_number = s * frames + f + 1
        plane = image_plane(geometry[s], encoding.height, encoding.width, spacing)
        dataset = Dataset()
        for keyword, value in shared.items():
            setattr(dataset, keyword, value)
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.FrameOfReferenceUID = frame_uid
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, "instance", str(instance_number)])
        dataset.InstanceNumber = instance_number
        dataset.TemporalPositionIdentifier = f + 1
        if frame_interval_ms is not None:
            dataset.ScanOptions = "CG"  # Trigger Time belongs to cardiac-gated images
            dataset.TriggerTime = _ds(f * frame_interval_ms)
        dataset.ImageOrientationPatient = [_ds(round(v, 9)) for v in plane.orientation]
        dataset.ImagePositionPatient = [_mm(v) for v in plane.position]
        dataset.SliceLocation = _mm(plane.slice_location)
        # Stored (Rows = W, Columns = H): the readout runs along the columns, as in kadapt's MRD images.
        dataset.PixelData = np.ascontiguousarray(quantised.stored[s, f].T, dtype="<u2").tobytes()
        dataset.file_meta = _file_meta(dataset.SOPInstanceUID)
        datasets.append(dataset)
    if deidentify:
        deidentify_datasets(datasets)
    return datasets


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "KADAPT"
    return meta


def dicom_bytes(dataset: Dataset) -> bytes:
    """One dataset as a DICOM Part 10 file (preamble, file meta, explicit VR little endian)."""
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom_series(
    magnitude: NDArray[np.floating],
    header_xml: str,
    out_dir: Path,
    *,
    series_description: str,
    deidentify: bool = False,
    series_number: int = 1,
    slice_geometry: Mapping[int, SliceGeometry] | None = None,
    frame_interval_ms: float | None = None,
    uid_entropy: Sequence[str] = (),
) -> list[Path]:
    """Write the series of ``magnitude`` float ``(slice, frame, H, W)`` into ``out_dir`` (created if
    needed), one ``slice<sss>_frame<fff>.dcm`` per (slice, frame); returns the paths in slice-major
    order. Arguments and errors as :func:`dicom_datasets`."""
    datasets = dicom_datasets(
        magnitude,
        header_xml,
        series_description=series_description,
        deidentify=deidentify,
        series_number=series_number,
        slice_geometry=slice_geometry,
        frame_interval_ms=frame_interval_ms,
        uid_entropy=uid_entropy,
    )
    frames = int(np.asarray(magnitude).shape[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for index, dataset in enumerate(datasets):
        path = out_dir / dicom_file_name(index // frames, index % frames)
        dcmwrite(path, dataset, enforce_file_format=True)
        paths.append(path)
    return paths
