"""The shared example CT and its reference masks in the volume contract's axes.

NIfTI arrays are ``(i, j, k)`` with a RAS affine; the contract wants ``(z, y, x)`` with an
LPS affine over ``(x, y, z, 1)``: transpose the array and flip the affine's first two rows.
The reference masks are TotalSegmentator output: a reference, not ground truth.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_ct(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(hu (z, y, x) float32, LPS affine)`` of a NIfTI CT."""
    image = nib.load(str(path))
    hu = np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0))
    return hu, RAS_TO_LPS @ image.affine


def load_mask(seg_dir: Path, names: list[str]) -> np.ndarray:
    """The union of the named reference masks, ``(z, y, x)`` bool."""
    out = None
    for name in names:
        data = np.asarray(nib.load(str(seg_dir / f"{name}.nii.gz")).dataobj) > 0
        out = data if out is None else out | data
    assert out is not None
    return np.ascontiguousarray(out.transpose(2, 1, 0))


def bone_names(seg_dir: Path) -> list[str]:
    """Every bone the reference labels (vertebrae, ribs, sacrum, hips, femurs, and the shoulder girdle)."""
    prefixes = ("vertebrae_", "rib_", "sacrum", "hip_", "femur_", "humerus_", "scapula_", "clavicula_",
                "sternum", "skull")
    return sorted(p.name[:-7] for p in seg_dir.glob("*.nii.gz") if p.name.startswith(prefixes))


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two bool masks; None when both are empty (nothing to score)."""
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total
