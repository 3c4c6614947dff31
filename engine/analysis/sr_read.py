"""Read the tracked measurement groups of a TID 1500 Measurement Report, whoever produced it.

The content tree is walked with pydicom alone (no producer's classes assumed): the Imaging
Measurements container (DCM 126010) holds Measurement Group containers (DCM 125007); a group
is a lesion when it carries a Tracking Unique Identifier (DCM 112040), with its Tracking
Identifier (DCM 112039), its numeric measurements (NUM: concept, value, UCUM unit), its
region (SCOORD on an image, or SCOORD3D in a frame of reference) and the images it references.
The walk is three levels deep and bounded in items, so a hostile document costs no more than its parse
(which the ingest's limits bound).
"""

from __future__ import annotations

from typing import Any

import pydicom

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.records import SR_SOP_CLASS_PREFIX

IMAGING_MEASUREMENTS = ("126010", "DCM")
MEASUREMENT_GROUP = ("125007", "DCM")
TRACKING_IDENTIFIER = ("112039", "DCM")
TRACKING_UID = ("112040", "DCM")
FINDING = ("121071", "DCM")
#: Most content items visited in one document (the walk goes three levels down, never recursing).
MAX_ITEMS = 100_000
#: UCUM units as the engine writes them (mm, mm2, px, px2, deg) and the factor to get there.
UNITS = {"mm": ("mm", 1.0), "cm": ("mm", 10.0), "um": ("mm", 0.001), "mm2": ("mm2", 1.0), "cm2": ("mm2", 100.0),
         "{pixels}": ("px", 1.0), "{pixel}": ("px", 1.0), "{square pixels}": ("px2", 1.0), "deg": ("deg", 1.0),
         "ml": ("ml", 1.0), "mm3": ("ml", 0.001), "cm3": ("ml", 1.0), "[hnsf'U]": ("HU", 1.0), "1": ("1", 1.0)}


def _code(item: Any, attribute: str = "ConceptNameCodeSequence") -> tuple[str, str, str] | None:
    sequence = item.get(attribute)
    if not sequence:
        return None
    coded = sequence[0]
    return str(coded.get("CodeValue") or coded.get("LongCodeValue") or coded.get("URNCodeValue") or ""), \
        str(coded.get("CodingSchemeDesignator") or ""), str(coded.get("CodeMeaning") or "")


def _is(item: Any, concept: tuple[str, str]) -> bool:
    code = _code(item)
    return code is not None and code[:2] == concept


class _Walk:
    """Counts the items visited across the document (``INVALID_ARGUMENT`` past :data:`MAX_ITEMS`)."""

    def __init__(self) -> None:
        self.visited = 0

    def children(self, item: Any) -> list[Any]:
        items = list(item.get("ContentSequence") or [])
        self.visited += len(items)
        if self.visited > MAX_ITEMS:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"the SR holds more than {MAX_ITEMS} content items")
        return items


def _number(item: Any) -> dict[str, Any] | None:
    """A NUM item as name, value and unit (converted to the engine's unit when known)."""
    measured = item.get("MeasuredValueSequence")
    if not measured:
        return None
    value = measured[0].get("NumericValue")
    unit_code = _code(measured[0], "MeasurementUnitsCodeSequence")
    name = _code(item)
    if value is None or name is None:
        return None
    unit, factor = UNITS.get(unit_code[0] if unit_code else "", (unit_code[0] if unit_code else None, 1.0))
    return {"name": name[2] or name[0], "code": list(name[:2]), "value": round(float(value) * factor, 4),
            "unit": unit}


def _references(item: Any) -> list[str]:
    """SOP Instance UIDs an IMAGE item references."""
    return [str(ref.ReferencedSOPInstanceUID) for ref in item.get("ReferencedSOPSequence") or []
            if ref.get("ReferencedSOPInstanceUID")]


