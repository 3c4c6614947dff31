"""Slice geometry from ImageOrientationPatient / ImagePositionPatient (numpy only).

The rules, as 3D Slicer's DICOMUtils applies them: the slice normal is the row direction
cross the column direction; slices are ordered by their position projected on the normal
(never by InstanceNumber, SliceLocation or file name); the slice spacing comes from those
projections (never SliceThickness or SpacingBetweenSlices), and a gap more than
:data:`EPSILON_MM` off the median gap is reported. Positions that drift across the image
plane from slice to slice mean a gantry tilt: the affine keeps that shear (its z column is
the real step between slices), so every voxel still sits where the scanner put it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.imaging.volume.model import VolumeWarning, WarningCode

#: Positions, gaps and shears within this many mm are the same (Slicer's spacing epsilon).
EPSILON_MM = 0.01
#: Direction cosines are unit vectors within this tolerance, and orthogonal within it.
COSINE_TOLERANCE = 1e-3
#: Decimals of the direction cosines that name an orientation when slices are grouped.
ORIENTATION_DECIMALS = 4
#: Slice UIDs named in one warning at most (the rest are counted).
NAMED_AT_MOST = 5


def orientation_matrix(values: Sequence[float] | None) -> np.ndarray | None:
    """ImageOrientationPatient as a (2, 3) array of unit row and column directions, or None when
    it is missing, not six finite numbers, or not two (nearly) orthogonal unit vectors."""
    if values is None:
        return None
    try:
        cosines = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if cosines.shape != (6,) or not np.all(np.isfinite(cosines)):
        return None
    row, column = cosines[:3], cosines[3:]
    norms = np.linalg.norm(row), np.linalg.norm(column)
    if min(norms) < 1 - COSINE_TOLERANCE * 10 or max(norms) > 1 + COSINE_TOLERANCE * 10:
        return None
    row, column = row / norms[0], column / norms[1]
    if abs(float(row @ column)) > COSINE_TOLERANCE * 10:
        return None
    return np.stack([row, column])


def orientation_key(orientation: np.ndarray) -> tuple[float, ...]:
    """A hashable name for an orientation: its six cosines rounded (``+ 0.0`` folds -0.0 into 0.0)."""
    return tuple(round(float(v), ORIENTATION_DECIMALS) + 0.0 for v in orientation.ravel())


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """The unit normal of a slice: row direction x column direction."""
    normal = np.cross(orientation[0], orientation[1])
    return normal / np.linalg.norm(normal)


def affine_from(orientation: np.ndarray, origin: np.ndarray, pixel_spacing: tuple[float, float],
                step: np.ndarray) -> np.ndarray:
    """The 4x4 affine from voxel ``(x column, y row, z slice, 1)`` to patient LPS mm.

    ``pixel_spacing`` is DICOM's (between rows, between columns); ``step`` the patient
    vector from one slice to the next, ``origin`` the first voxel of slice 0.
    """
    affine = np.eye(4)
    affine[:3, 0] = orientation[0] * pixel_spacing[1]
    affine[:3, 1] = orientation[1] * pixel_spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = origin
    return affine


def sort_order(positions: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Indices that order ``positions`` (n, 3) by their projection on ``normal``, lowest first (stable)."""
    return np.argsort(positions @ normal, kind="stable")


def duplicate_indices(along: np.ndarray) -> list[int]:
    """In positions sorted along the normal, each index that lies within EPSILON_MM of the one before."""
    return [int(i) + 1 for i in np.flatnonzero(np.diff(along) < EPSILON_MM)]


@dataclass(frozen=True)
class StackGeometry:
    """What the positions of a sorted stack say: its affine, spacing and irregularities."""

    affine: np.ndarray
    spacing_zyx: tuple[float, float, float]
    warnings: tuple[VolumeWarning, ...]


def _name_pairs(pairs: list[tuple[int, int]]) -> str:
    shown = ", ".join(f"{a}-{b}" for a, b in pairs[:NAMED_AT_MOST])
    return shown + (f" and {len(pairs) - NAMED_AT_MOST} more" if len(pairs) > NAMED_AT_MOST else "")


