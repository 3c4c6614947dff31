"""Boxes the specialist step analyses: lung zones, heart, mediastinum, diaphragm.

From the organ masks when they are there (each lung's own upper/middle/lower thirds,
as :func:`engine.analysis.anatomy.lung_zones` defines them), else from the image
geometry (halves and thirds, frontal film assumed: the patient's right is the image's
left). Boxes are ``[x1, y1, x2, y2]`` inclusive pixel bounds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from engine.analysis.anatomy import ZONES, boolean_masks, lung_zones

if TYPE_CHECKING:
    pass

SIDES = ("right", "left")
LUNG_MASKS = {"right": "Right Lung", "left": "Left Lung"}
TARGET_MASKS = {"heart": "Heart", "mediastinum": "Mediastinum", "diaphragm": "Facies Diaphragmatica"}
#: Geometric stand-ins (fractions of width and height: x1, y1, x2, y2) for a target
#: structure when its mask is missing, on a frontal chest film.
GEOMETRIC_TARGETS = {
    "heart": (0.35, 0.45, 0.70, 0.80),
    "mediastinum": (0.40, 0.15, 0.60, 0.60),
    "diaphragm": (0.10, 0.70, 0.90, 0.90),
}


def lung_zone_boxes(organ_masks: dict[str, Any] | None, rows: int, columns: int,
                    source: str = "organ_masks") -> tuple[list[dict], str]:
    """Six boxes (right/left x upper/middle/lower) and the method (``source``, "geometric" or "mixed").

    Each entry is ``{"side", "zone", "box", "method"}``. ``organ_masks`` holds "Right
    Lung"/"Left Lung" masks; ``source`` names where they came from ("organ_masks", or
    "lung_fields_classical" for :mod:`engine.analysis.lung_fields`). A side whose lung
    mask is missing or empty falls back to geometry for that side only.
    """
    masks = boolean_masks(organ_masks, (rows, columns)) if organ_masks else {}
    boxes, methods = [], set()
    for side in SIDES:
        lung = masks.get(LUNG_MASKS[side])
        for zone, box, method in _side_boxes(lung, side, rows, columns, source):
            boxes.append({"side": side, "zone": zone, "box": box, "method": method})
            methods.add(method)
    return boxes, methods.pop() if len(methods) == 1 else "mixed"


def _side_boxes(lung: np.ndarray | None, side: str, rows: int, columns: int,
                source: str) -> list[tuple[str, list[int], str]]:
    if lung is not None and lung.any():
        out = []
        for zone, (start, stop) in zip(ZONES, lung_zones(lung), strict=True):
            band = lung[start:stop]
            cols = np.flatnonzero(band.any(axis=0))
            if cols.size == 0 or stop <= start:
                break
            out.append((zone, [int(cols[0]), int(start), int(cols[-1]), int(stop - 1)], source))
        else:
            return out
    half = columns // 2
    x1, x2 = (0, half - 1) if side == "right" else (half, columns - 1)  # patient's right = image left
    thirds = [round(rows * k / 3) for k in range(4)]
    return [(zone, [x1, thirds[k], x2, thirds[k + 1] - 1], "geometric") for k, zone in enumerate(ZONES)]


def target_box(target: str, organ_masks: dict[str, Any] | None, rows: int, columns: int) -> tuple[list[int], str]:
    """The box of a non-lung target (heart, mediastinum, diaphragm) and its method."""
    masks = boolean_masks(organ_masks, (rows, columns)) if organ_masks else {}
    mask = masks.get(TARGET_MASKS[target])
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())], "organ_masks"
    fx1, fy1, fx2, fy2 = GEOMETRIC_TARGETS[target]
    return [int(columns * fx1), int(rows * fy1), int(columns * fx2) - 1, int(rows * fy2) - 1], "geometric"


def union_box(boxes: list[list[int]]) -> list[int]:
    """The box covering every box of ``boxes``."""
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
