"""NIfTI in and out (nibabel), for research users: RAS on disk, LPS in a :class:`Volume`.

A NIfTI array is indexed ``[i, j, k]`` with an affine to RAS mm; a Volume's voxels are
``[z, y, x]`` with an affine to LPS mm. Reading transposes (x = i, y = j, z = k) and
flips the sign of the affine's first two rows; when k runs from the highest position
along the slice normal down, z is reversed so that z = 0 is the lowest slice, as for
DICOM (``Z_REVERSED`` says so). Writing does the inverse. The scaling (scl_slope,
scl_inter) is applied on read; voxels are written as float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from engine.config import DecodeLimits
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume.model import Volume, VolumeWarning, WarningCode

#: RAS <-> LPS: the sign of x and y flips (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MiB = 1024 * 1024


def is_nifti(path: str | os.PathLike[str]) -> bool:
    """Whether the name says NIfTI (``.nii`` or ``.nii.gz``)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(np.linalg.norm(affine[:3, axis])) for axis in (2, 1, 0))


def read_nifti(path: str | os.PathLike[str], *, limits: DecodeLimits | None = None) -> Volume:
    """A 3D NIfTI file as a Volume (its size checked against ``max_volume_bytes`` before loading).

    Raises FILE_NOT_FOUND, UNSUPPORTED_FORMAT (not NIfTI, not 3D), VOLUME_TOO_LARGE.
    """
    limits = limits or DecodeLimits.from_env()
    path = Path(path)
    if not path.is_file():
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"'{path.name}' does not exist.", file=path.name)
    try:
        image = nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on a bad file (ImageFileError, EOFError, ...)
        raise MedVisionError(ErrorCode.UNSUPPORTED_FORMAT, f"'{path.name}' cannot be read as NIfTI "
                             f"({type(exc).__name__}).", file=path.name) from None
    shape = tuple(int(v) for v in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise MedVisionError(ErrorCode.UNSUPPORTED_FORMAT, f"'{path.name}' is {len(shape)}-D; a volume is 3-D.",
                             file=path.name, shape=list(shape))
    size = shape[0] * shape[1] * shape[2] * 4
    if size > limits.max_volume_bytes:
        raise MedVisionError(ErrorCode.VOLUME_TOO_LARGE,
                             f"'{path.name}' needs {size / MiB:,.0f} MiB of float32 voxels, over the limit of "
                             f"{limits.max_volume_bytes / MiB:,.0f} MiB (MEDVISION_MAX_VOLUME_BYTES).",
                             file=path.name, size=size, limit=limits.max_volume_bytes)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except (OSError, EOFError, ValueError) as exc:
        raise MedVisionError(ErrorCode.IMAGE_DECODE_ERROR, f"'{path.name}': the NIfTI voxels cannot be read "
                             f"({type(exc).__name__}).", file=path.name) from None
    affine = RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64)
    voxels = np.ascontiguousarray(data.transpose(2, 1, 0))
    warnings: list[VolumeWarning] = []
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    if float(affine[:3, 2] @ normal) < 0:  # k runs downward along the normal: make z = 0 the lowest slice
        voxels = np.ascontiguousarray(voxels[::-1])
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1.0, shape[2] - 1
        affine = affine @ flip
        warnings.append(VolumeWarning(WarningCode.Z_REVERSED, "the file's slice axis runs from the highest position "
                                      "down; z was reversed so that z = 0 is the lowest slice"))
    code = int(image.header.get("sform_code", 0)) or int(image.header.get("qform_code", 0))
    if code == 0:
        warnings.append(VolumeWarning(WarningCode.NO_PATIENT_GEOMETRY, "the file has no sform or qform: its affine "
                                      "holds the voxel sizes only, not patient coordinates"))
    positions = affine[:3, 3] + np.arange(shape[2])[:, None] * affine[:3, 2]
    return Volume(
        voxels=voxels, affine=affine, spacing_zyx=_spacing(affine), source_uids=("",) * shape[2],
        warnings=tuple(warnings), modality="", series_uid=None, frame_of_reference_uid=None,
        positions_mm=positions, patient_geometry=code != 0, stack_key=path.name, source_format="nifti",
    )


def write_nifti(volume: Volume, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a Volume as NIfTI-1 (float32, RAS affine as sform and qform, mm), through a temporary name.

    Raises TARGET_EXISTS when the file exists and ``overwrite`` is False.
    """
    path = Path(path)
    if not is_nifti(path):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"'{path.name}': a NIfTI file name ends in .nii or .nii.gz.",
                             file=path.name)
    if path.exists() and not overwrite:
        raise MedVisionError(ErrorCode.TARGET_EXISTS, f"'{path.name}' exists; pass overwrite to replace it.",
                             file=path.name)
    affine = RAS_TO_LPS @ np.asarray(volume.affine, dtype=np.float64)
    image = nib.Nifti1Image(np.asarray(volume.voxels, dtype=np.float32).transpose(2, 1, 0), affine)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    temporary = path.with_name(f".{path.name}.partial{suffix}")
    try:
        nib.save(image, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
