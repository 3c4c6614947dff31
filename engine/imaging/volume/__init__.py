"""Series -> volume (issue 16): DICOM series and NIfTI files into :class:`Volume`.

- :func:`load_volume`: one volume from files, a folder, a NIfTI file or slice sources (stored images).
- :func:`iter_volumes`: every stack of every series among DICOM sources, one at a time.
- :func:`read_nifti` / :func:`write_nifti`: NIfTI in and out (RAS on disk, LPS here).

See :mod:`engine.imaging.volume.model` for the contract (axes, affine, warnings).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from engine.config import DecodeLimits
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume.assemble import (
    assemble_stack,
    iter_volumes,
    load_dicom_volume,
    scan_sources,
)
from engine.imaging.volume.model import Volume, VolumeWarning, WarningCode, orientation_code
from engine.imaging.volume.nifti import is_nifti, read_nifti, write_nifti
from engine.imaging.volume.sources import SliceSource

__all__ = [
    "Volume", "VolumeWarning", "WarningCode", "assemble_stack", "is_nifti", "iter_volumes", "load_volume",
    "SliceSource", "orientation_code", "read_nifti", "scan_sources", "write_nifti",
]


def load_volume(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str] | SliceSource], *,
                series_uid: str | None = None, limits: DecodeLimits | None = None) -> Volume:
    """One volume: a NIfTI file, or the main stack of the DICOM series among files and folders."""
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    nifti = [Path(s) for s in sources if not isinstance(s, SliceSource) and is_nifti(s) and not Path(s).is_dir()]
    if nifti:
        if len(sources) > 1:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 "A NIfTI file is a volume on its own: give it alone, not with other sources.")
        return read_nifti(nifti[0], limits=limits)
    return load_dicom_volume(list(sources), series_uid=series_uid, limits=limits)
