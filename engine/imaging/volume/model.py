"""The assembled volume and the irregularities found on the way (numpy only).

The shared contract of issue 16: :class:`Volume` holds float32 voxels indexed
``(z, y, x)`` (z: place in the stack sorted by position along the slice normal, lowest
first; y: row; x: column), the affine from ``(x, y, z, 1)`` voxel indices to patient
coordinates (DICOM LPS, mm), the spacing, the SOP Instance UID of every slice and every
:class:`VolumeWarning` raised while assembling it. Analysis functions take
``(hu, spacing_zyx)`` so they work on a Volume's fields or on a NIfTI array alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

#: Patient axis letters (LPS) for the positive and the negative direction of x, y, z.
AXIS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


class WarningCode(StrEnum):
    """What a :class:`VolumeWarning` reports; stable, front-ends switch on it."""

    UNEVEN_SPACING = "UNEVEN_SPACING"
    MISSING_SLICE = "MISSING_SLICE"
    DUPLICATE_POSITION = "DUPLICATE_POSITION"
    GANTRY_TILT = "GANTRY_TILT"
    MIXED_ORIENTATION = "MIXED_ORIENTATION"
    MIXED_SIZE = "MIXED_SIZE"
    LOCALIZER_REMOVED = "LOCALIZER_REMOVED"
    CORRUPT_SLICE = "CORRUPT_SLICE"
    NO_PER_FRAME_POSITION = "NO_PER_FRAME_POSITION"
    #: A slice without ImagePositionPatient or ImageOrientationPatient, left out.
    NO_POSITION = "NO_POSITION"
    #: The series splits into several stacks (acquisitions, image types): this volume is one.
    OTHER_STACKS = "OTHER_STACKS"
    #: A file among the sources that is not a readable DICOM image, left out.
    SKIPPED_FILE = "SKIPPED_FILE"
    #: The slices carry no PixelSpacing: 1 mm was assumed.
    NO_PIXEL_SPACING = "NO_PIXEL_SPACING"
    #: A NIfTI file without sform or qform: its affine holds voxel sizes, not patient coordinates.
    NO_PATIENT_GEOMETRY = "NO_PATIENT_GEOMETRY"
    #: A NIfTI file whose slice axis ran from the highest position down: z was reversed.
    Z_REVERSED = "Z_REVERSED"


@dataclass(frozen=True)
class VolumeWarning:
    """One irregularity: a code, one sentence, and the z indices (in the volume) it concerns."""

    code: str
    message: str
    slices: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message, "slices": list(self.slices)}


def orientation_code(affine: np.ndarray) -> str:
    """The patient direction (LPS letters) each of x, y, z points to, e.g. ``"LPS"`` or ``"RAS"``.

    Each voxel axis is named by the patient axis it is closest to; for an oblique axis that
    is the largest component of its direction.
    """
    letters = []
    for axis in range(3):
        direction = np.asarray(affine, dtype=np.float64)[:3, axis]
        if not np.any(direction):
            letters.append("?")
            continue
        dominant = int(np.argmax(np.abs(direction)))
        letters.append(AXIS_LETTERS[dominant][0 if direction[dominant] > 0 else 1])
    return "".join(letters)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scalar volume in patient coordinates (see the module docstring for the axes).

    ``positions_mm`` holds the patient position (LPS) of each slice's first voxel as read
    from the files: with uneven gaps or a missing slice, the affine's regular grid (built
    from the median step) is off from them, and the warnings say by how much.
    ``patient_geometry`` is False when the sources carried no slice positions (an enhanced
    object without per-frame positions): the slices are then in stored frame order and
    the affine is a nominal one built from the spacing only (``NO_PER_FRAME_POSITION``).
    """

    voxels: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)
    spacing_zyx: tuple[float, float, float]
    source_uids: tuple[str, ...] = field(repr=False)
    warnings: tuple[VolumeWarning, ...]
    modality: str
    series_uid: str | None
    frame_of_reference_uid: str | None
    positions_mm: np.ndarray | None = field(default=None, repr=False)
    patient_geometry: bool = True
    stack_key: str = ""
    series_description: str = ""
    source_format: str = "dicom"

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ValueError(f"a volume's voxels are (z, y, x), not {self.voxels.ndim}-D")
        if len(self.source_uids) != self.voxels.shape[0]:
            raise ValueError(f"{len(self.source_uids)} source UIDs for {self.voxels.shape[0]} slices")
        if np.asarray(self.affine).shape != (4, 4):
            raise ValueError("the affine is 4 x 4")

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        z, y, x = self.voxels.shape
        return int(z), int(y), int(x)

    @property
    def orientation(self) -> str:
        """Patient directions of x, y, z (``orientation_code`` of the affine)."""
        return orientation_code(self.affine)

    @property
    def slice_normal(self) -> np.ndarray:
        """Unit normal of the slices (row direction x column direction), LPS."""
        normal = np.cross(self.affine[:3, 0], self.affine[:3, 1])
        return normal / np.linalg.norm(normal)

    def voxel_to_patient(self, xyz: np.ndarray) -> np.ndarray:
        """Patient LPS mm of voxel indices ``[..., (x, y, z)]``."""
        xyz = np.asarray(xyz, dtype=np.float64)
        return xyz @ self.affine[:3, :3].T + self.affine[:3, 3]

    def summary(self) -> dict[str, Any]:
        """Everything but the voxels, as JSON: shape, spacing, orientation, slice order, warnings."""
        z, y, x = self.shape_zyx
        normal = self.slice_normal
        order: dict[str, Any] = {"axis": "z", "sorted_by": "position along the slice normal, lowest first"
                                 if self.patient_geometry else "stored frame order (no positions)",
                                 "normal_lps": [round(float(v), 6) for v in normal]}
        if self.positions_mm is not None and len(self.positions_mm):
            along = np.asarray(self.positions_mm, dtype=np.float64) @ normal
            order.update(first_mm=float(along[0]), last_mm=float(along[-1]),
                         first_uid=self.source_uids[0], last_uid=self.source_uids[-1])
        return {
            "shape_zyx": [z, y, x], "dimensions_xyz": [x, y, z],
            "spacing_zyx_mm": [float(v) for v in self.spacing_zyx],
            "orientation": self.orientation, "affine_lps": np.asarray(self.affine, dtype=float).tolist(),
            "patient_geometry": self.patient_geometry, "slice_order": order,
            "modality": self.modality, "series_uid": self.series_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid, "stack_key": self.stack_key,
            "series_description": self.series_description, "source_format": self.source_format,
            "value_range": [float(np.nanmin(self.voxels)), float(np.nanmax(self.voxels))] if self.voxels.size else None,
            "slices": z, "warnings": [w.to_dict() for w in self.warnings],
        }
