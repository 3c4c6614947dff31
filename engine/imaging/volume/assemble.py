"""DICOM files into volumes: headers first, then pixels slice by slice into one float32 array.

1. Every source file is read up to its Pixel Data (``stop_before_pixels``, through
   :func:`engine.imaging.limits.read_dicom`, so the decoding limits and the bounded
   Deflate reader apply) and reduced to :class:`SliceHeader` records.
2. :mod:`engine.imaging.volume.stacks` groups them into stacks.
3. A stack's voxel size is checked against ``DecodeLimits.max_volume_bytes`` before the
   array is allocated (``VOLUME_TOO_LARGE``), then each slice is read into its place:
   an uncompressed little-endian single frame straight from the file at the Pixel Data
   offset the header pass found (:mod:`engine.imaging.volume.native`), anything else
   decoded by pydicom (:func:`engine.imaging.decode.stored_frame`: every transfer syntax
   the viewer reads) and rescaled (:func:`engine.imaging.decode.modality_values`: HU for
   CT, per frame for enhanced objects). A slice that fails to decode is reported
   (``CORRUPT_SLICE``) and the slices after it move up; the geometry is then computed from
   the slices actually there, so its gap is reported too.

Memory: the headers (a few hundred bytes a slice), one slice's dataset at a time (one
multi-frame object while its frames are read), and the volume.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from pydicom.errors import InvalidDicomError

from engine.config import DEFAULT_MAX_IMAGE_FILE_BYTES, DecodeLimits
from engine.errors import ErrorCode, MedVisionError
from engine.files import check_regular_file, read_regular_file
from engine.imaging.decode import DECODE_ERRORS, looks_like_raw_dicom, modality_values, stored_frame
from engine.imaging.limits import read_dicom
from engine.imaging.volume.geometry import nominal_affine, orientation_matrix, stack_geometry
from engine.imaging.volume.headers import SliceHeader, slice_headers
from engine.imaging.volume.model import Volume, VolumeWarning, WarningCode
from engine.imaging.volume.native import read_native_slice
from engine.imaging.volume.stacks import StackPlan, plan_stacks

MiB = 1024 * 1024


def source_files(sources: Sequence[str | Path]) -> list[Path]:
    """The files named, and every file under the folders named (sorted; hidden files skipped)."""
    if not sources:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "No source given: name DICOM files, a folder or a NIfTI file.")
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.exists():
            files.append(path)
        else:
            raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"'{path.name}' does not exist.", file=path.name)
    return files


def _read_header(path: Path, limits: DecodeLimits) -> list[SliceHeader]:
    """The slice records of one file; an empty list for a DICOM object without an image."""
    check_regular_file(path, DEFAULT_MAX_IMAGE_FILE_BYTES)
    with path.open("rb") as fp:
        try:
            ds, inflater = read_dicom(fp, limits, name=path.name, stop_before_pixels=True)
        except InvalidDicomError:  # no preamble: accepted only if it starts and reads as a DICOM header
            fp.seek(0)
            if not looks_like_raw_dicom(fp.read(8)):
                raise
            fp.seek(0)
            ds, inflater = read_dicom(fp, limits, name=path.name, stop_before_pixels=True, force=True)
            if "SOPClassUID" not in ds:
                raise
        pixel_offset = fp.tell() if inflater is None else None  # stopped at the Pixel Data tag
    if not ds.get("Rows") or not ds.get("Columns"):
        return []
    return slice_headers(ds, path, pixel_offset)


def scan_sources(sources: Sequence[str | Path], *, limits: DecodeLimits | None = None
                 ) -> tuple[list[SliceHeader], list[VolumeWarning]]:
    """Slice records of every DICOM image among the sources, and a warning per file left out.

    Raises FILE_NOT_FOUND (a source that does not exist) or IMAGE_TOO_LARGE (a header over the limits).
    """
    limits = limits or DecodeLimits.from_env()
    headers: list[SliceHeader] = []
    skipped: list[VolumeWarning] = []
    for path in source_files(sources):
        try:
            found = _read_header(path, limits)
        except MedVisionError:
            raise
        except InvalidDicomError:
            skipped.append(VolumeWarning(WarningCode.SKIPPED_FILE, f"'{path.name}' is not a DICOM file; left out"))
            continue
        except DECODE_ERRORS as exc:
            skipped.append(VolumeWarning(WarningCode.CORRUPT_SLICE,
                                         f"'{path.name}' cannot be read as DICOM ({type(exc).__name__}); left out"))
            continue
        if not found:
            skipped.append(VolumeWarning(WarningCode.SKIPPED_FILE, f"'{path.name}' holds no image; left out"))
        headers += found
    return headers, skipped


def _check_size(plan: StackPlan, limits: DecodeLimits) -> None:
    z, y, x = plan.shape_zyx
    if plan.first.samples_per_pixel != 1:
        raise MedVisionError(
            ErrorCode.NOT_A_VOLUME,
            f"'{plan.first.path.name}' is a colour image ({plan.first.samples_per_pixel} samples per pixel); "
            "only grayscale series are assembled into volumes.", file=plan.first.path.name)
    if plan.voxel_bytes > limits.max_volume_bytes:
        raise MedVisionError(
            ErrorCode.VOLUME_TOO_LARGE,
            f"a volume of {z} slices of {x} x {y} needs {plan.voxel_bytes / MiB:,.0f} MiB of float32 voxels, over "
            f"the limit of {limits.max_volume_bytes / MiB:,.0f} MiB (MEDVISION_MAX_VOLUME_BYTES).",
            slices=z, rows=y, columns=x, size=plan.voxel_bytes, limit=limits.max_volume_bytes,
            setting="MEDVISION_MAX_VOLUME_BYTES")


class _OpenDataset:
    """The last file read whole, kept while its frames are decoded (one file at a time)."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits, self.path, self.ds = limits, None, None

    def get(self, path: Path):  # noqa: ANN201 - a pydicom FileDataset
        if path != self.path:
            self.path, self.ds = None, None  # drop the previous one before reading the next
            data = read_regular_file(path, DEFAULT_MAX_IMAGE_FILE_BYTES)
            self.ds, _ = read_dicom(io.BytesIO(data), self.limits, name=path.name, force=True)
            self.path = path
        return self.ds


