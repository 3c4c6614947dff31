"""Organ and interactive masks as one DICOM Segmentation (BINARY) per image.

Organ masks overlap (clavicle over lung), so the segments are stacked, not a label map.
Empty masks are left out; an image without non-empty masks gets no SEG.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np

from engine.export.artifact import Artifact
from engine.export.bundle import ExportBundle, ImageExport, MaskLayer
from engine.export.dicom_common import (
    AI_FAMILY,
    MANUFACTURER,
    artifact,
    codes,
    concept,
    model_for,
    new_uid,
    organ_entry,
    software_versions,
    source_dataset,
    term,
)


def segment_description(number: int, layer: MaskLayer, bundle: ExportBundle) -> hd.seg.SegmentDescription:
    """Organ segments are coded anatomy (AUTOMATIC); interactive ones a region of interest
    (SEMIAUTOMATIC, the user clicked)."""
    organ = organ_entry(layer.label) if layer.source == "organ_seg" else None
    model = model_for(bundle, layer.model_id)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"{MANUFACTURER} {model['id']}"[:64], family=AI_FAMILY, version=model.get("version") or "unknown")
    if organ:
        category, kind = term("anatomical_structure"), concept(codes()["sites"][organ["site"]])
        side = organ.get("side")
        modifier = concept(codes()["sides"][side]) if side else None
    else:
        category, kind, modifier = term("abnormal_structure"), term("region_of_interest"), None
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=layer.label[:64], segmented_property_category=category,
        segmented_property_type=kind, algorithm_type="AUTOMATIC" if organ else "SEMIAUTOMATIC",
        algorithm_identification=algorithm, tracking_uid=new_uid(), tracking_id=f"mask {layer.mask_id}",
    )
    if modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [modifier]
    return description


def segmentation(bundle: ExportBundle, item: ImageExport) -> hd.seg.Segmentation | None:
    """The image's non-empty masks as segments 1..n, in stored order."""
    layers = [layer for layer in item.masks if layer.area_px and layer.mask.any()]
    if not layers:
        return None
    source = source_dataset(item)
    stack = np.empty((1, source.Rows, source.Columns, len(layers)), dtype=np.uint8)
    for index, layer in enumerate(layers):
        stack[0, ..., index] = layer.mask
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=stack, segmentation_type="BINARY",
        segment_descriptions=[segment_description(n, layer, bundle) for n, layer in enumerate(layers, start=1)],
        series_instance_uid=new_uid(), series_number=902, sop_instance_uid=new_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=MANUFACTURER,
        software_versions=list(software_versions(bundle)), device_serial_number="0", omit_empty_frames=True,
        content_label="MASKS", content_description="MedVision organ and interactive masks",
        content_creator_name=None,
    )
    seg.SeriesDescription = "MedVision masks"
    seg.PatientOrientation = source.get("PatientOrientation")
    shared = seg.SharedFunctionalGroupsSequence[0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].get("PixelSpacing") or []] \
        if "PixelMeasuresSequence" in shared else []
    if spacing and not all(spacing):
        del shared.PixelMeasuresSequence  # the source's spacing is 0\\0: none is better than a wrong one
    return seg


def dicom_seg(bundle: ExportBundle) -> list[Artifact]:
    """One SEG per image that has non-empty masks."""
    return [artifact("seg", seg) for item in bundle.images if (seg := segmentation(bundle, item)) is not None]
