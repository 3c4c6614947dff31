"""DICOM files into volumes: headers first, then pixels slice by slice into one float32 array.

0. A source is a :class:`~engine.imaging.volume.sources.SliceSource`: a file, or an image of the
   encrypted store decrypted in memory (files and folders named by path become file sources).
1. Every source is read up to its Pixel Data (``stop_before_pixels``, through
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from engine.config import DecodeLimits
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.decode import DECODE_ERRORS, looks_like_raw_dicom, modality_values, stored_frame
from engine.imaging.limits import read_dicom
from engine.imaging.volume.geometry import nominal_affine, orientation_matrix, stack_geometry
from engine.imaging.volume.headers import SliceHeader, header_record, slice_headers
from engine.imaging.volume.model import Volume, VolumeWarning, WarningCode
from engine.imaging.volume.native import read_native_slice
from engine.imaging.volume.sources import SliceSource
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


def slice_sources(sources: Sequence[str | Path | SliceSource]) -> list[SliceSource]:
    """Slice sources as given, and files and folders (:func:`source_files`) as file sources."""
    if not sources:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "No source given: name DICOM files, a folder or a NIfTI file.")
    given = [s for s in sources if isinstance(s, SliceSource)]
    paths = [s for s in sources if not isinstance(s, SliceSource)]
    return given + ([SliceSource.file(p) for p in source_files(paths)] if paths else [])


def read_header(source: SliceSource, limits: DecodeLimits) -> list[SliceHeader]:
    """The slice records of one object, read up to its Pixel Data; an empty list for a DICOM object
    without an image. Raises InvalidDicomError for what is not DICOM."""
    with source.open() as fp:
        try:
            ds, inflater = read_dicom(fp, limits, name=source.name, stop_before_pixels=True)
        except InvalidDicomError:  # no preamble: accepted only if it starts and reads as a DICOM header
            fp.seek(0)
            if not looks_like_raw_dicom(fp.read(8)):
                raise
            fp.seek(0)
            ds, inflater = read_dicom(fp, limits, name=source.name, stop_before_pixels=True, force=True)
            if "SOPClassUID" not in ds:
                raise
        pixel_offset = fp.tell() if inflater is None else None  # stopped at the Pixel Data tag
    if not ds.get("Rows") or not ds.get("Columns"):
        return []
    return slice_headers(ds, source, pixel_offset)


def stored_slice_record(content: bytes, name: str, limits: DecodeLimits) -> dict | None:
    """The slice record (:func:`~engine.imaging.volume.headers.header_record`) of a single-frame DICOM
    image about to be stored, so its series can later be listed without reading it back; None for
    anything else (another format, a multi-frame object, a header that does not read)."""
    try:
        found = read_header(SliceSource.stored("", name, lambda: content), limits)
    except (InvalidDicomError, MedVisionError, *DECODE_ERRORS):
        return None
    return header_record(found[0]) if len(found) == 1 and found[0].frame is None else None


def scan_sources(sources: Sequence[str | Path | SliceSource], *, limits: DecodeLimits | None = None
                 ) -> tuple[list[SliceHeader], list[VolumeWarning]]:
    """Slice records of every DICOM image among the sources, and a warning per source left out.

    Raises FILE_NOT_FOUND (a source that does not exist) or IMAGE_TOO_LARGE (a header over the limits).
    """
    limits = limits or DecodeLimits.from_env()
    headers: list[SliceHeader] = []
    skipped: list[VolumeWarning] = []
    for source in slice_sources(sources):
        found, warning = scan_one(source, limits)
        headers += found
        if warning is not None:
            skipped.append(warning)
    return headers, skipped


def scan_one(source: SliceSource, limits: DecodeLimits) -> tuple[list[SliceHeader], VolumeWarning | None]:
    """One source's slice records, or the warning that says why it is left out."""
    try:
        found = read_header(source, limits)
    except MedVisionError:
        raise
    except InvalidDicomError:
        return [], VolumeWarning(WarningCode.SKIPPED_FILE, f"'{source.name}' is not a DICOM file; left out")
    except DECODE_ERRORS as exc:
        return [], VolumeWarning(WarningCode.CORRUPT_SLICE,
                                 f"'{source.name}' cannot be read as DICOM ({type(exc).__name__}); left out")
    if not found:
        return [], VolumeWarning(WarningCode.SKIPPED_FILE, f"'{source.name}' holds no image; left out")
    return found, None


