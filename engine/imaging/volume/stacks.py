"""A series' slices into stacks, the way 3D Slicer's scalar-volume plugin splits them.

Slices are grouped by SeriesInstanceUID, then by orientation, image size (rows, columns,
samples), image type, and the enhanced objects' stack and temporal position; localizers
(ImageType LOCALIZER) are taken out first. Acquisition Number splits a group only where
two acquisitions cover the same positions (a multi-phase series); acquisitions that follow
each other along the table (a step-and-shoot scan numbering each rotation) stay one
stack. Each stack is sorted along its slice normal and two slices at one position keep
the one with the lower InstanceNumber. The largest stack of a series is its main
volume; everything set aside is reported on it (localizers, other orientations or sizes,
slices without a position, other acquisitions), never dropped silently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume.geometry import (
    EPSILON_MM,
    NAMED_AT_MOST,
    duplicate_indices,
    orientation_key,
    orientation_matrix,
    slice_normal,
)
from engine.imaging.volume.headers import SliceHeader, has_geometry
from engine.imaging.volume.model import VolumeWarning, WarningCode

#: Direction cosines closer than this are one orientation (about 0.01 degrees).
ORIENTATION_TOLERANCE = 2e-4
#: Modalities of projection images: never a volume, whatever the files say.
PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "RG", "IO", "PX", "XA", "RF"})


@dataclass(frozen=True)
class PlanWarning:
    """A warning whose slice numbers are known only once the volume's slices are final:
    ``anchors`` are the UIDs of the slices it concerns."""

    code: str
    message: str
    anchors: tuple[str, ...] = ()

    def resolve(self, z_of: dict[str, int]) -> VolumeWarning:
        return VolumeWarning(self.code, self.message, tuple(sorted(z_of[u] for u in self.anchors if u in z_of)))


@dataclass(frozen=True)
class StackPlan:
    """One stack to assemble: its slices in order, and what was found while choosing them.

    ``patient_geometry`` is False for the frames of an enhanced object without per-frame
    positions (kept in stored frame order).
    """

    slices: tuple[SliceHeader, ...]
    warnings: tuple[PlanWarning, ...]
    patient_geometry: bool = True
    main: bool = True
    key: str = ""

    @property
    def first(self) -> SliceHeader:
        return self.slices[0]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return len(self.slices), self.first.rows, self.first.columns

    @property
    def voxel_bytes(self) -> int:
        z, y, x = self.shape_zyx
        return z * y * x * 4


def _names(headers: list[SliceHeader]) -> str:
    shown = ", ".join(h.uid for h in headers[:NAMED_AT_MOST])
    return shown + (f" and {len(headers) - NAMED_AT_MOST} more" if len(headers) > NAMED_AT_MOST else "")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _group_key(header: SliceHeader) -> tuple:
    orientation = orientation_matrix(header.orientation)
    spacing = tuple(round(v, 4) for v in header.pixel_spacing) if header.pixel_spacing else None
    return (orientation_key(orientation), header.rows, header.columns, header.samples_per_pixel, spacing,
            header.image_type, header.stack_id, header.temporal_index)


def _merge_near_orientations(headers: list[SliceHeader]) -> dict[tuple, list[SliceHeader]]:
    """Slices grouped by :func:`_group_key`, where orientations within ORIENTATION_TOLERANCE count as one
    (rounding alone must not split a stack: 0.99995 and 0.99994 round apart)."""
    groups: dict[tuple, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        groups[_group_key(header)].append(header)
    merged: dict[tuple, list[SliceHeader]] = {}
    for key, members in groups.items():
        home = next((k for k in merged if k[1:] == key[1:]
                     and max(abs(a - b) for a, b in zip(k[0], key[0], strict=True)) <= ORIENTATION_TOLERANCE), None)
        if home is None:
            merged[key] = list(members)
        else:
            merged[home] += members
    return merged


def _along(headers: list[SliceHeader]) -> np.ndarray:
    normal = slice_normal(orientation_matrix(headers[0].orientation))
    return np.asarray([h.position for h in headers], dtype=np.float64) @ normal


def _split_acquisitions(headers: list[SliceHeader]) -> list[list[SliceHeader]]:
    """One group, or one per Acquisition Number where acquisitions cover the same positions."""
    by_acquisition: dict[int | None, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        by_acquisition[header.acquisition_number].append(header)
    if len(by_acquisition) < 2:
        return [headers]
    spans = [np.sort(_along(group)) for group in by_acquisition.values()]
    for i, first in enumerate(spans):
        for second in spans[i + 1:]:
            nearest = np.abs(first[:, None] - second[None, :]).min() if first.size * second.size < 4_000_000 else 0.0
            if nearest < EPSILON_MM:
                return sorted(by_acquisition.values(), key=len, reverse=True)
    return [headers]


def _sorted_stack(headers: list[SliceHeader]) -> tuple[list[SliceHeader], list[PlanWarning]]:
    """Sort along the normal (ties: lower InstanceNumber, then UID first); one slice per position."""
    along = _along(headers)
    tie = [(h.instance_number if h.instance_number is not None else 2**62, h.uid) for h in headers]
    order = sorted(range(len(headers)), key=lambda i: (along[i], tie[i]))
    ordered = [headers[i] for i in order]
    sorted_along = along[order]
    dropped = set(duplicate_indices(sorted_along))
    pairs: list[tuple[SliceHeader, SliceHeader, float]] = []
    kept_index = 0
    for index in range(len(ordered)):
        if index not in dropped:
            kept_index = index
        else:
            pairs.append((ordered[kept_index], ordered[index], float(sorted_along[index])))
    if not pairs:
        return ordered, []
    shown = "; ".join(f"at {where:.3f} mm kept {kept.uid} (InstanceNumber {kept.instance_number}), left out "
                      f"{extra.uid} (InstanceNumber {extra.instance_number})"
                      for kept, extra, where in pairs[:NAMED_AT_MOST])
    more = f"; and {len(pairs) - NAMED_AT_MOST} more" if len(pairs) > NAMED_AT_MOST else ""
    warning = PlanWarning(WarningCode.DUPLICATE_POSITION,
                          f"{_plural(len(pairs), 'slice')} at a position another slice already holds (along the "
                          f"normal, within {EPSILON_MM} mm), left out: {shown}{more}",
                          tuple(kept.uid for kept, _, _ in pairs))
    return [h for i, h in enumerate(ordered) if i not in dropped], [warning]


def _describe_difference(main: SliceHeader, other: SliceHeader) -> str:
    if _group_key(main)[0] != _group_key(other)[0]:
        return WarningCode.MIXED_ORIENTATION
    if _group_key(main)[1:5] != _group_key(other)[1:5]:
        return WarningCode.MIXED_SIZE
    return WarningCode.OTHER_STACKS


def _set_aside_warning(main: SliceHeader, group: list[SliceHeader], own_volume: bool) -> PlanWarning:
    other = group[0]
    code = _describe_difference(main, other)
    what = {
        WarningCode.MIXED_ORIENTATION: f"another orientation ({', '.join(f'{v:g}' for v in other.orientation or ())})",
        WarningCode.MIXED_SIZE: f"another size ({other.columns} x {other.rows}"
                                f"{'' if other.samples_per_pixel == 1 else f' x {other.samples_per_pixel} samples'}, "
                                f"pixel spacing {other.pixel_spacing})",
        WarningCode.OTHER_STACKS: f"another acquisition or image type (AcquisitionNumber {other.acquisition_number}, "
                                  f"ImageType {'/'.join(other.image_type) or 'none'}"
                                  f"{'' if other.temporal_index is None else f', temporal position {other.temporal_index}'})",
    }[code]
    fate = "they make a volume of their own" if own_volume else "too few for a volume"
    return PlanWarning(code, f"{_plural(len(group), 'slice')} of this series with {what} left out of this volume "
                             f"({fate}): {_names(group)}")


def _frame_order_stacks(headers: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Frames without positions, per object, in stored frame order (only objects of 2+ frames)."""
    by_object: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        if header.frame is not None:
            by_object[header.sop_instance_uid].append(header)
    return [sorted(frames, key=lambda h: h.frame) for frames in by_object.values() if len(frames) > 1]


