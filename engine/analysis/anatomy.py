"""Where a region lies on a chest film: lungs and their zones, heart, mediastinum...

Organ masks are ``{label: bool array of the image size}`` (RLE dicts are accepted too)
with torchxrayvision's PSPNet labels (:data:`ORGAN_LABELS`). The labels are
anatomical: on a frontal film displayed the usual way (PA, or AP shown as if PA) the
patient's right is on the image's left, so "Right Lung" is the lung on the left half
of the image. Lung zones are the upper, middle and lower thirds of each lung mask's
own vertical extent (a radiographic convention, not lobes).

Without usable masks the location is estimated from the image geometry (left/right
half, thirds of the height) under the same frontal-film assumption, and the result
says ``"method": "geometric"``.

Coordinates follow :mod:`engine.imaging.regions`: pixel centres on integers, so the
centre of an image ``columns`` wide is ``(columns - 1) / 2`` and mirroring across it
maps column ``c`` to ``columns - 1 - c`` exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.masks import decode_rle

ORGAN_LABELS = (
    "Left Clavicle", "Right Clavicle", "Left Scapula", "Right Scapula", "Left Lung", "Right Lung",
    "Left Hilus Pulmonis", "Right Hilus Pulmonis", "Heart", "Aorta", "Facies Diaphragmatica",
    "Mediastinum", "Weasand", "Spine",
)
#: Plain names used in location strings. "Weasand" is PSPNet's (ChestX-Det's) airway label.
DISPLAY_NAMES = {
    "Left Clavicle": "left clavicle", "Right Clavicle": "right clavicle",
    "Left Scapula": "left scapula", "Right Scapula": "right scapula",
    "Left Lung": "left lung", "Right Lung": "right lung",
    "Left Hilus Pulmonis": "left hilum", "Right Hilus Pulmonis": "right hilum",
    "Heart": "heart", "Aorta": "aorta", "Facies Diaphragmatica": "diaphragm",
    "Mediastinum": "mediastinum", "Weasand": "trachea", "Spine": "spine",
}
LUNG_LABELS = {"Right Lung": "right", "Left Lung": "left"}
#: Bones project over the lungs on a frontal film: a region in the apex "is" in the
#: lung even when the clavicle covers more of it, so bones only lead when nothing else does.
BONE_LABELS = frozenset({"Left Clavicle", "Right Clavicle", "Left Scapula", "Right Scapula", "Spine"})
ZONES = ("upper", "middle", "lower")
#: A structure covering less than this share of the region is not listed as an overlap.
MIN_OVERLAP_FRACTION = 0.05
#: A second lung zone holding at least this share of the region's lung pixels is named
#: too ("middle and lower zones").
SECOND_ZONE_FRACTION = 0.3
#: Geometric fallback: a region with at least this share on the smaller side of the
#: midline is called central rather than right or left.
CENTRAL_SHARE = 0.25
#: Midline sources, most reliable first: the spine is the body's axis; the
#: mediastinum and trachea are near it; the gap between the lungs' medial edges last.
MIDLINE_LABELS = ("Spine", "Mediastinum", "Weasand")


def boolean_masks(organ_masks: dict[str, Any] | None, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The non-empty organ masks as boolean arrays of ``shape`` (RLE dicts decoded).

    A mask of another size is ``INVALID_ARGUMENT`` naming the label; None and empty
    masks are dropped.
    """
    usable: dict[str, np.ndarray] = {}
    for label, mask in (organ_masks or {}).items():
        if mask is None:
            continue
        if isinstance(mask, dict):
            mask = decode_rle(mask)
        if not isinstance(mask, np.ndarray) or mask.shape != tuple(shape):
            got = getattr(mask, "shape", type(mask).__name__)
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT,
                f"organ mask {label!r} has shape {got}, expected the image's {tuple(shape)}",
                label=label,
            )
        mask = mask.astype(bool, copy=False)
        if mask.any():
            usable[label] = mask
    return usable


