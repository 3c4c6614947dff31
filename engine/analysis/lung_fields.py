"""Lung fields and the body midline of a frontal chest film by image processing (no training).

Used for a region's anatomy when the organ model is untrained (its masks are noise), so
that side and zone come from the radiograph itself and say so: ``"method":
"lung_fields_classical"``.

How: the display rendering (MONOCHROME1 corrected, so air is dark) is block-averaged to
at most :data:`WORK_SIDE` pixels a side and smoothed. Pixels darker than the Otsu
threshold are candidate air; an erosion cuts the thin bridges between the lung apices and
the air outside the body, and components touching the image border (outside air) are
dropped. The two largest remaining components (each at least :data:`MIN_FIELD_SHARE` of
the image) are the lung cores. Each core then grows, below its own apex, into pixels
under a looser threshold (:data:`LOOSE_FRACTION` of the way from the Otsu threshold to
the mean of the bright class), which recovers the lower lung under soft tissue; it
stays within the core's columns widened by :data:`GROW_MARGIN_SHARE` of the width. The
midline is halfway between the lungs' medial edges (median over the rows both span),
else the brightest column band (the spine) in the central part of the image, else the
image centre.

Sides: on a frontal film displayed the usual way the patient's right is on the image's
left. A DICOM Patient Orientation (0020,0020) whose row direction is ``R`` (the image
shown mirrored) swaps them; the result names the convention it used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from engine.imaging import DecodedImage

METHOD = "lung_fields_classical"
#: Working resolution (longest side, pixels): the lungs are large, this is ample and fast.
WORK_SIDE = 256
#: Smoothing of the working image (pixels), so ribs do not split a lung field.
SMOOTH_SIGMA = 2.0
#: Erosion steps that cut thin dark bridges (apex to outside air) before labelling.
BRIDGE_EROSION = 4
#: A lung core must cover at least this share of the working image.
MIN_FIELD_SHARE = 0.01
#: The grown lung field's threshold: this far from the Otsu threshold towards the bright mean.
LOOSE_FRACTION = 0.3
#: The grown field stays within this share of the image width beside its core's columns.
GROW_MARGIN_SHARE = 0.04
#: The spine is searched for in this central share of the image width.
SPINE_SEARCH_SHARE = 0.4
ZONES = ("upper", "middle", "lower")


@dataclass
class LungFields:
    """The lung fields at the image size, the midline, and how they were found."""

    right: np.ndarray | None = field(repr=False)  # the patient's right lung field (bool, image size)
    left: np.ndarray | None = field(repr=False)
    midline_x: float
    midline_source: str
    patient_right_on_image_left: bool
    orientation_source: str

    @property
    def found(self) -> bool:
        return self.right is not None or self.left is not None

    def describe(self) -> dict[str, Any]:
        """JSON facts about the fields (extents in pixels) for a result's ``anatomy`` section."""
        out: dict[str, Any] = {"midline_x": round(self.midline_x, 1), "midline_source": self.midline_source,
                               "orientation": self.orientation_source}
        for side, mask in (("right", self.right), ("left", self.left)):
            if mask is not None:
                rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
                out[f"{side}_field"] = {"rows": [int(rows[0]), int(rows[-1])],
                                        "columns": [int(columns[0]), int(columns[-1])], "area_px": int(mask.sum())}
        return out


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, 256)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(hist)
    above = below[-1] - below
    weighted = np.cumsum(hist * centres)
    mean_below = weighted / np.maximum(below, 1)
    mean_above = (weighted[-1] - weighted) / np.maximum(above, 1)
    return float(centres[np.argmax(below * above * (mean_below - mean_above) ** 2)])