def _not_a_volume(headers: list[SliceHeader], reason: str) -> MedVisionError:
    first = headers[0]
    name = first.source.name
    return MedVisionError(ErrorCode.NOT_A_VOLUME, f"'{name}' cannot be assembled into a volume: {reason}.",
                          file=name, modality=first.modality, sop_class_name=first.sop_class_name,
                          slices=len(headers))


def _no_volume_reason(headers: list[SliceHeader]) -> str:
    first = headers[0]
    if first.modality in PROJECTION_MODALITIES or "X-Ray" in first.sop_class_name or "Radiograph" in first.sop_class_name:
        return (f"it is a {first.modality or 'projection'} radiograph ({first.sop_class_name}), a projection image "
                "with no slice position")
    if all(h.is_localizer for h in headers):
        return "its only images are localizers"
    if len(headers) == 1:
        return f"it is a single 2D {first.modality or ''} image ({first.sop_class_name}); a volume needs two or more slices"
    positioned = [h for h in headers if has_geometry(h) and not h.is_localizer]
    if not positioned:
        return (f"its {len(headers)} images carry no slice position and orientation "
                "(ImagePositionPatient, ImageOrientationPatient)")
    if len({_group_key(h) for h in positioned}) == 1 and np.ptp(_along(positioned)) < EPSILON_MM:
        return f"its {len(positioned)} slices all lie at one position"
    return "no two slices share an orientation and size"


