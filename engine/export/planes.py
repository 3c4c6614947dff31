"""A plane of a volume as a picture: axial slices with the slice's layers, coronal and sagittal planes
resliced from the cached volume (grayscale, drawn at their true aspect), optionally a mask drawn over it,
and a stored series' 3D annotations (``volume_roi``) where they cross a coronal or sagittal plane."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from scipy import ndimage

from engine.analysis.volume.annotation import VOLUME_ROI, volume_roi_mask
from engine.analysis.volume.plane_coords import plane_section
from engine.errors import ErrorCode, MedVisionError
from engine.export.render import (
    ANNOTATION_STYLES,
    FILL_ALPHA,
    LINE_ALPHA,
    mask_patch,
    resample_mask,
)
from engine.imaging.decode import CT_PRESETS, window_to_uint8

if TYPE_CHECKING:
    from engine.services import Services

#: CT soft-tissue window (center, width) in HU; other modalities use the plane's 1st..99th percentile.
CT_WINDOW = CT_PRESETS["Soft tissue (mediastinum, abdomen)"]


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


def plane_window(values: np.ndarray, modality: str | None) -> tuple[float, float]:
    """(center, width) for a plane: CT's soft-tissue window, else the plane's 1st..99th percentile."""
    if modality == "CT":
        return CT_WINDOW
    low, high = (float(v) for v in np.percentile(values, (1, 99)))
    return (low + high) / 2, max(high - low, 1.0)


def windowed_picture(values: np.ndarray, pixel_spacing_mm: tuple[float, float], window: tuple[float, float],
                     max_side: int | None) -> Image.Image:
    """A plane's values windowed to 8-bit RGB, scaled to its (row, column) spacing and fitted in ``max_side``."""
    center, width = window
    picture = Image.fromarray(window_to_uint8(np.ascontiguousarray(values), center, width)).convert("RGB")
    row_mm, column_mm = (float(v) for v in pixel_spacing_mm)
    step = min(row_mm, column_mm)
    height, width_px = values.shape[0] * row_mm / step, values.shape[1] * column_mm / step
    scale = min(1.0, (max_side or max(height, width_px)) / max(height, width_px))
    size = (max(1, round(width_px * scale)), max(1, round(height * scale)))
    if size != picture.size:
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    return picture


def plane_picture(services: Services, session_id: str, plane: str, index: int, series_uid: str | None,
                  max_side: int | None) -> tuple[Image.Image, dict[str, Any]]:
    """A coronal or sagittal (or axial) plane, windowed to 8 bits and scaled to its spacing."""
    values, info = services.volumes.plane_image(session_id, plane, index, series_uid)
    center, width = plane_window(values, info.get("modality"))
    picture = windowed_picture(values, info["pixel_spacing_mm"], (center, width), max_side)
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
        found = volume_roi_mask(coordinates)
        section = plane_section(*found, plane, index, shape) if found is not None else None
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
def picture_with_mask(picture: Image.Image, mask: np.ndarray, color: tuple[int, int, int]) -> Image.Image:
    """``picture`` (a :func:`windowed_picture`) with the plane's boolean ``mask`` filled and outlined over it."""
    union = resample_mask(mask, picture.size)
    patch, corner = mask_patch(union, max(2, round(max(picture.size) / 300)), color)
    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    layer.paste(patch, corner)
    return Image.alpha_composite(picture.convert("RGBA"), layer).convert("RGB")
