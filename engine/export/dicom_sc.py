"""The rendered overlay as a Secondary Capture and the PDF report as Encapsulated PDF.

Both join the source image's study in a new series, so the PACS files them with the
radiograph they describe.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from engine.errors import ErrorCode, MedVisionError
from engine.export.artifact import Artifact
from engine.export.bundle import ExportBundle
from engine.export.dicom_common import (
    MANUFACTURER,
    STUDY_KEYWORDS,
    artifact,
    dicom_now,
    new_uid,
    patient_orientation,
    software_versions,
    source_dataset,
    term,
)
from engine.vocabulary import UNTRAINED_OUTPUTS, UNTRAINED_OVERLAYS_HIDDEN

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def secondary_capture(bundle: ExportBundle, rendered: dict[str, np.ndarray]) -> list[Artifact]:
    """One SC per rendered image (RGB uint8, rows x cols x 3, annotations burned in)."""
    artifacts = []
    for item in bundle.images:
        if item.image_id not in rendered:
            continue
        pixels = np.ascontiguousarray(rendered[item.image_id])
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise MedVisionError(ErrorCode.EXPORT_FAILED, "the rendered overlay must be RGB uint8 (rows, cols, 3)",
                                 image_id=item.image_id, shape=list(pixels.shape), dtype=str(pixels.dtype))
        source = source_dataset(item)
        capture = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=new_uid(), series_number=903,
            sop_instance_uid=new_uid(), instance_number=1, manufacturer=MANUFACTURER,
            patient_orientation=patient_orientation(source),
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        )
        capture.PatientOrientation = source.get("PatientOrientation")
        capture.Laterality = source.get("Laterality")
        capture.BurnedInAnnotation = "YES"
        capture.ConversionType = "WSD"
        capture.SeriesDescription = "MedVision overlay"
        capture.DerivationDescription = "Source image with MedVision annotations and masks burned in"
        capture.SourceImageSequence = [_reference(source)]
        note = untrained_overlay_note(bundle)
        if note:
            capture.ImageComments = note
        artifacts.append(artifact("overlay", capture))
    return artifacts


def untrained_overlay_note(bundle: ExportBundle) -> str | None:
    """What a capture of an untrained run says about its overlays (Image Comments), or None."""
    if bundle.model_trained is not False:
        return None
    if bundle.options.show_untrained_overlays:
        return f"{UNTRAINED_OUTPUTS} Their masks and boxes are burned in on request and are not meaningful."
    return f"{UNTRAINED_OVERLAYS_HIDDEN} They are not burned in; only the user's drawings and measurements are."


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def encapsulated_pdf(bundle: ExportBundle, pdf_bytes: bytes) -> list[Artifact]:
    """The PDF report as one Encapsulated PDF instance in the first image's study."""
    if not pdf_bytes.startswith(b"%PDF"):
        raise MedVisionError(ErrorCode.EXPORT_FAILED, "the report to encapsulate is not a PDF")
    if not bundle.images:
        raise MedVisionError(ErrorCode.EXPORT_FAILED, "the session has no image, so no study to file the PDF in")
    source = source_dataset(bundle.images[0])
    ds = Dataset()
    for keyword in STUDY_KEYWORDS:
        if keyword in source:
            ds[keyword] = source[keyword]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        ds.setdefault(keyword, None)  # type 2: present, empty when the source lacks it
    date, time = dicom_now()
    ds.SOPClassUID, ds.SOPInstanceUID = ENCAPSULATED_PDF, new_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "DOC", new_uid(), 904
    ds.SeriesDescription = "MedVision report"
    ds.Manufacturer, ds.SoftwareVersions = MANUFACTURER, list(software_versions(bundle))
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.AcquisitionDateTime = date + time
    ds.BurnedInAnnotation = "YES"  # the report prints the patient block
    ds.DocumentTitle = "MedVision report"
    ds.ConceptNameCodeSequence = [term("pdf_report")]
    ds.SourceInstanceSequence = [_reference(source)]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf_bytes + b"\0" * (len(pdf_bytes) % 2)
    ds.EncapsulatedDocumentLength = len(pdf_bytes)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ENCAPSULATED_PDF, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return [artifact("report", ds)]
