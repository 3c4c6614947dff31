"""What assembly needs from each slice's header: one small record per slice or frame.

Only these records are kept while a series is examined (never a dataset), so examining
2,000 files costs a few hundred bytes each. An enhanced multi-frame object gives one record
per frame, its position, orientation and pixel spacing read from the per-frame
functional groups (PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence),
else from the shared ones, else from the top level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from engine.imaging.decode import first_number, frame_value
from engine.imaging.volume.geometry import orientation_matrix
from engine.imaging.volume.sources import SliceSource


@dataclass(frozen=True)
class NativePixels:
    """Where an uncompressed little-endian single-frame image keeps its stored values, and how to rescale
    them: enough to read them without parsing the file again (:mod:`engine.imaging.volume.native`)."""

    offset: int  # file offset of the Pixel Data element's tag
    explicit_vr: bool
    dtype: str  # numpy dtype of the stored values, e.g. "<i2"
    bits_stored: int
    slope: float
    intercept: float


@dataclass(frozen=True)
class SliceHeader:
    """One slice (a single-frame instance, or one frame of a multi-frame one).

    ``frame`` is the 0-based frame index, None for a single-frame instance; ``uid`` names
    the slice as ``SOPInstanceUID`` or ``SOPInstanceUID#n`` (n the 1-based frame number, as
    DICOM references frames).
    """

    source: SliceSource
    frame: int | None
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    modality: str
    image_type: tuple[str, ...]
    rows: int
    columns: int
    samples_per_pixel: int
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    acquisition_number: int | None = None
    instance_number: int | None = None
    stack_id: str | None = None
    temporal_index: int | None = None
    frame_of_reference_uid: str | None = None
    series_description: str = ""
    gantry_tilt: float = 0.0
    slice_spacing_hint: float | None = None  # SpacingBetweenSlices / SliceThickness: only without positions
    native: NativePixels | None = None  # how to read the pixels straight from the file, when that is safe

    @property
    def uid(self) -> str:
        return self.sop_instance_uid if self.frame is None else f"{self.sop_instance_uid}#{self.frame + 1}"

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    @property
    def sop_class_name(self) -> str:
        return UID(self.sop_class_uid).name if self.sop_class_uid else "unknown SOP class"


#: Value representations stored as ASCII text, the same bytes in every transfer syntax.
TEXT_VRS = frozenset({"DS", "IS", "CS", "UI"})


@cache
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    return tag, dictionary_VR(tag)


def _value(ds: Dataset, keyword: str) -> Any:
    """``ds.get(keyword)``, except that a DS, IS, CS or UI element pydicom has not converted yet is split
    and decoded here (str, or a list of str): pydicom's conversion (a validated DSfloat per value) is
    most of what reading a slice's header costs. Other elements go through pydicom."""
    tag, vr = _tag_and_vr(keyword)
    if vr in TEXT_VRS:
        element = ds.get_item(tag)
        if element is None:
            return None
        if isinstance(element, RawDataElement) and isinstance(element.value, bytes):
            parts = [part.strip(b" \x00").decode("ascii", "replace") for part in element.value.split(b"\\")]
            return parts[0] if len(parts) == 1 else parts
    return ds.get(keyword)


def _text(ds: Dataset, keyword: str) -> str:
    value = _value(ds, keyword) if keyword != "SeriesDescription" else ds.get(keyword)
    return str(value).strip() if value not in (None, "") else ""


def _words(value: Any) -> tuple[str, ...]:
    """A multi-valued code string (ImageType, FrameType) as upper-case words."""
    if value in (None, ""):
        return ()
    values = (value,) if isinstance(value, str) else value
    return tuple(str(v).strip().upper() for v in values)


def _int(value: Any) -> int | None:
    number = first_number(value)
    return int(number) if number is not None else None


def _numbers(value: Any, count: int) -> tuple[float, ...] | None:
    """``count`` finite numbers from a multi-valued tag, else None."""
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(n == n and abs(n) != float("inf") for n in numbers) else None