def _check_size(plan: StackPlan, limits: DecodeLimits) -> None:
    z, y, x = plan.shape_zyx
    if plan.first.samples_per_pixel != 1:
        raise MedVisionError(
            ErrorCode.NOT_A_VOLUME,
            f"'{plan.first.source.name}' is a colour image ({plan.first.samples_per_pixel} samples per pixel); "
            "only grayscale series are assembled into volumes.", file=plan.first.source.name)
    if plan.voxel_bytes > limits.max_volume_bytes:
        raise MedVisionError(
            ErrorCode.VOLUME_TOO_LARGE,
            f"a volume of {z} slices of {x} x {y} needs {plan.voxel_bytes / MiB:,.0f} MiB of float32 voxels, over "
            f"the limit of {limits.max_volume_bytes / MiB:,.0f} MiB (MEDVISION_MAX_VOLUME_BYTES).",
            slices=z, rows=y, columns=x, size=plan.voxel_bytes, limit=limits.max_volume_bytes,
            setting="MEDVISION_MAX_VOLUME_BYTES")


class OpenSource:
    """The last source read, kept while its frames are decoded (one object at a time)."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits, self.key, self.content, self.ds = limits, None, b"", None

    def content_of(self, source: SliceSource) -> bytes:
        if source.key != self.key:
            self.key, self.content, self.ds = None, b"", None  # drop the previous one before reading the next
            self.content = source.read()
            self.key = source.key
        return self.content

    def dataset_of(self, source: SliceSource):  # noqa: ANN201 - a pydicom FileDataset
        content = self.content_of(source)
        if self.ds is None:
            self.ds, _ = read_dicom(io.BytesIO(content), self.limits, name=source.name, force=True)
        return self.ds


def decode_slice(header: SliceHeader, out: np.ndarray, opened: OpenSource) -> None:
    """One slice's rescaled values into ``out`` (rows, columns float32): straight from the bytes when
    uncompressed, else through pydicom. Raises IMAGE_DECODE_ERROR or one of ``DECODE_ERRORS``."""
    if read_native_slice(header, opened.content_of(header.source), out):
        return
    ds = opened.dataset_of(header.source)
    frame = header.frame or 0
    raw = stored_frame(ds, frame)
    if raw.shape != (header.rows, header.columns):
        raise ValueError(f"decoded {raw.shape}, header says {(header.rows, header.columns)}")
    out[...] = modality_values(ds, raw, frame)


def _decode_into(plan: StackPlan, voxels: np.ndarray, limits: DecodeLimits
                 ) -> tuple[list[SliceHeader], list[VolumeWarning]]:
    """Decode each slice into ``voxels[z]``, moving later slices up past a corrupt one."""
    kept: list[SliceHeader] = []
    corrupt: list[VolumeWarning] = []
    opened = OpenSource(limits)
    for header in plan.slices:
        try:
            decode_slice(header, voxels[len(kept)], opened)
        except MedVisionError as exc:
            if exc.code is not ErrorCode.IMAGE_DECODE_ERROR:
                raise
            corrupt.append(VolumeWarning(WarningCode.CORRUPT_SLICE, f"{header.uid} ('{header.source.name}'): "
                                         f"{exc.message}; left out"))
            continue
        except DECODE_ERRORS as exc:
            corrupt.append(VolumeWarning(WarningCode.CORRUPT_SLICE,
                                         f"{header.uid} ('{header.source.name}') cannot be decoded "
                                         f"({type(exc).__name__}); left out"))
            continue
        kept.append(header)
    return kept, corrupt


@dataclass(frozen=True)
class SliceFrame:
    """Where a stack's slices sit, from their headers alone: the affine, spacing and slice positions,
    and the warnings about them (gaps, tilt, no pixel spacing)."""

    affine: np.ndarray
    spacing_zyx: tuple[float, float, float]
    positions_mm: np.ndarray | None
    warnings: tuple[VolumeWarning, ...]


def slice_frame(slices: Sequence[SliceHeader], patient_geometry: bool = True) -> SliceFrame:
    """The geometry of these slices in this order (no pixel is read)."""
    first = slices[0]
    pixel_spacing = first.pixel_spacing
    warnings: list[VolumeWarning] = []
    if pixel_spacing is None or min(pixel_spacing) <= 0:
        pixel_spacing = (1.0, 1.0)
        warnings.append(VolumeWarning(WarningCode.NO_PIXEL_SPACING,
                                      "the slices carry no PixelSpacing: 1 mm was assumed in the affine"))
    orientation = orientation_matrix(first.orientation)
    positions = None
    if patient_geometry:
        positions = np.asarray([h.position for h in slices], dtype=np.float64)
        geometry = stack_geometry(orientation, positions, pixel_spacing, gantry_tilt_tag=first.gantry_tilt)
        affine, spacing = geometry.affine, geometry.spacing_zyx
        warnings += geometry.warnings
    else:
        slice_spacing = first.slice_spacing_hint if first.slice_spacing_hint and first.slice_spacing_hint > 0 else 1.0
        affine = nominal_affine(orientation, pixel_spacing, slice_spacing)
        spacing = (slice_spacing, float(pixel_spacing[0]), float(pixel_spacing[1]))
    return SliceFrame(affine, tuple(float(v) for v in spacing), positions, tuple(warnings))  # type: ignore[arg-type]


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
                             file=plan.first.source.name, corrupt=[w.message for w in corrupt])
    voxels = voxels[:len(kept)]
    first = kept[0]
    frame = slice_frame(kept, plan.patient_geometry)
    z_of = {h.uid: z for z, h in enumerate(kept)}
    warnings = [w.resolve(z_of) for w in plan.warnings] + corrupt + list(frame.warnings) + list(extra_warnings)
    return Volume(
        voxels=voxels, affine=frame.affine, spacing_zyx=frame.spacing_zyx,
        source_uids=tuple(h.uid for h in kept), warnings=tuple(warnings), modality=first.modality,
        series_uid=first.series_uid or None, frame_of_reference_uid=first.frame_of_reference_uid,
        positions_mm=frame.positions_mm, patient_geometry=plan.patient_geometry, stack_key=plan.key,
        series_description=first.series_description, source_format="dicom",
    )


def _plans(sources: Sequence[str | Path | SliceSource], limits: DecodeLimits) -> tuple[list[StackPlan], list[VolumeWarning]]:
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


def iter_volumes(sources: Sequence[str | Path | SliceSource], *, limits: DecodeLimits | None = None,
                 series_uid: str | None = None) -> Iterator[Volume]:
    """Every stack of every series among the DICOM sources (or of ``series_uid``), one volume at a time
    (main stacks first)."""
    limits = limits or DecodeLimits.from_env()
    plans, notes = _plans(sources, limits)
    if series_uid is not None:
        plans = [p for p in plans if p.first.series_uid == series_uid]
        if not plans:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"series {series_uid} is not among the sources.",
                                 series_uid=series_uid)
    for plan in sorted(plans, key=lambda p: not p.main):
        yield assemble_stack(plan, limits=limits, extra_warnings=notes)


def load_dicom_volume(sources: Sequence[str | Path | SliceSource], *, series_uid: str | None = None,
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


def header_datasets(headers: Sequence[SliceHeader], uids: Sequence[str], limits: DecodeLimits | None = None
                    ) -> list[Dataset]:
    """The header (no pixels) of the single-frame instance behind each slice uid, in that order: what a
    derived object (a DICOM SEG) references. Read from each source again (a stored image decrypted in
    memory), one at a time. Raises EXPORT_FAILED for a slice of a multi-frame object or a uid not among
    ``headers``."""
    limits = limits or DecodeLimits.from_env()
    by_uid = {h.uid: h for h in headers}
    datasets = []
    for uid in uids:
        header = by_uid.get(uid)
        if header is None or header.frame is not None:
            raise MedVisionError(ErrorCode.EXPORT_FAILED,
                                 f"slice {uid} is " + ("a frame of a multi-frame object: only series of single-frame "
                                                       "instances are referenced by a volume SEG" if header else
                                                       "not among the sources"), slice=uid)
        ds, _ = read_dicom(io.BytesIO(header.source.read()), limits, name=header.source.name, force=True,
                           stop_before_pixels=True)
        datasets.append(ds)
    return datasets