def _region(item: Any, walk: _Walk) -> dict[str, Any]:
    """A SCOORD (image pixels, with the images it is on) or SCOORD3D (patient mm, with its frame of reference)."""
    flat = [float(v) for v in (item.get("GraphicData") or [])]
    if item.ValueType == "SCOORD3D":
        return {"graphic_type": str(item.get("GraphicType") or ""), "space": "patient",
                "points": [flat[i:i + 3] for i in range(0, len(flat) - 2, 3)],
                "frame_of_reference_uid": str(item.get("ReferencedFrameOfReferenceUID") or "") or None,
                "referenced_sop_instance_uids": []}
    images = [uid for child in walk.children(item) if child.get("ValueType") == "IMAGE"
              for uid in _references(child)]
    return {"graphic_type": str(item.get("GraphicType") or ""), "space": "image",
            "points": [flat[i:i + 2] for i in range(0, len(flat) - 1, 2)], "referenced_sop_instance_uids": images}


def _group(group: Any, walk: _Walk) -> dict[str, Any] | None:
    """One measurement group as a lesion; None without a Tracking Unique Identifier."""
    lesion: dict[str, Any] = {"identifier": None, "uid": None, "finding": None, "measurements": [], "regions": [],
                              "referenced_sop_instance_uids": []}
    for item in walk.children(group):
        kind = item.get("ValueType")
        if kind == "TEXT" and _is(item, TRACKING_IDENTIFIER):
            lesion["identifier"] = str(item.get("TextValue") or "")
        elif kind == "UIDREF" and _is(item, TRACKING_UID):
            lesion["uid"] = str(item.get("UID") or "") or None
        elif kind == "CODE" and _is(item, FINDING):
            lesion["finding"] = (_code(item, "ConceptCodeSequence") or ("", "", ""))[2]
        elif kind == "NUM" and (number := _number(item)) is not None:
            lesion["measurements"].append(number)
        elif kind in ("SCOORD", "SCOORD3D"):
            lesion["regions"].append(_region(item, walk))
        elif kind == "IMAGE":
            lesion["referenced_sop_instance_uids"] += _references(item)
    if not lesion["uid"]:
        return None
    for region in lesion["regions"]:
        lesion["referenced_sop_instance_uids"] += region["referenced_sop_instance_uids"]
    lesion["referenced_sop_instance_uids"] = list(dict.fromkeys(lesion["referenced_sop_instance_uids"]))
    first = lesion["measurements"][0] if lesion["measurements"] else {}
    lesion.update(name=first.get("name"), value=first.get("value"), unit=first.get("unit"))
    return lesion


def read_tracked_measurements(dataset: pydicom.Dataset) -> dict[str, Any]:
    """The tracked lesions of a TID 1500 SR (any producer), with the document's study and producer.

    Each lesion: ``identifier``, ``uid``, ``finding``, ``measurements`` (name, code, value, unit),
    ``name``/``value``/``unit`` (the first measurement), ``regions`` (graphic type, points, space,
    referenced images) and ``referenced_sop_instance_uids``. ``INVALID_ARGUMENT`` when the dataset
    is not an SR document or holds no Imaging Measurements container.
    """
    if not str(dataset.get("SOPClassUID") or "").startswith(SR_SOP_CLASS_PREFIX):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "not a DICOM Structured Report (SOP class is not SR)")
    walk = _Walk()
    containers = [item for item in walk.children(dataset)
                  if item.get("ValueType") == "CONTAINER" and _is(item, IMAGING_MEASUREMENTS)]
    if not containers:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "the SR holds no Imaging Measurements (not a TID 1500 report)")
    lesions = []
    for container in containers:
        for group in walk.children(container):
            if group.get("ValueType") == "CONTAINER" and _is(group, MEASUREMENT_GROUP):
                lesion = _group(group, walk)
                if lesion is not None:
                    lesions.append(lesion)
    return {"sop_instance_uid": str(dataset.get("SOPInstanceUID") or ""),
            "study_instance_uid": str(dataset.get("StudyInstanceUID") or ""),
            "study_date": str(dataset.get("StudyDate") or "") or None,
            "manufacturer": str(dataset.get("Manufacturer") or "") or None, "lesions": lesions}
