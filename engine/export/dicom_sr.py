"""The session's results as a DICOM Comprehensive 3D SR (TID 1500 Measurement Report).

Per image: one TID 1501 group per classifier finding (finding type, present/absent,
probability, finding site), one TID 1501 group per mask (organ or interactive, with its
area) and one TID 1410 planar ROI group per drawn region or measurement, whose SCOORD
references the source image. The disclaimer and the untrained-models note travel as
comments. An image never analysed still gets its drawings; a session with nothing to
report at all raises ``EXPORT_FAILED``, since an empty measurement report is no use to
a PACS (and TID 1500 needs at least one group).
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
import pydicom

from engine.errors import ErrorCode, MedVisionError
from engine.export.artifact import Artifact
from engine.export.bundle import ExportBundle, ImageExport
from engine.export.dicom_common import (
    MANUFACTURER,
    artifact,
    codes,
    concept,
    device_observer,
    finding_entry,
    model_for,
    new_uid,
    organ_entry,
    private_coding_scheme,
    source_captures,
    source_dataset,
    term,
)
from engine.imaging.masks import decode_rle
from engine.vocabulary import DISCLAIMER, UNTRAINED_OUTPUTS

Group = hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
UCUM = {"1": "no units", "%": "percent", "mm": "millimeter", "mm2": "square millimeter", "cm2": "square centimeter",
        "deg": "degree", "{pixels}": "pixels", "{square pixels}": "square pixels"}
REGION_TYPES = ("bbox", "polygon", "freehand", "point", "measurement")


def unit(code: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code, "UCUM", UCUM[code])


def tracking(identifier: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=new_uid(), identifier=identifier[:64])


def finding_site(site: str, side: str | None = None, zone: str | None = None) -> hd.sr.FindingSite:
    """The site (a lung zone when the report names one) with its laterality."""
    table = codes()
    location = table["zones"][zone] if zone and site == "Lung" else table["sites"][site]
    laterality = concept(table["sides"][side]) if side else None
    return hd.sr.FindingSite(concept(location), laterality=laterality)


def _findings(bundle: ExportBundle, item: ImageExport) -> list[dict[str, Any]]:
    """The report's findings for this image, else the newest classifier result's."""
    report = bundle.report or {}
    if report.get("findings") and any(i.get("image_id") == item.image_id for i in report.get("images") or []):
        return report["findings"]
    found = (item.classification or {}).get("findings") or []
    return [{"label": f["label"], "present": bool(f.get("positive")), "probability": f["probability"],
             "side": None, "zone": None} for f in found]


def finding_groups(bundle: ExportBundle, item: ImageExport, source: pydicom.Dataset) -> list[Group]:
    """TID 1501 per classifier finding: type, present/absent, probability and site."""
    model = model_for(bundle, ((item.classification or {}).get("model") or {}).get("id"))
    algorithm = hd.sr.AlgorithmIdentification(name=model["id"], version=model.get("version") or "unknown")
    groups: list[Group] = []
    for finding in _findings(bundle, item):
        entry = finding_entry(finding["label"])
        code = concept(entry["code"])
        probability = hd.sr.Measurement(name=term("probability"), value=float(finding["probability"]),
                                        unit=unit("1"), algorithm_id=algorithm)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(f"finding {finding['label']}"), finding_type=code, algorithm_id=algorithm,
            finding_sites=[finding_site(entry["site"], finding.get("side"), finding.get("zone"))],
            measurements=[probability],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=code, value=term("present" if finding["present"] else "absent"))],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        ))
    return groups


def _area(item: ImageExport, area_px: float) -> tuple[float, str]:
    spacing = item.decoded.pixel_spacing_mm
    return (area_px * spacing[0] * spacing[1], "mm2") if spacing else (float(area_px), "{square pixels}")


def mask_groups(bundle: ExportBundle, item: ImageExport, source: pydicom.Dataset) -> list[Group]:
    """TID 1501 per non-empty mask: the organ (or user region) and its area."""
    groups: list[Group] = []
    for layer in item.masks:
        if not layer.area_px:
            continue
        organ = organ_entry(layer.label)
        value, area_unit = _area(item, layer.area_px)
        model = model_for(bundle, layer.model_id) if layer.model_id else None
        algorithm = hd.sr.AlgorithmIdentification(name=model["id"], version=model.get("version") or "unknown") \
            if model else None
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(f"mask {layer.mask_id} {layer.label}"),
            finding_type=concept(codes()["sites"][organ["site"]]) if organ else term("region_of_interest"),
            finding_sites=[finding_site(organ["site"], organ.get("side"))] if organ else None,
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=term("area"), value=value, unit=unit(area_unit))],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        ))
    return groups


def scoord(annotation: dict[str, Any]) -> tuple[str, np.ndarray] | None:
    """The annotation as (graphic type, (column, row) points), None for text."""
    kind, coords = annotation["type"], annotation["coordinates"]
    if kind == "bbox":
        x1, y1, x2, y2 = coords
        return "POLYLINE", np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=float)
    if kind in ("polygon", "freehand"):
        points = np.asarray(coords, dtype=float)
        return "POLYLINE", np.vstack([points, points[:1]])
    if kind == "point":
        return "POINT", np.asarray([coords], dtype=float)
    if kind == "measurement":
        return "POLYLINE", np.asarray(coords["points"], dtype=float)
    return None


def _measurement(coords: dict[str, Any]) -> hd.sr.Measurement | None:
    """A distance (mm when the spacing is known, else pixels) or an angle in degrees."""
    result = coords.get("result") or {}
    if result.get("value") is None:
        return None
    if coords["kind"] == "angle":
        return hd.sr.Measurement(name=term("angle"), value=float(result["value"]), unit=unit("deg"))
    if coords["kind"] == "distance":
        code = "mm" if result.get("unit") == "mm" else "{pixels}"
        return hd.sr.Measurement(name=term("length"), value=float(result["value"]), unit=unit(code))
    if coords["kind"] == "area":
        code = "mm2" if result.get("unit") == "mm2" else "{square pixels}"
        return hd.sr.Measurement(name=term("area"), value=float(result["value"]), unit=unit(code))
    return None


def region_groups(item: ImageExport, source: pydicom.Dataset) -> list[Group]:
    """TID 1410 per drawn region or measurement, its SCOORD on the source image; a drawn
    mask (no outline to draw) is a TID 1501 group with its area."""
    groups: list[Group] = []
    reference = hd.sr.SourceImageForRegion.from_source_image(source)
    for annotation in item.annotations:
        if annotation["type"] == "mask":
            value, area_unit = _area(item, int(decode_rle(annotation["coordinates"]).sum()))
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking(f"annotation {annotation['annotation_id']} {annotation.get('label')}"),
                finding_type=term("region_of_interest"),
                measurements=[hd.sr.Measurement(name=term("area"), value=value, unit=unit(area_unit))],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            ))
        if annotation["type"] not in REGION_TYPES or (shape := scoord(annotation)) is None:
            continue
        graphic_type, points = shape
        measured = _measurement(annotation["coordinates"]) if annotation["type"] == "measurement" else None
        label = annotation.get("label") or annotation["type"]
        finding = codes()["findings"].get(label.replace("_", " "))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(f"annotation {annotation['annotation_id']} {label}"),
            referenced_region=hd.sr.ImageRegion(graphic_type=graphic_type, graphic_data=points,
                                                source_image=reference),
            finding_type=concept(finding["code"]) if finding else term("region_of_interest"),
            measurements=[measured] if measured else None,
        ))
    return groups


def _comments(bundle: ExportBundle) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations" with the disclaimer and the untrained-models note."""
    container = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
                                           relationship_type="CONTAINS")
    notes = [*([UNTRAINED_OUTPUTS] if bundle.model_trained is False else []), DISCLAIMER,
             *([bundle.banner] if bundle.banner else [])]
    container.ContentSequence = [hd.sr.TextContentItem(name=term("comment"), value=note,
                                                       relationship_type="CONTAINS") for note in notes]
    return container


def measurement_report(bundle: ExportBundle) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 document for every image of the bundle."""
    evidence, groups = [], []
    for item in bundle.images:
        source = source_dataset(item)
        evidence.append(source)
        groups += finding_groups(bundle, item, source) + mask_groups(bundle, item, source)
        groups += region_groups(item, source)
    if not groups:
        reason = "; ".join(bundle.missing) or "no findings, masks or drawings"
        raise MedVisionError(ErrorCode.EXPORT_FAILED, f"nothing to put in a DICOM SR: {reason}", missing=bundle.missing)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer(bundle)),
        procedure_reported=term("chest_radiography"), imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_comments(bundle))
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=new_uid(), series_number=901,
        sop_instance_uid=new_uid(), instance_number=1, manufacturer=MANUFACTURER,
        institution_name=bundle.options.institution or None, is_complete=True,
    )
    sr.SeriesDescription = "MedVision measurement report"
    sr.CodingSchemeIdentificationSequence = [private_coding_scheme()]
    return sr


def dicom_sr(bundle: ExportBundle) -> list[Artifact]:
    """The SR, plus the Secondary Captures standing in for non-DICOM sources it references."""
    return [artifact("sr", measurement_report(bundle)), *source_captures(bundle)]