def _decode_into(plan: StackPlan, voxels: np.ndarray, limits: DecodeLimits
                 ) -> tuple[list[SliceHeader], list[VolumeWarning]]:
    """Decode each slice into ``voxels[z]``, moving later slices up past a corrupt one."""
    kept: list[SliceHeader] = []
    corrupt: list[VolumeWarning] = []
    opened = _OpenDataset(limits)
    for header in plan.slices:
        try:
            if not read_native_slice(header, voxels[len(kept)]):
                ds = opened.get(header.path)
                frame = header.frame or 0
                raw = stored_frame(ds, frame)
                if raw.shape != (header.rows, header.columns):
                    raise ValueError(f"decoded {raw.shape}, header says {(header.rows, header.columns)}")
                voxels[len(kept)] = modality_values(ds, raw, frame)
        except MedVisionError as exc:
            if exc.code is not ErrorCode.IMAGE_DECODE_ERROR:
                raise
            corrupt.append(VolumeWarning(WarningCode.CORRUPT_SLICE, f"{header.uid} ('{header.path.name}'): "
                                         f"{exc.message}; left out"))
            continue
        except DECODE_ERRORS as exc:
            corrupt.append(VolumeWarning(WarningCode.CORRUPT_SLICE,
                                         f"{header.uid} ('{header.path.name}') cannot be decoded "
                                         f"({type(exc).__name__}); left out"))
            continue
        kept.append(header)
    return kept, corrupt


