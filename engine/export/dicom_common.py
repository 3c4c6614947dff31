"""Shared pieces of the DICOM exports (SR, SEG, SC, encapsulated PDF).

Derived objects join the source image's study: DICOM sources keep their patient and
study identifiers (the results go back to the same PACS study). A PNG/JPEG source gets a
Secondary Capture made from its pixels, with UIDs derived from the session and the image
hash, so the SR, SEG and overlay of one export all reference the same instance.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from engine.errors import ErrorCode, MedVisionError
from engine.export.artifact import Artifact
from engine.export.bundle import ExportBundle, ImageExport
from engine.imaging.decode import window_to_uint8

MANUFACTURER = "MedVision"
DEVICE_UID = generate_uid(entropy_srcs=["MedVision workstation software"])
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
AI_FAMILY = hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence")  # CID 7162, of SEG algorithms
# Study-level modules copied onto objects built here without highdicom (encapsulated PDF).
STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "StudyDescription", "SpecificCharacterSet",
)


@lru_cache(maxsize=1)
def codes() -> dict[str, Any]:
    """The coding table (``codes.json``): findings, organs, sites, sides, zones, terms."""
    return json.loads(resources.files("engine.export").joinpath("codes.json").read_text("utf-8"))


def concept(entry: list[str]) -> hd.sr.CodedConcept:
    """A ``[value, scheme, meaning]`` triple from ``codes.json`` as a coded concept."""
    value, scheme, meaning = entry
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def term(name: str) -> hd.sr.CodedConcept:
    return concept(codes()["terms"][name])


def private_coding_scheme() -> pydicom.Dataset:
    """Declares 99MEDVISION, our scheme for labels without a SNOMED concept we are sure of."""
    item = pydicom.Dataset()
    item.CodingSchemeDesignator = "99MEDVISION"
    item.CodingSchemeName = "MedVision classifier labels"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def finding_entry(label: str) -> dict[str, Any]:
    """The finding's code and site; classifier labels come as "Pleural_Thickening" too."""
    found = codes()["findings"].get(label.replace("_", " "))
    if found is None:
        raise MedVisionError(ErrorCode.EXPORT_FAILED, f"no DICOM code for the finding {label!r}", label=label)
    return found


def organ_entry(label: str) -> dict[str, Any] | None:
    """The organ's site (and side) for an organ label, None for other mask labels."""
    return codes()["organs"].get(label)


def software_versions(bundle: ExportBundle) -> tuple[str, ...]:
    """"MedVision" plus each model as ``id version``, for SoftwareVersions and observers."""
    return (MANUFACTURER, *(f"{m['id']} {m.get('version') or ''}".strip() for m in bundle.models))


def model_for(bundle: ExportBundle, model_id: str | None) -> dict[str, Any]:
    return next((m for m in bundle.models if m["id"] == model_id), {"id": model_id or "unknown", "version": ""})


def device_observer(bundle: ExportBundle) -> hd.sr.ObserverContext:
    """This software as the SR device observer; the models used name its model."""
    models = ", ".join(software_versions(bundle)[1:]) or MANUFACTURER
    return hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=models[:64]),
    )


def new_uid() -> str:
    return generate_uid()


def dicom_bytes(dataset: pydicom.Dataset) -> bytes:
    """The dataset as a DICOM file (preamble, File Meta)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def artifact(kind: str, dataset: pydicom.Dataset) -> Artifact:
    """Named from the SOP Instance UID, never from patient data."""
    return Artifact(name=f"{kind}-{dataset.SOPInstanceUID}.dcm", data=dicom_bytes(dataset),
                    media_type="application/dicom")


def dicom_now() -> tuple[str, str]:
    now = datetime.now(UTC)
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def source_dataset(item: ImageExport) -> pydicom.Dataset:
    """The image as DICOM: the received dataset, or a Secondary Capture of a PNG/JPEG source.

    The capture's UIDs come from the session id and the image hash, so every writer of one
    export (and of a later export) references the same instance. A PACS files by Patient
    ID, so a file without one gets ``MV-<session id>``.
    """
    if item.dicom is not None:
        return item.dicom
    session_id, key = item.image.get("session_id", ""), item.image.get("sha256") or item.image_id
    decoded = item.decoded
    if decoded.is_color:
        pixels, photometric = np.ascontiguousarray(decoded.raw[..., :3], dtype=np.uint8), "RGB"
    else:
        pixels = decoded.raw if decoded.raw.dtype == np.uint8 and decoded.raw.ndim == 2 else window_to_uint8(
            decoded.pixels, decoded.window_center, decoded.window_width, decoded.voi_function, invert=decoded.invert)
        photometric = "MONOCHROME2"
    date, time = dicom_now()
    patient = item.image.get("patient") or {}
    capture = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation=photometric, bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=generate_uid(entropy_srcs=["MedVision study", session_id]),
        series_instance_uid=generate_uid(entropy_srcs=["MedVision source series", session_id]),
        sop_instance_uid=generate_uid(entropy_srcs=["MedVision source image", session_id, key]),
        series_number=900, instance_number=1, manufacturer=MANUFACTURER,
        patient_id=patient.get("PatientID") or f"MV-{session_id}", patient_name=patient.get("PatientName"),
        patient_sex=patient.get("PatientSex"), study_id=session_id[:16], study_date=date, study_time=time,
        patient_orientation=("L", "F"), transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
    )
    capture.PatientOrientation = None  # highdicom wants one; a PNG does not say, so type 2 empty
    capture.Laterality = None
    capture.SeriesDescription = "MedVision: image imported from a non-DICOM file"
    capture.ConversionType = "WSD"
    return capture


def patient_orientation(source: pydicom.Dataset) -> tuple[str, str]:
    """The source's orientation for highdicom's SC builder (which requires one); callers
    write the source's own value (possibly empty) back afterwards."""
    values = list(source.get("PatientOrientation") or [])
    return (values[0], values[1]) if len(values) == 2 and all(values) else ("L", "F")


def source_captures(bundle: ExportBundle) -> list[Artifact]:
    """The Secondary Captures standing in for non-DICOM sources (the SR references them)."""
    return [artifact("source", source_dataset(item)) for item in bundle.images if item.dicom is None]
