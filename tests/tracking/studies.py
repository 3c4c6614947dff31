"""Studies for lesion tracking: RG1 as a calibrated study of one patient on a given date, and a
TID 1500 SR of another producer built with highdicom alone."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from tests.priors.rg1 import rg1_variant

#: Pixel spacing given to the RG1 studies (mm), so lengths are calibrated millimetres.
SPACING_MM = 0.2


def rg1_study(study_date: str, patient_id: str, issuer: str | None = None) -> bytes:
    """RG1 under new UIDs, dated ``study_date``, with a calibrated Pixel Spacing."""
    ds = pydicom.dcmread(io.BytesIO(rg1_variant(study_date=study_date, patient_id=patient_id, issuer=issuer)))
    ds.PixelSpacing = [SPACING_MM, SPACING_MM]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def distance(session_id: str, image_id: str, engine, x1: float, x2: float, y: float = 900.0,  # noqa: ANN001
             label: str = "target") -> dict:
    """A horizontal distance measurement from x1 to x2 on row y."""
    return engine.add_annotation(session_id, image_id, "measurement",
                                 {"kind": "distance", "points": [[x1, y], [x2, y]]}, label=label)


def other_producer_sr(source: pydicom.Dataset, *, identifier: str, uid: str, length_mm: float,
                      points: list[list[float]]) -> pydicom.Dataset:
    """A TID 1500 Comprehensive 3D SR as another vendor writes it: one planar ROI group, tracked,
    with a length in mm, its polyline on ``source``; observed by a person, not a device."""
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier=identifier, uid=uid),
        referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                            graphic_data=np.asarray(points, dtype=float),
                                            source_image=hd.sr.SourceImageForRegion.from_source_image(source)),
        finding_type=codes.SCT.Nodule,
        measurements=[hd.sr.Measurement(name=codes.SCT.Length, value=length_mm, unit=codes.UCUM.Millimeter)],
    )
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Person,
                                     observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                                         name="Other^Reader"))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_person_context=observer),
                                     procedure_reported=codes.LN.XRUnspecifiedBodyRegion,
                                     imaging_measurements=[group])
    return hd.sr.Comprehensive3DSR(evidence=[source], content=report, series_instance_uid=generate_uid(),
                                   series_number=42, sop_instance_uid=generate_uid(), instance_number=1,
                                   manufacturer="Another Vendor")