def estimate_midline(organ_masks: dict[str, Any] | None, columns: int,
                     rows: int | None = None) -> tuple[float, str]:
    """The body midline's x and where it came from.

    The median over rows of each row's mean x in the spine mask (robust to a curved
    or partly missing spine), else the mediastinum, else the trachea ("weasand"),
    else halfway between the lungs' medial edges ("lungs"), else the image centre
    ``(columns - 1) / 2`` ("image centre").
    """
    masks = _first_shape_masks(organ_masks, rows, columns)
    for label in MIDLINE_LABELS:
        mask = masks.get(label)
        if mask is not None:
            return _row_median_centre(mask), label.lower()
    right, left = masks.get("Right Lung"), masks.get("Left Lung")
    if right is not None and left is not None:
        right_edge = float(np.flatnonzero(right.any(axis=0))[-1])
        left_edge = float(np.flatnonzero(left.any(axis=0))[0])
        if right_edge < left_edge:
            return (right_edge + left_edge) / 2.0, "lungs"
    return (columns - 1) / 2.0, "image centre"


def midline_x(organ_masks: dict[str, Any] | None, columns: int) -> tuple[float, str]:
    """``(x, source)`` of the body midline: see :func:`estimate_midline`."""
    return estimate_midline(organ_masks, columns)


def _first_shape_masks(organ_masks: dict[str, Any] | None, rows: int | None,
                       columns: int) -> dict[str, np.ndarray]:
    """Boolean masks for a midline estimate when only the width is known."""
    if not organ_masks:
        return {}
    if rows is None:
        shapes = {getattr(m, "shape", None) for m in organ_masks.values() if isinstance(m, np.ndarray)}
        shapes |= {tuple(m["size"]) for m in organ_masks.values() if isinstance(m, dict) and "size" in m}
        shapes.discard(None)
        if not shapes:
            return {}
        rows = max(shape[0] for shape in shapes)
    return boolean_masks(organ_masks, (rows, columns))


def _row_median_centre(mask: np.ndarray) -> float:
    rows = np.flatnonzero(mask.any(axis=1))
    counts = mask[rows].sum(axis=1)
    sums = (mask[rows] * np.arange(mask.shape[1])).sum(axis=1)
    return float(np.median(sums / counts))


