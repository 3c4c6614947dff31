"""Volumetric ROI measurements of a volume SEG's structures as a DICOM SR (TID 1500, Comprehensive 3D SR).

One TID 1411 group per segment of the SEG (:mod:`engine.export.volume_seg`): the segment
referenced (the SEG's instance and segment number, its source CT series), the structure
coded as the finding type, and two measurements: Volume (mL) and the mean attenuation in
Hounsfield units, from the same masks the SEG encodes. The evidence lists the SEG and every
source slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes as dcm_codes

from engine.analysis.volume.anatomy import AnatomyResult
from engine.analysis.volume.roi import roi_mask_stats
from engine.export.dicom_common import MANUFACTURER, codes, concept, new_uid
from engine.export.volume_seg import STRUCTURE_SITES, structure_names

SR_SERIES_NUMBER = 904
MILLILITRE = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
HOUNSFIELD_UNIT = hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit")
ATTENUATION = hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient")
CT_CHEST = hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region")


def structure_group(seg: hd.seg.Segmentation, number: int, name: str, voxels: np.ndarray,
                    mask: np.ndarray, spacing_zyx: tuple[float, float, float]) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 for one segment: volume and mean HU of ``mask``."""
    stats = roi_mask_stats(voxels, spacing_zyx, mask)
    measurements = [hd.sr.Measurement(name=dcm_codes.SCT.Volume, value=round(stats.volume_ml, 3),
                                      unit=MILLILITRE)]
    if stats.mean_hu is not None:
        measurements.append(hd.sr.Measurement(name=ATTENUATION, value=round(stats.mean_hu, 2), unit=HOUNSFIELD_UNIT,
                                              derivation=dcm_codes.SCT.Mean))
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
        source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID))
    site, _ = STRUCTURE_SITES[name]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier=name.replace("_", " ")),
        referenced_segment=segment, finding_type=concept(codes()["sites"][site]), measurements=measurements)


def volume_measurement_report(seg: hd.seg.Segmentation, result: AnatomyResult, voxels: np.ndarray,
                              sources: Sequence[pydicom.Dataset]) -> hd.sr.Comprehensive3DSR:
    """The SR of ``seg``'s structures (made by :func:`volume_segmentation` from ``result``) over ``voxels`` (HU)."""
    names = structure_names(result)
    groups = [structure_group(seg, number, name, voxels, result.mask(name), result.spacing_zyx)
              for number, name in enumerate(names, start=1)]
    observer = hd.sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=seg.DeviceUID if "DeviceUID" in seg else new_uid(), name=MANUFACTURER, manufacturer_name=MANUFACTURER))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CT_CHEST, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources], content=report[0], series_instance_uid=new_uid(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=new_uid(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True)
    sr.SeriesDescription = "MedVision volume measurements"
    return sr