def plan_series(headers: list[SliceHeader]) -> list[StackPlan]:
    """The stacks of one series, its main (largest) stack first; NOT_A_VOLUME when there is none."""
    localizers = [h for h in headers if h.is_localizer]
    candidates = [h for h in headers if not h.is_localizer]
    positioned = [h for h in candidates if has_geometry(h)]
    unpositioned = [h for h in candidates if not has_geometry(h)]

    groups = _merge_near_orientations(positioned)
    stacks: list[tuple[list[SliceHeader], list[PlanWarning], bool]] = []
    for group in groups.values():
        for part in _split_acquisitions(group):
            ordered, duplicates = _sorted_stack(part)
            stacks.append((ordered, duplicates, True))
    frame_ordered = _frame_order_stacks(unpositioned)
    for frames in frame_ordered:
        stacks.append((frames, [PlanWarning(
            WarningCode.NO_PER_FRAME_POSITION,
            f"the enhanced object {frames[0].sop_instance_uid} ({frames[0].sop_class_name}) has no per-frame "
            "ImagePositionPatient (PlanePositionSequence): its frames are stacked in stored frame order and the "
            "affine is nominal (spacing only, not patient coordinates)")], False))
    in_frame_stack = {h.uid for frames in frame_ordered for h in frames}
    loose = [h for h in unpositioned if h.uid not in in_frame_stack]

    volumes = [s for s in stacks if len(s[0]) >= 2]
    if not volumes:
        raise _not_a_volume(headers, _no_volume_reason(headers))
    volumes.sort(key=lambda s: (s[2], len(s[0])), reverse=True)  # positioned stacks first, then the largest
    main_slices = volumes[0][0]
    main_first = main_slices[0]
    notes: list[PlanWarning] = []
    if localizers:
        notes.append(PlanWarning(WarningCode.LOCALIZER_REMOVED,
                                 f"{_plural(len(localizers), 'localizer')} (ImageType LOCALIZER) left out: "
                                 f"{_names(localizers)}"))
    if loose:
        notes.append(PlanWarning(WarningCode.NO_POSITION,
                                 f"{_plural(len(loose), 'image')} without ImagePositionPatient or a valid "
                                 f"ImageOrientationPatient left out: {_names(loose)}"))
    if has_geometry(main_first):
        for other, _, _ in stacks:
            if other is not main_slices and has_geometry(other[0]):
                notes.append(_set_aside_warning(main_first, other, len(other) >= 2))
    plans = []
    for index, (slices, warnings, geometric) in enumerate(volumes):
        own = list(warnings)
        if index == 0:
            own += notes
        else:
            own.append(PlanWarning(WarningCode.OTHER_STACKS,
                                   f"this stack is one of {len(volumes)} in its series; the main one has "
                                   f"{_plural(len(main_slices), 'slice')}"))
        plans.append(StackPlan(tuple(slices), tuple(own), geometric, main=index == 0,
                               key=f"{slices[0].series_uid}/{index + 1}"))
    return plans


@dataclass
class SeriesPlans:
    """Every stack found in the sources, series by series, and what could not be used."""

    plans: list[StackPlan] = field(default_factory=list)
    refused: list[MedVisionError] = field(default_factory=list)


def plan_stacks(headers: list[SliceHeader]) -> SeriesPlans:
    """Group by SeriesInstanceUID and plan each series (series without a volume are kept as refusals)."""
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        by_series[header.series_uid].append(header)
    result = SeriesPlans()
    for series in by_series.values():
        try:
            result.plans += plan_series(series)
        except MedVisionError as exc:
            result.refused.append(exc)
    return result