def lung_zones(lung: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of the upper, middle and lower thirds of a lung mask."""
    rows = np.flatnonzero(lung.any(axis=1))
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    cuts = [top + round((bottom - top) * k / 3) for k in range(4)]
    return [(cuts[k], cuts[k + 1]) for k in range(3)]


def locate(region_mask: np.ndarray, organ_masks: dict[str, Any] | None) -> dict[str, Any]:
    """Name the anatomy under a region.

    Parameters
    ----------
    region_mask:
        Boolean mask of the region, at the image size (see
        :func:`engine.imaging.regions.region_mask`).
    organ_masks:
        ``{PSPNet label: bool mask}`` at the same size, or None.

    Returns
    -------
    dict
        ``primary`` ("right lung, lower zone", "heart", ...), ``method``
        ("organ_masks" or "geometric"), ``overlaps`` (``[{"structure", "name",
        "fraction_of_region"}]``, largest first, at least
        :data:`MIN_OVERLAP_FRACTION`), ``zones`` (per lung overlapped: the share of the
        region in its upper/middle/lower zone; geometric: the share in each third of
        the image height), ``side`` ("right", "left", "central" or None) and ``note``
        (None, or what the reader should know).

    The primary structure is the non-bone structure covering most of the region
    (bones project over the lungs); a bone only when no other structure is hit. A
    lung gets its zone; a second zone holding :data:`SECOND_ZONE_FRACTION` of the
    region's lung pixels is named too.
    """
    if not isinstance(region_mask, np.ndarray) or region_mask.ndim != 2:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "locate needs a 2-D region mask")
    region = region_mask.astype(bool, copy=False)
    area = int(np.count_nonzero(region))
    if area == 0:
        raise MedVisionError(ErrorCode.INVALID_REGION, "the region is empty: nothing to locate")
    masks = boolean_masks(organ_masks, region.shape)
    if not masks:
        return _geometric(region, area, "no organ masks")

    overlaps = []
    for label, mask in masks.items():
        fraction = float(np.count_nonzero(region & mask)) / area
        if fraction >= MIN_OVERLAP_FRACTION:
            overlaps.append({"structure": label, "name": DISPLAY_NAMES.get(label, label.lower()),
                             "fraction_of_region": round(fraction, 4)})
    overlaps.sort(key=lambda o: o["fraction_of_region"], reverse=True)
    zones = {}
    for label in LUNG_LABELS:
        lung = masks.get(label)
        if lung is not None and (region & lung).any():
            zones[label] = _zone_shares(region & lung, lung_zones(lung), area)
    note = _orientation_note(masks)
    if not overlaps:
        located = _geometric(region, area, "the region lies outside every segmented structure")
        located.update(method="organ_masks", primary=f"outside the segmented structures; {located['primary']}")
        located["note"] = " ".join(filter(None, [located["note"], note]))
        return located

    soft = [o for o in overlaps if o["structure"] not in BONE_LABELS]
    lead = (soft or overlaps)[0]
    primary = lead["name"]
    if lead["structure"] in LUNG_LABELS:
        shares = zones[lead["structure"]]
        ranked = sorted(ZONES, key=lambda z: shares[z], reverse=True)
        lung_total = sum(shares.values())
        if shares[ranked[1]] >= SECOND_ZONE_FRACTION * lung_total:
            pair = sorted(ranked[:2], key=ZONES.index)
            primary = f"{primary}, {pair[0]} and {pair[1]} zones"
        else:
            primary = f"{primary}, {ranked[0]} zone"
    side = None
    if lead["structure"].startswith(("Right ", "Left ")):
        side = lead["structure"].split(" ", 1)[0].lower()
    return {"primary": primary, "method": "organ_masks", "overlaps": overlaps,
            "zones": {label: {z: round(v, 4) for z, v in shares.items()} for label, shares in zones.items()},
            "side": side, "note": note}


def _zone_shares(inside: np.ndarray, bounds: list[tuple[int, int]], area: int) -> dict[str, float]:
    """Share of the whole region lying in each zone (row band) of ``inside``."""
    per_row = inside.sum(axis=1)
    return {zone: float(per_row[start:stop].sum()) / area for zone, (start, stop) in zip(ZONES, bounds, strict=True)}


def _orientation_note(masks: dict[str, np.ndarray]) -> str | None:
    """A warning when the lung masks contradict the frontal-film convention."""
    right, left = masks.get("Right Lung"), masks.get("Left Lung")
    if right is None or left is None:
        return None
    if np.nonzero(right)[1].mean() > np.nonzero(left)[1].mean():
        return ("the 'Right Lung' mask lies right of the 'Left Lung' mask: the film may be "
                "flipped horizontally; sides follow the mask labels")
    return None


def _geometric(region: np.ndarray, area: int, reason: str) -> dict[str, Any]:
    """Side from the image halves, zone from thirds of the height (frontal film assumed)."""
    rows, columns = region.shape
    centre = (columns - 1) / 2.0
    ys, xs = np.nonzero(region)
    image_left = float(np.count_nonzero(xs < centre)) / area
    image_right = float(np.count_nonzero(xs > centre)) / area
    if min(image_left, image_right) >= CENTRAL_SHARE:
        side = "central"
    else:
        side = "right" if image_left > image_right else "left"  # patient's right = image left
    bounds = [(round(rows * k / 3), round(rows * (k + 1) / 3)) for k in range(3)]
    shares = _zone_shares(region, bounds, area)
    zone = ZONES[min(2, int(ys.mean() * 3 // rows))]
    where = "central" if side == "central" else f"{side} hemithorax"
    return {
        "primary": f"{where}, {zone} zone (geometric estimate)",
        "method": "geometric", "overlaps": [],
        "zones": {z: round(v, 4) for z, v in shares.items()}, "side": side,
        "note": f"{reason}: position estimated from the image halves and thirds, "
                "assuming a frontal chest film with the patient's right on the image's left",
    }
