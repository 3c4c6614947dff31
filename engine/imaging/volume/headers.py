"""What assembly needs from each slice's header: one small record per slice or frame.

Only these records are kept while a series is examined (never a dataset), so examining
2,000 files costs a few hundred bytes each. An enhanced multi-frame object gives one record
per frame, its position, orientation and pixel spacing read from the per-frame
functional groups (PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence),
else from the shared ones, else from the top level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from engine.imaging.decode import first_number, frame_value
from engine.imaging.volume.geometry import orientation_matrix


@dataclass(frozen=True)
class SliceHeader:
    """One slice (a single-frame instance, or one frame of a multi-frame one).

    ``frame`` is the 0-based frame index, None for a single-frame instance; ``uid`` names
    the slice as ``SOPInstanceUID`` or ``SOPInstanceUID#n`` (n the 1-based frame number, as
    DICOM references frames).
    """

    path: Path
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

    @property
    def uid(self) -> str:
        return self.sop_instance_uid if self.frame is None else f"{self.sop_instance_uid}#{self.frame + 1}"

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    @property
    def sop_class_name(self) -> str:
        return UID(self.sop_class_uid).name if self.sop_class_uid else "unknown SOP class"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
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


def slice_headers(ds: Dataset, path: Path) -> list[SliceHeader]:
    """The slice records of one dataset read up to its pixel data (one per frame)."""
    frames = max(_int(ds.get("NumberOfFrames")) or 1, 1)
    multi = frames > 1 or "PerFrameFunctionalGroupsSequence" in ds
    common = {
        "path": path, "sop_instance_uid": _text(ds, "SOPInstanceUID"), "sop_class_uid": _text(ds, "SOPClassUID"),
        "series_uid": _text(ds, "SeriesInstanceUID"), "modality": _text(ds, "Modality"),
        "image_type": _words(ds.get("ImageType")),
        "rows": _int(ds.get("Rows")) or 0, "columns": _int(ds.get("Columns")) or 0,
        "samples_per_pixel": _int(ds.get("SamplesPerPixel")) or 1,
        "acquisition_number": _int(ds.get("AcquisitionNumber")),
        "instance_number": _int(ds.get("InstanceNumber")),
        "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID") or None,
        "series_description": _text(ds, "SeriesDescription"),
        "gantry_tilt": first_number(ds.get("GantryDetectorTilt")) or 0.0,
        "slice_spacing_hint": first_number(ds.get("SpacingBetweenSlices")) or first_number(ds.get("SliceThickness")),
    }
    if not multi:
        return [SliceHeader(
            frame=None, orientation=_numbers(ds.get("ImageOrientationPatient"), 6),
            position=_numbers(ds.get("ImagePositionPatient"), 3),
            pixel_spacing=_numbers(ds.get("PixelSpacing"), 2), **common)]
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