def _working_image(decoded: DecodedImage) -> tuple[np.ndarray, int]:
    """The display image block-averaged by an integer factor to about WORK_SIDE, smoothed."""
    gray = decoded.display().astype(np.float32)
    if gray.ndim == 3:
        gray = gray.mean(axis=2)
    factor = max(1, int(np.ceil(max(gray.shape) / WORK_SIDE)))
    rows, columns = gray.shape[0] // factor * factor, gray.shape[1] // factor * factor
    small = gray[:rows, :columns].reshape(rows // factor, factor, columns // factor, factor).mean(axis=(1, 3))
    return ndimage.gaussian_filter(small, SMOOTH_SIGMA), factor


def _orientation(decoded: DecodedImage) -> tuple[bool, str]:
    """Whether the patient's right is on the image's left, and what says so."""
    value = decoded.metadata.get("PatientOrientation")
    values = value if isinstance(value, list) else str(value or "").replace("\\", " ").split()
    row_direction = str(values[0]).upper() if values else ""
    if row_direction.startswith("R"):
        return False, f"DICOM Patient Orientation {'/'.join(map(str, values))}: the patient's right is on the image's right"
    if row_direction.startswith("L"):
        return True, f"DICOM Patient Orientation {'/'.join(map(str, values))}: the patient's right is on the image's left"
    return True, "frontal film convention (no Patient Orientation): the patient's right is on the image's left"


def _cores(small: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, float]:
    """The (at most two) lung cores, largest first, the dark mask and the Otsu threshold."""
    threshold = _otsu(small)
    dark = small < threshold
    core = ndimage.binary_erosion(dark, iterations=BRIDGE_EROSION)
    labels, count = ndimage.label(core)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    sizes = ndimage.sum(core, labels, range(1, count + 1)) if count else []
    ranked = sorted(((size, index) for index, size in enumerate(sizes, start=1)
                     if index not in border and size >= MIN_FIELD_SHARE * small.size), reverse=True)
    cores = [ndimage.binary_dilation(labels == index, iterations=BRIDGE_EROSION) & dark for _, index in ranked[:2]]
    return cores, dark, threshold


def _grow(core: np.ndarray, loose: np.ndarray) -> np.ndarray:
    """The core grown into ``loose`` pixels, never above its apex nor far beside it (outside air)."""
    top = int(np.flatnonzero(core.any(axis=1))[0])
    columns = np.flatnonzero(core.any(axis=0))
    margin = round(GROW_MARGIN_SHARE * core.shape[1])
    allowed = np.zeros_like(loose)
    allowed[top:, max(0, int(columns[0]) - margin):int(columns[-1]) + margin + 1] = True
    allowed &= loose
    return ndimage.binary_propagation(core, mask=allowed | core)


def _spine_x(small: np.ndarray) -> float:
    """The brightest column band (the spine) in the central part of the working image."""
    columns = small.shape[1]
    profile = ndimage.uniform_filter1d(small.mean(axis=0), size=max(3, columns // 40))
    half = int(columns * SPINE_SEARCH_SHARE / 2)
    start = columns // 2 - half
    return float(start + int(np.argmax(profile[start:columns // 2 + half + 1])))


def _upsample(mask: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour back to the image size (rows/columns cut by the block average get the edge)."""
    rows = np.minimum(np.arange(shape[0]) // factor, mask.shape[0] - 1)
    columns = np.minimum(np.arange(shape[1]) // factor, mask.shape[1] - 1)
    return mask[rows][:, columns]


def find_lung_fields(decoded: DecodedImage) -> LungFields:
    """The lung fields of a frontal chest film, its midline and side convention (see the module)."""
    small, factor = _working_image(decoded)
    cores, dark, threshold = _cores(small)
    bright_mean = float(small[~dark].mean()) if (~dark).any() else threshold
    loose = ndimage.binary_opening(small < threshold + LOOSE_FRACTION * (bright_mean - threshold), iterations=2)
    fields = [_grow(core, loose) for core in cores]
    fields.sort(key=lambda f: float(np.nonzero(f)[1].mean()))  # image left first
    right_on_left, orientation = _orientation(decoded)
    centre = (decoded.columns - 1) / 2.0
    if len(fields) == 2:
        image_left, image_right = fields
        both = image_left.any(axis=1) & image_right.any(axis=1)
        rows = np.flatnonzero(both)
        medial_left = np.array([np.flatnonzero(image_left[r])[-1] for r in rows])
        medial_right = np.array([np.flatnonzero(image_right[r])[0] for r in rows])
        gaps = medial_right > medial_left
        if gaps.any():
            midline = float(np.median((medial_left[gaps] + medial_right[gaps]) / 2.0))
            source = "between the lung fields' medial edges"
        else:
            midline, source = _spine_x(small), "brightest central column band (spine)"
        # Fields touching across the midline are cut there, so neither side claims the other's pixels.
        cut = int(round(midline))
        image_left[:, cut + 1:] = False
        image_right[:, :cut + 1] = False
    elif fields:
        midline, source = _spine_x(small), "brightest central column band (spine)"
    else:
        midline, source = (small.shape[1] - 1) / 2.0, "image centre"
    midline_x = (midline + 0.5) * factor - 0.5 if source != "image centre" else centre
    full = [_upsample(f, factor, (decoded.rows, decoded.columns)) for f in fields]
    image_left_mask = image_right_mask = None
    for mask in full:
        if float(np.nonzero(mask)[1].mean()) < midline_x:
            image_left_mask = mask
        else:
            image_right_mask = mask
    right, left = (image_left_mask, image_right_mask) if right_on_left else (image_right_mask, image_left_mask)
    return LungFields(right=right, left=left, midline_x=midline_x, midline_source=source,
                      patient_right_on_image_left=right_on_left, orientation_source=orientation)


def _zone_bounds(mask: np.ndarray) -> list[tuple[int, int]]:
    rows = np.flatnonzero(mask.any(axis=1))
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    cuts = [top + round((bottom - top) * k / 3) for k in range(4)]
    return [(cuts[k], cuts[k + 1]) for k in range(3)]


def _shares(region: np.ndarray, bounds: list[tuple[int, int]]) -> dict[str, float]:
    per_row = region.sum(axis=1)
    total = max(1, int(per_row.sum()))
    return {zone: float(per_row[a:b].sum()) / total for zone, (a, b) in zip(ZONES, bounds, strict=True)}


def _zone_words(shares: dict[str, float], second_fraction: float) -> str:
    ranked = sorted(ZONES, key=lambda z: shares[z], reverse=True)
    if shares[ranked[1]] >= second_fraction * sum(shares.values()) and shares[ranked[1]] > 0:
        first, second = sorted(ranked[:2], key=ZONES.index)
        return f"{first} and {second} zones"
    return f"{ranked[0]} zone"


def locate_in_fields(region: np.ndarray, fields: LungFields, *, second_fraction: float = 0.3,
                     reason: str = "") -> dict[str, Any]:
    """Side and zone of a region from training-free lung fields (``"method": "lung_fields_classical"``).

    The side is the patient's side of the midline holding most of the region ("central"
    when the smaller side holds a quarter or more); the zone is the upper, middle or
    lower third of the lung fields' combined vertical extent (highest apex to lowest
    base, so a field partly hidden by soft tissue or disease does not shift the zones),
    and a second zone holding ``second_fraction`` of the region is named too. ``zones`` gives each side's shares; ``lung_fields`` the extents.
    """
    area = int(np.count_nonzero(region))
    xs = np.nonzero(region)[1]
    image_left = float(np.count_nonzero(xs < fields.midline_x)) / area
    image_right = 1.0 - image_left
    if min(image_left, image_right) >= 0.25:
        side = "central"
    else:
        on_image_left = image_left > image_right
        side = "right" if on_image_left == fields.patient_right_on_image_left else "left"
    masks = {"right": fields.right, "left": fields.left}
    present = [m for m in masks.values() if m is not None]
    bounds = _zone_bounds(np.logical_or.reduce(present)) if present else []
    zones, inside = {}, {}
    for name, mask in masks.items():
        if mask is not None and (region & mask).any():
            inside[name] = region & mask
            zones[f"{name} lung field"] = {z: round(v, 4) for z, v in _shares(region & mask, bounds).items()}
    lead = side if side in inside else max(inside, key=lambda n: int(inside[n].sum()), default=None)
    note = (f"{reason + ': ' if reason else ''}anatomy from lung fields found by image processing "
            f"(no trained model); midline {fields.midline_source}; {fields.orientation_source}")
    base = {"method": METHOD, "overlaps": [], "side": side, "note": note, "lung_fields": fields.describe()}
    if lead is not None:
        words = _zone_words(zones[f"{lead} lung field"], second_fraction)
        primary = f"{lead} lung field, {words}"  # how much of the region is inside: ``overlaps``
        if side == "central":
            primary = f"central, mostly over the {primary}"
        overlaps = [{"structure": f"{n} lung field", "name": f"{n} lung field",
                     "fraction_of_region": round(float(m.sum()) / area, 4)} for n, m in inside.items()]
        overlaps.sort(key=lambda o: o["fraction_of_region"], reverse=True)
        return base | {"primary": primary, "side": lead if side != "central" else side, "zones": zones,
                       "overlaps": overlaps}
    where = "central" if side == "central" else f"{side} hemithorax"
    if not present:
        return base | {"primary": f"{where}, outside the lung fields (no lung field found)", "zones": {},
                       "note": note + "; no lung field was found on this image"}
    union = np.logical_or.reduce(present)
    rows = np.flatnonzero(union.any(axis=1))
    centre_row = float(np.nonzero(region)[0].mean())
    if centre_row < rows[0]:
        words = "above the lung fields"
    elif centre_row > rows[-1]:
        words = "below the lung fields"
    else:
        words = f"beside the lung fields, {_zone_words(_shares(region, bounds), second_fraction)}"
    return base | {"primary": f"{where}, {words}", "zones": {}}
