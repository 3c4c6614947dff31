"""Decode DICOM, PNG and JPEG into one :class:`DecodedImage` that every pipeline uses.

The format is detected from content, never from the file name: "DICM" at offset 128,
the PNG or JPEG signature, or a DICOM dataset without preamble (its first tag in group
0002 or 0008, read with ``force=True`` and accepted only if it holds a SOP Class UID,
Pixel Data or a Waveform Sequence).

Sizes are checked before anything big is allocated (:mod:`engine.imaging.limits`,
limits from :class:`engine.config.DecodeLimits`): a DICOM header's rows x columns and
whole Pixel Data size, a Deflated dataset's inflated size (inflated in bounded steps,
never whole), a PNG's or JPEG's pixel count from its header. Pillow's
``DecompressionBombWarning`` is an error. A refusal is ``IMAGE_TOO_LARGE``.

DICOM pixel data is decoded by pydicom (uncompressed, deflate, RLE, JPEG, JPEG-LS and
JPEG 2000 through the pylibjpeg plugins), one frame at a time. ECG waveforms are
rendered to an image (:mod:`engine.imaging.waveform`); the frame index then selects the
multiplex group. Objects without an image (SR, RT plan, ...) raise
``UNSUPPORTED_FORMAT`` naming their SOP class.

Identifying tags go to ``DecodedImage.patient`` only; ``metadata`` holds technical tags,
and neither is ever logged.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import struct
import time
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PersonName

from engine.config import DecodeLimits
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.image_type import detect_image_type
from engine.imaging.limits import check_image_pixels, image_too_large, read_dicom
from engine.imaging.waveform import render_ecg

logger = logging.getLogger(__name__)

# Pillow only warns between MAX_IMAGE_PIXELS and twice that; here it is an error (the
# explicit check in _decode_raster refuses the same sizes without relying on filters).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

# What pydicom, its plugins, Pillow and numpy raise on bad input; anything else is a bug.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, KeyError, IndexError, AttributeError, OSError, EOFError,
    NotImplementedError, RuntimeError, SyntaxError, OverflowError, InvalidDicomError,
    struct.error, zlib.error, Image.DecompressionBombError,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Tag groups a dataset without preamble plausibly starts with (file meta, identifying).
RAW_DICOM_FIRST_GROUPS = (0x0002, 0x0008)
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
AUTO_WINDOW_PERCENTILES = (0.5, 99.5)
AUTO_WINDOW_SAMPLES = 65536

METADATA_KEYWORDS = (
    "Modality", "BodyPartExamined", "ViewPosition", "Laterality", "ImageLaterality", "PatientOrientation",
    "SOPClassUID", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "Manufacturer",
    "ManufacturerModelName", "StudyDescription", "SeriesDescription", "ImageType",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "VOILUTFunction",
)
PATIENT_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "AccessionNumber", "StudyDate", "StudyTime", "InstitutionName", "ReferringPhysicianName",
)


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """One decoded frame with the values, display window and tags the engine needs.

    ``raw`` holds the stored values as decoded by pydicom or Pillow (colour already
    converted to RGB; PALETTE COLOR keeps its indices). ``pixels`` holds float32
    modality values (HU for CT) or, for colour, RGB scaled to 0..255. ``max_value`` is
    the largest value the stored data can take. ``window_source`` is "dicom"
    (WindowCenter/Width, first value), "voi_lut" (VOI LUT Sequence) or "auto"
    (see :func:`_auto_window`). ``spacing_source`` is "PixelSpacing",
    "ImagerPixelSpacing" (detector plane, not calibrated at the patient) or "none".
    ``patient`` holds the identifying tags: store it encrypted and never log it.
    """

    raw: np.ndarray = field(repr=False)
    pixels: np.ndarray = field(repr=False)
    format: str
    photometric: str
    is_color: bool
    bits_stored: int
    max_value: float
    rows: int
    columns: int
    frame_index: int
    frame_count: int
    window_center: float
    window_width: float
    window_source: str
    metadata: dict[str, Any] = field(repr=False)
    image_type: str
    type_reason: str
    type_confidence: float
    invert: bool = False
    pixel_spacing_mm: tuple[float, float] | None = None
    spacing_source: str = "none"
    modality: str | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient: dict[str, Any] = field(default_factory=dict, repr=False)
    voi_function: str = "LINEAR"
    voi_lut: tuple[int, np.ndarray] | None = field(default=None, repr=False)

    def display(
        self, window_center: float | None = None, window_width: float | None = None
    ) -> np.ndarray:
        """Render the frame as uint8 for the screen, dense tissue bright.

        Grayscale: the VOI LUT Sequence if the file has one and no window is given,
        else the window (this image's, overridden by the arguments) through the file's
        VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1), then
        inverted for MONOCHROME1. Colour: RGB as is, or linearly windowed per channel
        when a window is given.
        """
        if window_center is None and window_width is None:
            if self.voi_lut is not None:
                first_map, table = self.voi_lut
                index = np.clip(self.pixels - first_map, 0, len(table) - 1).astype(np.intp)
                return table[index]
            if self.is_color:
                return np.clip(self.pixels + 0.5, 0, 255).astype(np.uint8)
        center = self.window_center if window_center is None else float(window_center)
        width = self.window_width if window_width is None else float(window_width)
        if not (math.isfinite(center) and math.isfinite(width) and width > 0):
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT,
                "Window center must be finite and window width finite and positive.",
                window_center=window_center, window_width=window_width,
            )
        function = "LINEAR" if self.is_color else self.voi_function
        return window_to_uint8(self.pixels, center, width, function, invert=self.invert)


def window_to_uint8(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR",
    *, invert: bool = False,
) -> np.ndarray:
    """Map values through a VOI window to 0..255 uint8 in float32 (fast, few passes).

    LINEAR follows PS3.3 C.11.2.1.2.1 (center - 0.5, width - 1), LINEAR_EXACT uses
    center and width as given, SIGMOID is C.11.2.1.3.1; ``invert`` flips the output.
    """
    if function == "SIGMOID":
        out = np.subtract(values, center, dtype=np.float32)
        out *= -4.0 / width
        with np.errstate(over="ignore"):  # exp -> inf far below the window: maps to 0
            np.exp(out, out=out)
        out += 1.0
        np.divide(255.0, out, out=out)
        if invert:
            np.subtract(255.0, out, out=out)
        out += 0.5
    else:
        if function == "LINEAR_EXACT":
            low, span = center - width / 2, width
        else:
            low, span = center - 0.5 - (width - 1) / 2, max(width - 1, 1e-3)
        scale = 255.0 / span
        # out = (v - low) * scale, or 255 - that when inverted; +0.5 rounds on the cast.
        if invert:
            scale, offset = -scale, 255.0 + low * scale + 0.5
        else:
            offset = -low * scale + 0.5
        out = np.multiply(values, scale, dtype=np.float32)
        out += offset
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def decode_image(
    source: bytes | str | Path, *, frame: int = 0, filename: str | None = None,
    limits: DecodeLimits | None = None,
) -> DecodedImage:
    """Decode a DICOM, PNG or JPEG image (path or bytes) into a :class:`DecodedImage`.

    Parameters
    ----------
    source:
        File content, or a path to read.
    frame:
        0-based frame of a multi-frame DICOM (multiplex group for ECG waveforms).
    filename:
        Name used in error messages for byte input; defaults to the path's base name
        (only a base name is ever shown, never a directory).
    limits:
        Size limits checked before decoding; default :meth:`DecodeLimits.from_env`.

    Returns
    -------
    DecodedImage
        The window comes from the file (VOI LUT Sequence, else WindowCenter/Width,
        first value, also read from enhanced functional groups) or is automatic: the
        0.5th..99.5th percentiles of ``pixels`` on a strided subsample of about 64k
        pixels. 8-bit PNG/JPEG, colour and rendered ECG images keep their 0..255 range.

    Raises
    ------
    MedVisionError
        FILE_NOT_FOUND, INVALID_ARGUMENT (bad frame), UNSUPPORTED_FORMAT (unknown
        format, DICOM without image), IMAGE_DECODE_ERROR (corrupt data) or
        IMAGE_TOO_LARGE (over a limit, or out of memory while decoding).
    """
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise MedVisionError(
            ErrorCode.INVALID_ARGUMENT, "Frame must be a non-negative integer.", frame=repr(frame)
        )
    limits = limits or DecodeLimits.from_env()
    started = time.perf_counter()
    data, name = _read_source(source, filename)
    try:
        if data[128:132] == b"DICM":
            decoded = _decode_dicom(data, frame, name, limits, preamble=True)
        elif data.startswith(PNG_SIGNATURE):
            decoded = _decode_raster(data, frame, name, "png", limits)
        elif data.startswith(JPEG_SIGNATURE):
            decoded = _decode_raster(data, frame, name, "jpeg", limits)
        elif len(data) >= 8 and looks_like_raw_dicom(data):
            decoded = _decode_dicom(data, frame, name, limits, preamble=False)
        else:
            raise MedVisionError(
                ErrorCode.UNSUPPORTED_FORMAT,
                f"'{name}' is not a DICOM, PNG or JPEG file.", file=name,
            )
    except MemoryError as exc:  # what the limits let through still did not fit
        raise MedVisionError(
            ErrorCode.IMAGE_TOO_LARGE, f"'{name}' is too large to decode in the memory available.",
            file=name, cause=type(exc).__name__,
        ) from None
    logger.debug(
        "decoded %s %dx%d frame %d/%d in %.1f ms", decoded.format, decoded.columns,
        decoded.rows, frame, decoded.frame_count, (time.perf_counter() - started) * 1000,
    )
    return decoded


def _read_source(source: bytes | str | Path, filename: str | None) -> tuple[bytes, str]:
    """Return the content and the base name used in messages (never a full path)."""
    if filename is not None:
        filename = Path(filename).name
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), filename or "<bytes>"
    if not isinstance(source, str | os.PathLike):
        raise MedVisionError(
            ErrorCode.INVALID_ARGUMENT,
            f"Image source must be bytes or a path, not {type(source).__name__}.",
        )
    path = Path(source)
    name = filename or path.name
    try:
        return path.read_bytes(), name
    except FileNotFoundError as exc:
        raise MedVisionError(
            ErrorCode.FILE_NOT_FOUND, f"File '{name}' does not exist.", file=name
        ) from exc
    except OSError as exc:
        raise MedVisionError(
            ErrorCode.FILE_NOT_FOUND, f"File '{name}' cannot be read ({exc.strerror}).", file=name
        ) from exc
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "Invalid image path.") from exc


def looks_like_raw_dicom(data: bytes) -> bool:
    """True if the bytes start like a DICOM dataset without preamble (either endian)."""
    return (int.from_bytes(data[:2], "little") in RAW_DICOM_FIRST_GROUPS
            or int.from_bytes(data[:2], "big") in RAW_DICOM_FIRST_GROUPS)


# --------------------------------------------------------------------------- DICOM


def _decode_dicom(data: bytes, frame: int, name: str, limits: DecodeLimits, *,
                  preamble: bool) -> DecodedImage:
    """Read a DICOM dataset within the limits and decode one frame (or render its ECG)."""
    try:
        ds, _ = read_dicom(io.BytesIO(data), limits, name=name, force=not preamble)
        has_pixels = any(keyword in ds for keyword in PIXEL_DATA_KEYWORDS)
        has_waveform = "WaveformSequence" in ds
        plausible = has_pixels or has_waveform or "SOPClassUID" in ds
    except DECODE_ERRORS as exc:
        raise _decode_error(name, "the DICOM dataset cannot be read", exc) from exc
    if not preamble and not plausible:
        raise MedVisionError(
            ErrorCode.UNSUPPORTED_FORMAT, f"'{name}' is not a DICOM, PNG or JPEG file.", file=name
        )
    if not has_pixels and not has_waveform:
        if len(ds) == 0:
            raise MedVisionError(
                ErrorCode.IMAGE_DECODE_ERROR,
                f"'{name}' holds no readable DICOM elements (truncated or corrupt).", file=name,
            )
        sop_class_uid = str(
            ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or ""
        )
        sop_name = UID(sop_class_uid).name if sop_class_uid else "unknown"
        raise MedVisionError(
            ErrorCode.UNSUPPORTED_FORMAT,
            f"'{name}' holds no image or waveform to display (SOP class: {sop_name}).",
            file=name, sop_class_uid=sop_class_uid, sop_class_name=sop_name,
        )
    try:
        if has_pixels:
            return _dicom_image(ds, frame, name)
        return _dicom_waveform(ds, frame, name)
    except MedVisionError:
        raise
    except DECODE_ERRORS as exc:
        raise _decode_error(name, "the DICOM image cannot be decoded", exc) from exc


def _decode_error(name: str, what: str, exc: BaseException) -> MedVisionError:
    """Wrap a library error as IMAGE_DECODE_ERROR, naming its type but not its text (PHI risk)."""
    return MedVisionError(
        ErrorCode.IMAGE_DECODE_ERROR, f"'{name}': {what} ({type(exc).__name__}).",
        file=name, cause=type(exc).__name__,
    )


def _check_frame(frame: int, frame_count: int, name: str) -> None:
    """Refuse a frame index outside 0..frame_count-1."""
    if frame >= frame_count:
        raise MedVisionError(
            ErrorCode.INVALID_ARGUMENT,
            f"Frame {frame} is out of range: '{name}' has {frame_count} frame(s).",
            file=name, frame=frame, frame_count=frame_count,
        )


def _dicom_image(ds: Dataset, frame: int, name: str) -> DecodedImage:
    """Decode one frame of pixel data and apply the modality and colour transforms."""
    frame_count = int(ds.get("NumberOfFrames") or 1)
    _check_frame(frame, frame_count, name)
    raw = stored_frame(ds, frame)

    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    bits_stored = int(ds.get("BitsStored") or raw.dtype.itemsize * 8)
    if raw.dtype.kind == "f":
        max_value = float(np.nanmax(raw))
    elif int(ds.get("PixelRepresentation") or 0) == 1:
        max_value = float(2 ** (bits_stored - 1) - 1)
    else:
        max_value = float(2**bits_stored - 1)
    voi_function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
    voi_function = voi_function if voi_function in VOI_FUNCTIONS else "LINEAR"
    invert = photometric == "MONOCHROME1"
    voi_lut = None

    if photometric == "PALETTE COLOR":
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        pixels = apply_color_lut(raw, ds).astype(np.float32)
        pixels *= np.float32(255.0 / (2**lut_bits - 1))
    elif raw.ndim == 3:
        pixels = raw.astype(np.float32)
        if max_value != 255:
            pixels *= np.float32(255.0 / max_value)
    else:
        pixels = modality_values(ds, raw, frame)

    if pixels.ndim == 3:
        window_center, window_width, window_source = 128.0, 256.0, "auto"
    elif ds.get("VOILUTSequence"):
        voi_lut = _voi_lut_table(ds, invert)
        window_width, window_source = float(len(voi_lut[1])), "voi_lut"
        window_center = voi_lut[0] + window_width / 2
    else:
        window_center = first_number(
            frame_value(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
        window_width = first_number(frame_value(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
        window_source = "dicom"
        if window_center is None or window_width is None or window_width <= 0:
            (window_center, window_width), window_source = _auto_window(pixels), "auto"

    spacing, spacing_source = _pixel_spacing(ds, frame)
    return _build(
        raw, pixels, photometric=photometric, is_color=pixels.ndim == 3, invert=invert,
        bits_stored=bits_stored, max_value=max_value, frame_index=frame,
        frame_count=frame_count, window_center=window_center, window_width=window_width,
        window_source=window_source, voi_function=voi_function, voi_lut=voi_lut,
        pixel_spacing_mm=spacing, spacing_source=spacing_source, **dicom_fields(ds),
    )


def stored_frame(ds: Dataset, frame: int) -> np.ndarray:
    """The stored values of one frame (0-based) in native byte order, decoded by pydicom and its
    plugins (every transfer syntax :func:`decode_image` reads); the dataset's pixel data must already
    have passed :func:`engine.imaging.limits.check_pixel_limits`."""
    native = "PixelData" not in ds or not ds["PixelData"].is_undefined_length
    if not ds.file_meta.get("TransferSyntaxUID") and native:
        # No file meta (or no syntax in it): native data read as pydicom detected it.
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else
            ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    raw = pixel_array(ds, index=frame)
    return raw.astype(raw.dtype.newbyteorder("="), copy=False)


def _dicom_waveform(ds: Dataset, frame: int, name: str) -> DecodedImage:
    """Render an ECG multiplex group (selected by ``frame``) as a grayscale image."""
    frame_count = len(ds.WaveformSequence)
    _check_frame(frame, frame_count, name)
    image, waveform_info = render_ecg(ds, frame)
    fields = dicom_fields(ds)
    fields["metadata"]["waveform"] = waveform_info
    return _build(
        image, image.astype(np.float32), photometric="MONOCHROME2", is_color=False,
        bits_stored=8, max_value=255.0, frame_index=frame, frame_count=frame_count,
        window_center=128.0, window_width=256.0, window_source="auto", **fields,
    )


def dicom_fields(ds: Dataset) -> dict[str, Any]:
    """The identity fields of a DICOM image: UIDs, modality, metadata, patient tags."""
    metadata = _tag_values(ds, METADATA_KEYWORDS)
    sop_class_uid = metadata.get("SOPClassUID")
    metadata.update(
        SOPClassName=UID(sop_class_uid).name if sop_class_uid else None,
        TransferSyntaxUID=str(ds.file_meta.get("TransferSyntaxUID") or "") or None,
    )
    return {
        "format": "dicom", "metadata": metadata, "modality": metadata.get("Modality"),
        "sop_class_uid": sop_class_uid, "sop_instance_uid": _uid(ds, "SOPInstanceUID"),
        "study_instance_uid": _uid(ds, "StudyInstanceUID"),
        "series_instance_uid": _uid(ds, "SeriesInstanceUID"),
        "patient": _tag_values(ds, PATIENT_KEYWORDS),
    }


def _build(raw: np.ndarray, pixels: np.ndarray, **fields: Any) -> DecodedImage:
    """Finish a DecodedImage: record frame, window and spacing in metadata, detect the type."""
    metadata = fields.pop("metadata")
    spacing = fields.get("pixel_spacing_mm")
    spacing_source = fields.get("spacing_source", "none")
    metadata.update(
        format=fields["format"], frame_index=fields["frame_index"],
        frame_count=fields["frame_count"],
        window={"center": float(fields["window_center"]), "width": float(fields["window_width"]),
                "source": fields["window_source"],
                "function": fields.get("voi_function", "LINEAR")},
        pixel_spacing={"pixel_spacing_mm": list(spacing) if spacing else None,
                       "source": spacing_source,
                       "calibrated_at_patient": spacing_source == "PixelSpacing"},
    )
    guess = detect_image_type(metadata, raw)
    return DecodedImage(
        raw=raw, pixels=pixels, rows=int(raw.shape[0]), columns=int(raw.shape[1]),
        metadata=metadata, image_type=guess.image_type, type_reason=guess.reason,
        type_confidence=guess.confidence, **fields,
    )


def frame_value(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """Read a tag from the dataset, else from the frame's functional groups.

    Enhanced multi-frame objects (Enhanced CT/MR) keep rescale, window and spacing
    in the per-frame or shared functional groups rather than at the top level.
    """
    if keyword in ds:
        return ds[keyword].value
    for groups_keyword, index in (("PerFrameFunctionalGroupsSequence", frame),
                                  ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_keyword)
        if groups and index < len(groups):
            items = groups[index].get(sequence)
            if items and keyword in items[0]:
                return items[0][keyword].value
    return None


def modality_values(ds: Dataset, raw: np.ndarray, frame: int) -> np.ndarray:
    """Apply the Modality LUT or rescale (PS3.3 C.11.1) and return float32 values.

    A Modality LUT Sequence goes through pydicom's ``apply_modality_lut``. Rescale
    slope/intercept are applied here instead, in float32 (pydicom's float64 would
    double time and memory) and also when they sit in the functional groups.
    """
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(raw, ds).astype(np.float32)
    pixels = raw.astype(np.float32)
    transform = "PixelValueTransformationSequence"
    slope = first_number(frame_value(ds, frame, transform, "RescaleSlope"))
    intercept = first_number(frame_value(ds, frame, transform, "RescaleIntercept"))
    if slope is not None and slope != 1:
        pixels *= np.float32(slope)
    if intercept:
        pixels += np.float32(intercept)
    return pixels


def _voi_lut_table(ds: Dataset, invert: bool) -> tuple[int, np.ndarray]:
    """Build the first VOI LUT as (first mapped value, uint8 table), inverted if needed.

    pydicom's ``apply_voi`` reads the LUT (it handles US/OW data and endianness). The
    output is scaled by the range its entries actually use (at least 8 bits), since
    many LUTs declare 16 bits per entry but hold 12-bit values.
    """
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first_map = int(descriptor[0]) or 2**16, int(descriptor[1])
    lut = apply_voi(np.arange(first_map, first_map + entries), ds).astype(np.float32)
    top = 2 ** max(8, int(lut.max()).bit_length()) - 1
    table = np.clip(lut * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    return first_map, (255 - table if invert else table)


def _auto_window(pixels: np.ndarray) -> tuple[float, float]:
    """Window from the 0.5th..99.5th percentiles of ~64k strided samples (robust to outliers)."""
    step = max(1, int(math.sqrt(pixels.size / AUTO_WINDOW_SAMPLES)))
    sample = pixels[::step, ::step]
    low, high = (float(v) for v in np.nanpercentile(sample, AUTO_WINDOW_PERCENTILES))
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.5, 1.0
    return (low + high) / 2, max(high - low, 1.0)


def first_number(value: Any) -> float | None:
    """First value of a numeric (possibly multi-valued) tag as a finite float, else None."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _pixel_spacing(ds: Dataset, frame: int) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm and where it came from.

    PixelSpacing is calibrated at the patient; ImagerPixelSpacing is at the detector
    plane (not corrected for magnification). Zero, negative, non-numeric or missing
    values give ``(None, "none")``; PixelAspectRatio alone carries no size either.
    """
    candidates = (
        ("PixelSpacing", lambda: frame_value(ds, frame, "PixelMeasuresSequence", "PixelSpacing")),
        ("ImagerPixelSpacing", lambda: ds.get("ImagerPixelSpacing")),
    )
    for source, read in candidates:
        try:
            values = [float(v) for v in (read() or [])]
        except (TypeError, ValueError):
            continue
        if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values):
            return (values[0], values[1]), source
    return None, "none"


def _uid(ds: Dataset, keyword: str) -> str | None:
    """A UID tag as plain str, or None when absent or empty."""
    value = ds.get(keyword)
    return str(value) if value else None


def _json_value(value: Any) -> Any:
    """Turn a pydicom value into plain JSON (str/int/float/list/None)."""
    if isinstance(value, MultiValue | list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str | PersonName):
        return str(value)
    return None  # bytes, sequences: not part of the JSON view


def _tag_values(ds: Dataset, keywords: tuple[str, ...]) -> dict[str, Any]:
    """Collect the present, readable tags as JSON values; malformed ones are skipped."""
    values: dict[str, Any] = {}
    for keyword in keywords:
        try:
            value = ds.get(keyword)
        except (ValueError, TypeError, KeyError) as exc:
            logger.debug("skipping malformed tag %s (%s)", keyword, type(exc).__name__)
            continue
        if value is not None and value != "":
            values[keyword] = _json_value(value)
    return values


# ---------------------------------------------------------------------- PNG / JPEG


def _decode_raster(data: bytes, frame: int, name: str, image_format: str,
                   limits: DecodeLimits) -> DecodedImage:
    """Decode a PNG or JPEG with Pillow: 8/16-bit grayscale, or RGB (alpha, palette dropped).

    The size in the header is checked before ``load()`` against ``max_image_pixels``
    and Pillow's ``MAX_IMAGE_PIXELS`` (its warning threshold), whichever is lower.
    """
    _check_frame(frame, 1, name)
    try:
        with Image.open(io.BytesIO(data), formats=[image_format.upper()]) as image:
            pillow_limit = Image.MAX_IMAGE_PIXELS or limits.max_image_pixels
            check_image_pixels(image.height, image.width,
                               replace(limits, max_image_pixels=min(limits.max_image_pixels, pillow_limit)), name)
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                raw = np.asarray(image)
                if mode == "I":  # some 16-bit PNGs open as 32-bit int
                    raw = np.clip(raw, 0, 65535).astype(np.uint16)
                raw = raw.astype(np.uint16, copy=False)
            elif mode in ("L", "1", "LA"):
                raw = np.asarray(image.convert("L"))
            else:
                raw = np.asarray(image.convert("RGB"))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow names the size, nothing else
        raise image_too_large(name, "its pixel count (Pillow's decompression-bomb check)",
                              int(found.group(1)) if found else 0,
                              min(limits.max_image_pixels, Image.MAX_IMAGE_PIXELS or limits.max_image_pixels),
                              "MEDVISION_MAX_IMAGE_PIXELS") from None
    except DECODE_ERRORS as exc:
        what = f"the {image_format.upper()} image cannot be decoded"
        raise _decode_error(name, what, exc) from exc

    bits_stored = 16 if raw.dtype == np.uint16 else 8
    pixels = raw.astype(np.float32)
    if bits_stored == 16:
        (window_center, window_width), window_source = _auto_window(pixels), "auto"
    else:  # 8-bit files are already rendered for display: keep them as they are
        window_center, window_width, window_source = 128.0, 256.0, "auto"
    metadata = {"mode": mode, "Rows": raw.shape[0], "Columns": raw.shape[1],
                "BitsStored": bits_stored}
    return _build(
        raw, pixels, format=image_format, photometric="RGB" if raw.ndim == 3 else "MONOCHROME2",
        is_color=raw.ndim == 3, bits_stored=bits_stored, max_value=float(2**bits_stored - 1),
        frame_index=0, frame_count=1, window_center=window_center, window_width=window_width,
        window_source=window_source, metadata=metadata,
    )
