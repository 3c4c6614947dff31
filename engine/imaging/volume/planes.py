"""The three orthogonal planes of a volume ``(z, y, x)``: one layout for the engine and the desktop.

Axial is slice ``z``; coronal (row ``y``) and sagittal (column ``x``) have ``z`` along their
rows, highest ``z`` first (for an axial stack sorted foot to head, the head at the top).
"""

from __future__ import annotations

import numpy as np

PLANES = ("axial", "coronal", "sagittal")


def plane_pixels(voxels: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The plane's pixels (a view, no copy): axial ``[z]``, coronal ``[::-1, y, :]``, sagittal ``[::-1, :, x]``."""
    if plane == "axial":
        return voxels[index]
    if plane == "coronal":
        return voxels[::-1, index, :]
    return voxels[::-1, :, index]


def plane_spacing(spacing_zyx: tuple[float, float, float], plane: str) -> tuple[float, float]:
    """(row, column) spacing in mm of a plane."""
    dz, dy, dx = spacing_zyx
    return {"axial": (dy, dx), "coronal": (dz, dx), "sagittal": (dz, dy)}[plane]