def assemble_stack(plan: StackPlan, *, limits: DecodeLimits | None = None,
                   extra_warnings: Sequence[VolumeWarning] = ()) -> Volume:
    """Decode one planned stack into a :class:`Volume` (its size checked before allocating).

    Raises VOLUME_TOO_LARGE, NOT_A_VOLUME (colour images; fewer than two slices decodable).
    """
    limits = limits or DecodeLimits.from_env()
    _check_size(plan, limits)
    voxels = np.empty(plan.shape_zyx, dtype=np.float32)
    kept, corrupt = _decode_into(plan, voxels, limits)
    if len(kept) < 2:
        raise MedVisionError(ErrorCode.NOT_A_VOLUME,
                             f"only {len(kept)} of the {len(plan.slices)} slices of series "
                             f"{plan.first.series_uid} could be decoded; a volume needs two.",
                             file=plan.first.path.name, corrupt=[w.message for w in corrupt])
    voxels = voxels[:len(kept)]
    first = kept[0]
    pixel_spacing = first.pixel_spacing
    warnings: list[VolumeWarning] = []
    if pixel_spacing is None or min(pixel_spacing) <= 0:
        pixel_spacing = (1.0, 1.0)
        warnings.append(VolumeWarning(WarningCode.NO_PIXEL_SPACING,
                                      "the slices carry no PixelSpacing: 1 mm was assumed in the affine"))
    orientation = orientation_matrix(first.orientation)
    positions = None
    if plan.patient_geometry:
        positions = np.asarray([h.position for h in kept], dtype=np.float64)
        geometry = stack_geometry(orientation, positions, pixel_spacing, gantry_tilt_tag=first.gantry_tilt)
        affine, spacing = geometry.affine, geometry.spacing_zyx
        warnings += geometry.warnings
    else:
        slice_spacing = first.slice_spacing_hint if first.slice_spacing_hint and first.slice_spacing_hint > 0 else 1.0
        affine = nominal_affine(orientation, pixel_spacing, slice_spacing)
        spacing = (slice_spacing, float(pixel_spacing[0]), float(pixel_spacing[1]))
    z_of = {h.uid: z for z, h in enumerate(kept)}
    warnings = [w.resolve(z_of) for w in plan.warnings] + corrupt + warnings + list(extra_warnings)
    return Volume(
        voxels=voxels, affine=affine, spacing_zyx=tuple(float(v) for v in spacing),
        source_uids=tuple(h.uid for h in kept), warnings=tuple(warnings), modality=first.modality,
        series_uid=first.series_uid or None, frame_of_reference_uid=first.frame_of_reference_uid,
        positions_mm=positions, patient_geometry=plan.patient_geometry, stack_key=plan.key,
        series_description=first.series_description, source_format="dicom",
    )


def _plans(sources: Sequence[str | Path], limits: DecodeLimits) -> tuple[list[StackPlan], list[VolumeWarning]]:
    headers, skipped = scan_sources(sources, limits=limits)
    if not headers:
        reason = skipped[0].message if skipped else "no files"
        raise MedVisionError(ErrorCode.NOT_A_VOLUME,
                             f"no DICOM image among the sources to assemble a volume from ({reason}).",
                             skipped=[w.message for w in skipped])
    found = plan_stacks(headers)
    if not found.plans:
        raise found.refused[0]
    notes = skipped + [VolumeWarning(WarningCode.SKIPPED_FILE, f"another series left out: {exc}") for exc in found.refused]
    return found.plans, notes


def iter_volumes(sources: Sequence[str | Path], *, limits: DecodeLimits | None = None) -> Iterator[Volume]:
    """Every stack of every series among the DICOM sources, one volume at a time (main stacks first)."""
    limits = limits or DecodeLimits.from_env()
    plans, notes = _plans(sources, limits)
    for plan in sorted(plans, key=lambda p: not p.main):
        yield assemble_stack(plan, limits=limits, extra_warnings=notes)


def load_dicom_volume(sources: Sequence[str | Path], *, series_uid: str | None = None,
                      limits: DecodeLimits | None = None) -> Volume:
    """The main stack of the one series among the sources (or of ``series_uid``) as a Volume.

    Raises NOT_A_VOLUME (no volume there: a radiograph, one 2D image, no positions),
    INVALID_ARGUMENT (several series and none named, or the named one absent),
    VOLUME_TOO_LARGE, FILE_NOT_FOUND, IMAGE_TOO_LARGE.
    """
    limits = limits or DecodeLimits.from_env()
    plans, notes = _plans(sources, limits)
    mains = [p for p in plans if p.main]
    if series_uid is not None:
        mains = [p for p in mains if p.first.series_uid == series_uid]
        if not mains:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"series {series_uid} is not among the sources.",
                                 series_uid=series_uid)
    if len(mains) > 1:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                             f"the sources hold {len(mains)} series; name the one to assemble.",
                             series=[{"series_uid": p.first.series_uid, "slices": len(p.slices)} for p in mains])
    return assemble_stack(mains[0], limits=limits, extra_warnings=notes)  # its warnings name the other stacks