def _frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` in the frame's per-frame functional group (only)."""
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    if groups and frame < len(groups):
        items = groups[frame].get(sequence)
        if items:
            return items[0]
    return None


#: Stored value types by (BitsAllocated, PixelRepresentation), little endian.
NATIVE_DTYPES = {(8, 0): "u1", (8, 1): "i1", (16, 0): "<u2", (16, 1): "<i2", (32, 0): "<u4", (32, 1): "<i4"}
NATIVE_SYNTAXES = {ExplicitVRLittleEndian: True, ImplicitVRLittleEndian: False}


def _native(ds: Dataset, pixel_offset: int | None) -> NativePixels | None:
    """The direct-read recipe for a plain grayscale single frame, None for anything else (compressed,
    big endian, multi-frame, colour, a Modality LUT, signed values narrower than their container)."""
    explicit = NATIVE_SYNTAXES.get(str(ds.file_meta.get("TransferSyntaxUID") or ""))
    if pixel_offset is None or explicit is None or "ModalityLUTSequence" in ds:
        return None
    if (_int(_value(ds, "NumberOfFrames")) or 1) != 1 or (_int(ds.get("SamplesPerPixel")) or 1) != 1:
        return None
    allocated, representation = _int(ds.get("BitsAllocated")), _int(ds.get("PixelRepresentation")) or 0
    stored = _int(ds.get("BitsStored")) or allocated
    dtype = NATIVE_DTYPES.get((allocated, representation))
    if dtype is None or stored is None or stored > allocated or (representation == 1 and stored != allocated):
        return None
    slope, intercept = first_number(_value(ds, "RescaleSlope")), first_number(_value(ds, "RescaleIntercept"))
    return NativePixels(pixel_offset, explicit, dtype, stored, 1.0 if slope is None else slope, intercept or 0.0)


def slice_headers(ds: Dataset, source: SliceSource, pixel_offset: int | None = None) -> list[SliceHeader]:
    """The slice records of one dataset read up to its pixel data (one per frame); ``pixel_offset`` is
    where its Pixel Data element starts in the source's bytes, if known."""
    frames = max(_int(_value(ds, "NumberOfFrames")) or 1, 1)
    multi = frames > 1 or "PerFrameFunctionalGroupsSequence" in ds
    common = {
        "source": source, "sop_instance_uid": _text(ds, "SOPInstanceUID"), "sop_class_uid": _text(ds, "SOPClassUID"),
        "series_uid": _text(ds, "SeriesInstanceUID"), "modality": _text(ds, "Modality"),
        "image_type": _words(_value(ds, "ImageType")),
        "rows": _int(ds.get("Rows")) or 0, "columns": _int(ds.get("Columns")) or 0,
        "samples_per_pixel": _int(ds.get("SamplesPerPixel")) or 1,
        "acquisition_number": _int(_value(ds, "AcquisitionNumber")),
        "instance_number": _int(_value(ds, "InstanceNumber")),
        "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID") or None,
        "series_description": _text(ds, "SeriesDescription"),
        "gantry_tilt": first_number(_value(ds, "GantryDetectorTilt")) or 0.0,
        "slice_spacing_hint": first_number(_value(ds, "SpacingBetweenSlices")) or first_number(_value(ds, "SliceThickness")),
    }
    if not multi:
        return [SliceHeader(
            frame=None, orientation=_numbers(_value(ds, "ImageOrientationPatient"), 6),
            position=_numbers(_value(ds, "ImagePositionPatient"), 3),
            pixel_spacing=_numbers(_value(ds, "PixelSpacing"), 2), native=_native(ds, pixel_offset), **common)]
    records = []
    for frame in range(frames):
        # A position only from the frame's own group: a shared or top-level one would put every frame at one place.
        plane = _frame_item(ds, frame, "PlanePositionSequence")
        content = _frame_item(ds, frame, "FrameContentSequence")
        frame_type = (frame_value(ds, frame, "CTImageFrameTypeSequence", "FrameType")
                      or frame_value(ds, frame, "MRImageFrameTypeSequence", "FrameType"))
        image_type = _words(frame_type) or common["image_type"]
        records.append(SliceHeader(
            frame=frame,
            orientation=_numbers(frame_value(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
            position=_numbers(plane.get("ImagePositionPatient"), 3) if plane is not None else None,
            pixel_spacing=_numbers(frame_value(ds, frame, "PixelMeasuresSequence", "PixelSpacing"), 2),
            stack_id=_text(content, "StackID") or None if content is not None else None,
            temporal_index=_int(content.get("TemporalPositionIndex")) if content is not None else None,
            **{**common, "image_type": image_type}))
    return records


def has_geometry(header: SliceHeader) -> bool:
    """Whether the slice says where it is: a position and a valid orientation."""
    return header.position is not None and orientation_matrix(header.orientation) is not None


#: Version of :func:`header_record`'s form; records of another version are read again from the object.
HEADER_RECORD_VERSION = 1
_TUPLE_FIELDS = ("image_type", "orientation", "position", "pixel_spacing")


def header_record(header: SliceHeader) -> dict[str, Any]:
    """A slice record as JSON (everything but its source), kept with a stored image so a series can be
    listed and planned without decrypting or parsing its objects again."""
    record = {f.name: getattr(header, f.name) for f in fields(header) if f.name not in ("source", "native")}
    record["native"] = asdict(header.native) if header.native is not None else None
    return {"version": HEADER_RECORD_VERSION, **record}


def header_from_record(record: Any, source: SliceSource) -> SliceHeader | None:
    """The slice record :func:`header_record` made, for ``source``; None when it is not one (another
    version, a damaged row): the caller reads the object instead."""
    if not isinstance(record, dict) or record.get("version") != HEADER_RECORD_VERSION:
        return None
    try:
        values = {k: v for k, v in record.items() if k != "version"}
        for name in _TUPLE_FIELDS:
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        if values.get("native") is not None:
            values["native"] = NativePixels(**values["native"])
        return SliceHeader(source=source, **values)
    except (TypeError, ValueError):
        return None
