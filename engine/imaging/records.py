"""The one builder of an image's stored record, from a decoded file or a received header.

Both roads into the store — a file added to a session (``ImageService.add_file``)
and an instance received by the DICOM node (``dicom_node.ingest``) — build the
``images`` row here, so the two can never describe the same object differently.
"""

from __future__ import annotations

from typing import Any

from pydicom import Dataset

from engine.imaging.decode import DecodedImage, dicom_fields
from engine.imaging.image_type import detect_image_type

#: Image types with an automatic analysis pipeline in today's model packs.
AUTO_ANALYSIS_TYPES = frozenset({"CXR"})


#: Modalities whose single-frame instances are slices of a series: analysed as one volume
#: once the series is complete, never image by image.
VOLUME_MODALITIES = frozenset({"CT", "MR"})


def has_auto_analysis(image_type: str | None) -> bool:
    """Whether an image of this type is analysed on arrival (the engine and the node share this rule)."""
    return image_type in AUTO_ANALYSIS_TYPES


def is_series_slice(record: dict[str, Any]) -> bool:
    """Whether an ``images`` row is one slice of a CT/MR series (single frame, with a Series
    Instance UID): the DICOM node queues no image job for it but one volume job for its series."""
    return (record.get("modality") in VOLUME_MODALITIES and int(record.get("frame_count") or 1) == 1
            and bool(record.get("series_instance_uid")))


def arrival_job(record: dict[str, Any]) -> bool:
    """The arrival rule for one image: an image job unless it is a series slice (see above)."""
    return has_auto_analysis(record.get("type")) and not is_series_slice(record)


def image_record(*, fields: dict[str, Any], rows: int | None, columns: int | None, frame_count: int,
                 detected_type: str, type_reason: str, type_confidence: float, image_type: str | None = None,
                 source_name: str, source_path: str | None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``images`` row: identity ``fields`` (as :func:`dicom_fields` makes them), size, and the type.

    ``image_type`` is the user's override; without it the detected type is used.
    """
    return {
        "source_path": source_path,
        "source_name": source_name,
        "type": image_type or detected_type,
        "type_source": "user" if image_type else "detected",
        "modality": fields.get("modality"),
        "format": fields["format"],
        "rows": rows,
        "columns": columns,
        "frame_count": frame_count,
        "sop_class_uid": fields.get("sop_class_uid"),
        "sop_instance_uid": fields.get("sop_instance_uid"),
        "series_instance_uid": fields.get("series_instance_uid"),
        "study_instance_uid": fields.get("study_instance_uid"),
        "metadata": fields["metadata"] | (metadata or {}) | {
            "type_reason": type_reason, "type_confidence": type_confidence, "detected_type": detected_type},
        "patient": fields.get("patient") or {},
    }


def record_from_decoded(decoded: DecodedImage, *, source_name: str, source_path: str | None,
                        image_type: str | None = None, quality: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row of a decoded file (pixels decoded, so window, spacing and quality are known)."""
    fields = {"format": decoded.format, "metadata": decoded.metadata, "modality": decoded.modality,
              "sop_class_uid": decoded.sop_class_uid, "sop_instance_uid": decoded.sop_instance_uid,
              "study_instance_uid": decoded.study_instance_uid,
              "series_instance_uid": decoded.series_instance_uid, "patient": decoded.patient}
    return image_record(fields=fields, rows=decoded.rows, columns=decoded.columns, frame_count=decoded.frame_count,
                        detected_type=decoded.image_type, type_reason=decoded.type_reason,
                        type_confidence=decoded.type_confidence, image_type=image_type, source_name=source_name,
                        source_path=source_path, metadata={"quality": quality} if quality is not None else None)


def record_from_header(ds: Dataset, *, source_name: str, received_by: str) -> dict[str, Any]:
    """The row of a received instance from its header alone (no pixel decode): window and
    quality are filled when an analysis decodes the pixels."""
    fields = dicom_fields(ds)
    frame_count = int(ds.get("NumberOfFrames") or 1)
    fields["metadata"] = fields["metadata"] | {"format": "dicom", "frame_index": 0, "frame_count": frame_count}
    guess = detect_image_type(fields["metadata"])
    return image_record(fields=fields, rows=_int(ds.get("Rows")), columns=_int(ds.get("Columns")),
                        frame_count=frame_count, detected_type=guess.image_type, type_reason=guess.reason,
                        type_confidence=guess.confidence, source_name=source_name, source_path=None,
                        metadata={"received_by": received_by})


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None