def _gap_warnings(along: np.ndarray, spacing: float) -> list[VolumeWarning]:
    """MISSING_SLICE for a gap near a whole multiple of the spacing, UNEVEN_SPACING for the rest."""
    warnings: list[VolumeWarning] = []
    uneven: list[tuple[int, int]] = []
    worst = 0.0
    for index, gap in enumerate(np.diff(along)):
        gap = float(gap)
        if abs(gap - spacing) <= EPSILON_MM:
            continue
        multiple = round(gap / spacing)
        if multiple >= 2 and abs(gap - multiple * spacing) <= max(EPSILON_MM, 0.1 * spacing):
            missing = multiple - 1
            warnings.append(VolumeWarning(
                WarningCode.MISSING_SLICE,
                f"{missing} slice{'s' if missing > 1 else ''} missing between z {index} and z {index + 1}: "
                f"a gap of {gap:.3f} mm where the spacing is {spacing:.3f} mm; the volume holds the slices "
                f"there are, so the regular grid of its affine is off by up to {missing * spacing:.3f} mm "
                "beyond the gap",
                (index, index + 1)))
        else:
            uneven.append((index, index + 1))
            worst = max(worst, abs(gap - spacing))
    if uneven:
        warnings.append(VolumeWarning(
            WarningCode.UNEVEN_SPACING,
            f"{len(uneven)} gap{'s' if len(uneven) > 1 else ''} between slices differ from the spacing of "
            f"{spacing:.3f} mm by more than {EPSILON_MM} mm (at most {worst:.3f} mm), at z {_name_pairs(uneven)}",
            tuple(sorted({z for pair in uneven for z in pair}))))
    return warnings


def stack_geometry(orientation: np.ndarray, positions: np.ndarray, pixel_spacing: tuple[float, float],
                   *, gantry_tilt_tag: float = 0.0) -> StackGeometry:
    """Affine, spacing and warnings of slices already sorted along the normal, duplicates removed.

    The spacing is the median gap between projected positions; the affine's z column is
    the step whose projection is that spacing, in the direction the positions actually
    go (first to last slice), so a gantry tilt keeps its shear. Gaps more than
    EPSILON_MM off the spacing are MISSING_SLICE (a whole multiple) or UNEVEN_SPACING;
    a drift across the plane of more than EPSILON_MM over the stack is GANTRY_TILT.
    """
    normal = slice_normal(orientation)
    positions = np.asarray(positions, dtype=np.float64)
    along = positions @ normal
    spacing = float(np.median(np.diff(along)))
    travel = positions[-1] - positions[0]
    direction = travel / float(travel @ normal)  # mm of patient motion per mm along the normal
    step = direction * spacing
    warnings = _gap_warnings(along, spacing)
    lateral = travel - float(travel @ normal) * normal
    if float(np.linalg.norm(lateral)) > EPSILON_MM:
        angle = math.degrees(math.atan2(float(np.linalg.norm(lateral)), float(travel @ normal)))
        tag = f" (GantryDetectorTilt says {gantry_tilt_tag:g} degrees)" if gantry_tilt_tag else ""
        warnings.append(VolumeWarning(
            WarningCode.GANTRY_TILT,
            f"the slices are sheared: each one is shifted {float(np.linalg.norm(lateral)) / len(along[1:]):.3f} mm "
            f"across the image plane from the one before, a gantry tilt of {angle:.2f} degrees{tag}; the affine "
            "keeps the shear (its slice axis is not perpendicular to the slices)",
            ()))
    elif gantry_tilt_tag:
        warnings.append(VolumeWarning(
            WarningCode.GANTRY_TILT,
            f"GantryDetectorTilt is {gantry_tilt_tag:g} degrees but the slice positions show no shear; "
            "the positions were used", ()))
    affine = affine_from(orientation, positions[0], pixel_spacing, step)
    return StackGeometry(affine, (spacing, float(pixel_spacing[0]), float(pixel_spacing[1])), tuple(warnings))


def nominal_affine(orientation: np.ndarray | None, pixel_spacing: tuple[float, float],
                   slice_spacing: float) -> np.ndarray:
    """An affine for slices without positions: origin 0, the orientation if known (else LPS axes)."""
    orientation = orientation if orientation is not None else np.eye(3)[:2]
    return affine_from(orientation, np.zeros(3), pixel_spacing, slice_normal(orientation) * slice_spacing)
