"""A plane of a stored volume series as a picture: axial slices with the slice's layers, coronal and
sagittal planes resliced from the cached volume (grayscale, drawn at their true aspect) with the
series' 3D annotations (``volume_roi``) where they cross the plane."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from scipy import ndimage

from engine.analysis.volume.annotation import VOLUME_ROI, volume_roi_mask
from engine.analysis.volume.plane_coords import plane_section
from engine.errors import ErrorCode, MedVisionError
from engine.export.render import ANNOTATION_STYLES, FILL_ALPHA, LINE_ALPHA
from engine.imaging.decode import window_to_uint8

if TYPE_CHECKING:
    from engine.services import Services

#: CT soft-tissue window (center, width) in HU; other modalities use the plane's 1st..99th percentile.
CT_WINDOW = (40.0, 400.0)


def axial_image_id(services: Services, session_id: str, index: int, series_uid: str | None) -> str:
    """The stored image that is slice ``index`` of the series' main stack (its layers are that image's)."""
    _, info = services.volumes.plane_image(session_id, "axial", index, series_uid)
    if info.get("image_id"):
        return str(info["image_id"])
    marks = services.volumes.image_stacks(session_id)
    for image_id, mark in marks.items():
        if mark["stack"] == info["stack"] and mark["z"] == index:
            return image_id
    raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, f"slice {index} is part of a multi-frame object; "
                         "view it by its image", z=index)


def plane_picture(services: Services, session_id: str, plane: str, index: int, series_uid: str | None,
                  max_side: int | None) -> tuple[Image.Image, dict[str, Any]]:
    """A coronal or sagittal (or axial) plane, windowed to 8 bits and scaled to its spacing."""
    values, info = services.volumes.plane_image(session_id, plane, index, series_uid)
    if info.get("modality") == "CT":
        center, width = CT_WINDOW
    else:
        low, high = (float(v) for v in np.percentile(values, (1, 99)))
        center, width = (low + high) / 2, max(high - low, 1.0)
    picture = Image.fromarray(window_to_uint8(np.ascontiguousarray(values), center, width)).convert("RGB")
    row_mm, column_mm = (float(v) for v in info["pixel_spacing_mm"])
    step = min(row_mm, column_mm)
    height, width_px = values.shape[0] * row_mm / step, values.shape[1] * column_mm / step
    scale = min(1.0, (max_side or max(height, width_px)) / max(height, width_px))
    size = (max(1, round(width_px * scale)), max(1, round(height * scale)))
    if size != picture.size:
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    return picture, info | {"window": {"center": center, "width": width}}


def draw_volume_rois(services: Services, session_id: str, picture: Image.Image, plane: str, index: int,
                     info: dict[str, Any]) -> list[dict[str, Any]]:
    """Draw onto ``picture`` (the plane at its display size) the stored ``volume_roi`` annotations of the
    plane's stack where they cross it, filled and outlined in their source's colour; one layer per source."""
    volume = services.volumes.volume(session_id, info["series_uid"], info["stack"])
    shape = volume.shape_zyx
    groups: dict[str, list[np.ndarray]] = {}
    for row in services.store.list_annotations(session_id):
        coordinates = row["coordinates"]
        if row["type"] != VOLUME_ROI or coordinates.get("series_uid") != volume.series_uid \
                or (coordinates.get("stack_key") or "main") != info["stack"] \
                or coordinates.get("volume_shape") != list(shape):
            continue
        section = plane_section(*volume_roi_mask(coordinates), plane, index, shape)
        if section is not None:
            groups.setdefault(row["source"] if row["source"] in ANNOTATION_STYLES else "system", []).append(section)
    layers = []
    for source, sections in groups.items():
        name, color, _ = ANNOTATION_STYLES[source]
        inside = np.logical_or.reduce(sections)
        edge = inside & ~ndimage.binary_erosion(inside)
        alpha = np.where(edge, LINE_ALPHA, np.where(inside, FILL_ALPHA, 0)).astype(np.uint8)
        bands = [Image.new("L", (alpha.shape[1], alpha.shape[0]), c) for c in color] + [Image.fromarray(alpha, "L")]
        overlay = Image.merge("RGBA", bands).resize(picture.size, Image.Resampling.NEAREST)
        picture.paste(overlay, (0, 0), overlay)
        layers.append({"id": f"volume_roi_{source}", "name": f"3D regions ({name})", "kind": "annotation",
                       "count": len(sections), "color": "#{:02x}{:02x}{:02x}".format(*color), "untrained": False,
                       "visible": True})
    return layers
