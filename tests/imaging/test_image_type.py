"""Tests for engine.imaging.image_type: header rules on real files, pixel heuristic."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.imaging import IMAGE_TYPES, DecodedImage, decode_image, detect_image_type


@pytest.mark.parametrize(
    ("name", "expected"),
    [("RG1_UNCR.dcm", "CXR"), ("RG3_UNCR.dcm", "Other"), ("CT_small.dcm", "CT"),
     ("MR_small.dcm", "MRI"), ("US1_UNCR.dcm", "US"), ("waveform_ecg.dcm", "EKG"),
     ("rtdose_1frame.dcm", "Other"), ("SC_rgb.dcm", "Other")],
)
def test_real_headers(name: str, expected: str, sample) -> None:
    decoded = decode_image(sample(name))
    assert decoded.image_type == expected
    assert 0.0 <= decoded.type_confidence <= 1.0
    assert decoded.type_reason.endswith(".")


def test_other_radiograph_names_its_body_part(sample) -> None:
    decoded = decode_image(sample("RG3_UNCR.dcm"))
    assert "EXTREMITY" in decoded.type_reason


def test_reason_quotes_no_description_text(rg1: DecodedImage) -> None:
    metadata = {**rg1.metadata, "BodyPartExamined": "", "StudyDescription": "Chest PA Doe John"}
    guess = detect_image_type(metadata)
    assert guess.image_type == "CXR"
    assert "Doe" not in guess.reason and "CHEST" in guess.reason


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [({"Modality": "DX", "BodyPartExamined": "ABDOMEN"}, "KUB"),
     ({"Modality": "CR", "SeriesDescription": "KUB supine"}, "KUB"),
     ({"Modality": "DX", "BodyPartExamined": "KIDNEY"}, "KUB"),
     ({"Modality": "DX", "StudyDescription": "Thoracic spine AP"}, "Other"),
     ({"Modality": "DX", "ViewPosition": "PA"}, "CXR"),
     ({"Modality": "RF", "BodyPartExamined": "CHEST"}, "Other"),
     ({"Modality": "OT", "StudyDescription": "Chest X-ray"}, "CXR"),
     ({"Modality": "OT", "SeriesDescription": "12 lead EKG scan"}, "EKG"),
     ({"Modality": "PT"}, "Other"),
     ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.9.1.2"}, "EKG")],
)
def test_header_rules(metadata: dict, expected: str) -> None:
    guess = detect_image_type(metadata)
    assert guess.image_type == expected, guess.reason


def test_chest_png_is_guessed_with_low_confidence(rg1_display_small: np.ndarray) -> None:
    guess = detect_image_type(None, rg1_display_small)
    assert guess.image_type == "CXR" and guess.confidence <= 0.6


def test_ecg_printout_png_is_guessed(sample) -> None:
    ecg = decode_image(sample("waveform_ecg.dcm")).display()
    strip = ecg[: ecg.shape[0] // 2]  # six leads: a landscape printout
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue())
    assert decoded.image_type == "EKG" and decoded.type_confidence <= 0.6


def test_colour_and_small_images_are_other(sample, rg1_display_small: np.ndarray) -> None:
    ultrasound = decode_image(sample("US1_UNCR.dcm")).raw
    assert detect_image_type(None, ultrasound).image_type == "Other"
    assert detect_image_type(None, rg1_display_small[::4, ::4]).image_type == "Other"
    assert detect_image_type().image_type == "Other"


def test_types_are_from_the_fixed_set(rg1: DecodedImage) -> None:
    assert rg1.image_type in IMAGE_TYPES
    assert set(IMAGE_TYPES) == {"CXR", "KUB", "CT", "MRI", "US", "EKG", "Other"}
