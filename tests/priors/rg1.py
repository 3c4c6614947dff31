"""RG1_UNCR (a real CR chest PA) as another study of the same patient: a prior taken earlier,
moved by a known similarity transform, under new UIDs (and optionally another issuer or modality)."""

from __future__ import annotations

import io
import math

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from skimage.transform import AffineTransform, warp


def similarity(rows: int, columns: int, angle_deg: float, scale: float, shift_xy: tuple[float, float]) -> np.ndarray:
    """current (x, y) -> prior (x, y): rotation and scale about the image centre, then a shift."""
    cx, cy = (columns - 1) / 2, (rows - 1) / 2
    a = math.radians(angle_deg)
    linear = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = np.array([cx, cy]) - linear @ np.array([cx, cy]) + np.array(shift_xy)
    return matrix


def moved(pixels: np.ndarray, current_to_prior: np.ndarray) -> np.ndarray:
    """The image as the prior would hold it: content at current x appears at ``current_to_prior`` x."""
    out = warp(pixels.astype(np.float64), AffineTransform(matrix=current_to_prior).inverse, order=1,
               preserve_range=True, cval=float(pixels.max()))  # MONOCHROME1: the highest value is black
    return out


def rg1_variant(*, study_date: str = "20030115", transform: np.ndarray | None = None, issuer: str | None = None,
                modality: str | None = None, patient_id: str | None = None) -> bytes:
    """RG1 under a new Study/Series/SOP Instance UID, an earlier date, its pixels moved by ``transform``."""
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    if transform is not None:
        pixels = moved(ds.pixel_array, transform)
        ds.PixelData = np.clip(np.round(pixels), 0, 2 ** int(ds.BitsStored) - 1).astype(ds.pixel_array.dtype).tobytes()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.AccessionNumber = ""
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    if modality is not None:
        ds.Modality = modality
    if patient_id is not None:
        ds.PatientID = patient_id
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
