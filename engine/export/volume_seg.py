"""A 3D label map (``segment-volume``'s structures) as one multi-frame DICOM Segmentation.

BINARY, one segment per structure, referencing every source slice: frame z of a segment is
slice z of the volume (the source instances are given in the volume's sorted order, so each
frame takes its slice's ImagePositionPatient and its source image reference). The body holds
every other structure, so segments overlap: they are stacked, not one label map. Empty frames
are left out; a structure not found gets no segment.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom

from engine.analysis.volume.anatomy import LABELS, METHOD, AnatomyResult
from engine.errors import ErrorCode, MedVisionError
from engine.export.dicom_common import AI_FAMILY, MANUFACTURER, codes, concept, new_uid, term

#: Each structure's coded anatomy: (site in ``codes.json``, side or None).
STRUCTURE_SITES = {
    "body": ("Entire body", None), "bone": ("Bone", None), "lung_left": ("Lung", "left"),
    "lung_right": ("Lung", "right"), "airways": ("Airway", None),
}
SEG_SERIES_NUMBER = 903
#: Type 2 patient and study attributes highdicom copies from the first source: one it lacks is written empty.
TYPE2_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
               "StudyDate", "StudyTime")


def structure_description(number: int, name: str, version: str) -> hd.seg.SegmentDescription:
    """One structure as an AUTOMATIC segment coded in SNOMED CT (with its side for a lung)."""
    site, side = STRUCTURE_SITES[name]
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name.replace("_", " "),
        segmented_property_category=term("anatomical_structure"),
        segmented_property_type=concept(codes()["sites"][site]), algorithm_type="AUTOMATIC",
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"{MANUFACTURER} {METHOD}"[:64], family=AI_FAMILY, version=version),
        tracking_uid=new_uid(), tracking_id=name,
    )
    if side:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            concept(codes()["sides"][side])]
    return description


def structure_names(result: AnatomyResult) -> list[str]:
    """The structures found (a non-empty mask), in label order."""
    found = {s.name for s in result.structures if s.found}
    return [name for name in LABELS if name in found]


def volume_segmentation(result: AnatomyResult, sources: Sequence[pydicom.Dataset], *,
                        version: str = "1") -> hd.seg.Segmentation:
    """The structures of ``result`` as one SEG over ``sources`` (header datasets, one per slice, in the
    volume's z order). Raises EXPORT_FAILED when the slices and the label map disagree or nothing was found."""
    depth = result.labels.shape[0]
    if len(sources) != depth:
        raise MedVisionError(ErrorCode.EXPORT_FAILED, f"{len(sources)} source slices for a label map of {depth}",
                             slices=len(sources), depth=depth)
    names = structure_names(result)
    if not names:
        raise MedVisionError(ErrorCode.EXPORT_FAILED, "no structure was found: nothing to write as a SEG")
    planes = np.empty((len(names), *result.labels.shape), dtype=np.bool_)  # segment-major: each frame contiguous
    for index, name in enumerate(names):
        if name == "body":
            np.not_equal(result.labels, 0, out=planes[index])
        else:
            np.equal(result.labels, LABELS[name], out=planes[index])
    stack = np.moveaxis(planes, 0, -1)  # highdicom's (frames, rows, columns, segments), a view
    first = copy.deepcopy(sources[0])  # a header: the caller's dataset is left as it was
    for keyword in TYPE2_STUDY:
        if keyword not in first:
            setattr(first, keyword, None)
    seg = hd.seg.Segmentation(
        source_images=[first, *sources[1:]], pixel_array=stack, segmentation_type="BINARY",
        segment_descriptions=[structure_description(n, name, version) for n, name in enumerate(names, start=1)],
        series_instance_uid=new_uid(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=new_uid(),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=MANUFACTURER,
        software_versions=MANUFACTURER, device_serial_number="0", omit_empty_frames=True,
        content_label="ANATOMY", content_description="MedVision structures (HU and connectivity, no trained model)",
        content_creator_name=None,
    )
    seg.SeriesDescription = "MedVision volume structures"
    seg.PatientOrientation = first.get("PatientOrientation")
    return seg
