"""Organ segmentation at runtime: image-sized masks, areas, the CTR arithmetic, argument checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from engine.analysis.preprocess import crop_box
from engine.analysis.segmentation import (
    DETECTOR_SPACING_NOTE,
    cardiothoracic_ratio,
    organ_measurements,
    segment_organs,
    spacing_info,
    without_masks,
)
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import DecodedImage, decode_image
from engine.imaging.masks import decode_rle, mask_bbox
from engine.inference.registry import ModelRegistry
from models import segmentation


@pytest.fixture
def registry(organ_seg_pack: Path, home: Path) -> ModelRegistry:
    return ModelRegistry(Settings(home=home, model_pack=organ_seg_pack, threads=2))


@pytest.fixture(scope="session")
def rg1(rg1_path: Path) -> DecodedImage:
    return decode_image(rg1_path)


# ------------------------------------------------------------- synthetic arithmetic


def _chest(heart_columns: tuple[int, int], *, rows: int = 100, columns: int = 200):
    """Rectangles: lungs at columns 20..79 and 120..179 (rows 20..79), heart rows 50..89."""
    right_lung = np.zeros((rows, columns), dtype=bool)
    left_lung = np.zeros_like(right_lung)
    heart = np.zeros_like(right_lung)
    right_lung[20:80, 20:80] = True   # patient's right lung: image left
    left_lung[20:80, 120:180] = True
    heart[50:90, heart_columns[0]:heart_columns[1] + 1] = True
    return heart, right_lung, left_lung


def test_ctr_of_rectangles_is_exact() -> None:
    heart, right_lung, left_lung = _chest((70, 129))           # 60 px of 160 px
    ctr = cardiothoracic_ratio(heart, right_lung, left_lung, pixel_spacing_mm=(0.2, 0.25), view_position="PA")
    assert ctr["status"] == "ok"
    assert ctr["cardiac_width_px"] == 60 and ctr["thoracic_width_px"] == 160
    assert ctr["ratio"] == pytest.approx(60 / 160, abs=1e-4)
    assert ctr["cardiac_width_mm"] == pytest.approx(15.0) and ctr["thoracic_width_mm"] == pytest.approx(40.0)
    assert ctr["cardiac_columns"] == [70, 129] and ctr["thoracic_columns"] == [20, 179]
    assert 20 <= ctr["thoracic_row"] <= 79
    assert ctr["finding"] is None and ctr["positive"] is False

    wide = cardiothoracic_ratio(*_chest((55, 144)), view_position="AP")   # 90 / 160
    assert wide["ratio"] == pytest.approx(90 / 160, abs=1e-4)
    assert wide["finding"] == "cardiomegaly suspected" and wide["positive"] is True
    assert "overestimate" in wide["note"] and wide["cardiac_width_mm"] is None


def test_ctr_uses_the_transverse_diameter_and_ignores_islands() -> None:
    heart, right_lung, left_lung = _chest((80, 119))
    heart[60:70, 120:135] = True      # the left border bulges lower down: still one component
    heart[5:8, 190:199] = True        # a stray island far away: ignored
    ctr = cardiothoracic_ratio(heart, right_lung, left_lung)
    assert ctr["cardiac_columns"] == [80, 134] and ctr["cardiac_width_px"] == 55
    assert 60 <= ctr["cardiac_rows"][1] <= 69                # the rows of the rightmost border
    assert "not recorded" in ctr["note"]

    right_lung[20:80, 10:20] = True   # the widest row now starts at column 10 (rows 20..79)
    right_lung[80:90, 0:20] = True    # rows without the other lung do not count
    assert cardiothoracic_ratio(heart, right_lung, left_lung)["thoracic_width_px"] == 170


@pytest.mark.parametrize(
    ("change", "reason"),
    [("empty_heart", "empty mask: Heart"), ("no_common_row", "share no row"), ("lateral", "frontal view")],
)
def test_ctr_unavailable(change: str, reason: str) -> None:
    heart, right_lung, left_lung = _chest((70, 129))
    view = "PA"
    if change == "empty_heart":
        heart[:] = False
    elif change == "no_common_row":
        left_lung[:] = False
        left_lung[85:95, 120:180] = True
    else:
        view = "LL"
    ctr = cardiothoracic_ratio(heart, right_lung, left_lung, view_position=view)
    assert ctr["status"] == "unavailable" and reason in ctr["reason"]


def test_area_arithmetic_with_known_spacing() -> None:
    mask = np.zeros((100, 200), dtype=bool)
    mask[10:40, 50:90] = True                                   # 30 x 40 = 1200 px
    record = organ_measurements("Heart", mask, pixel_spacing_mm=(0.5, 0.25), mean_probability=0.8)
    assert record["area_px"] == 1200
    assert record["area_cm2"] == pytest.approx(1200 * 0.5 * 0.25 / 100)   # 1.5 cm²
    assert record["bbox"] == [50, 10, 89, 39]
    assert record["pixel_fraction"] == pytest.approx(1200 / 20000)
    assert np.array_equal(decode_rle(record["mask_rle"]), mask)
    assert organ_measurements("Heart", mask, pixel_spacing_mm=None)["area_cm2"] is None


def test_spacing_sources(rg1: DecodedImage) -> None:
    assert spacing_info(rg1) | {"note": None} == {"pixel_spacing_mm": None, "source": "none",
                                                  "calibrated": False, "note": None}
    detector = dataclasses.replace(rg1, pixel_spacing_mm=(0.1, 0.1), spacing_source="ImagerPixelSpacing")
    assert spacing_info(detector) == {"pixel_spacing_mm": [0.1, 0.1], "source": "ImagerPixelSpacing",
                                      "calibrated": False, "note": DETECTOR_SPACING_NOTE}
    patient = dataclasses.replace(rg1, pixel_spacing_mm=(0.1, 0.1), spacing_source="PixelSpacing")
    assert spacing_info(patient)["calibrated"] is True and "note" not in spacing_info(patient)


# ------------------------------------------------------------------- the real model


def test_masks_have_the_image_size_and_match_their_records(registry: ModelRegistry, rg1: DecodedImage) -> None:
    # RG1 carries PixelSpacing [0, 0] (unusable): give it a detector spacing to exercise areas.
    image = dataclasses.replace(rg1, pixel_spacing_mm=(0.15, 0.15), spacing_source="ImagerPixelSpacing")
    result = segment_organs(image, registry)
    assert result["status"] == "ok" and result["model_trained"] is False
    assert result["model"]["task"] == "organ_seg" and result["forced"] is False
    assert result["spacing"]["note"] == DETECTOR_SPACING_NOTE
    assert set(result["timings_ms"]) == {"preprocess", "inference", "postprocess"}
    masks = result["_masks"]
    assert [o["label"] for o in result["organs"]] == list(masks) == segmentation.labels()

    rows, columns = crop_box(image.rows, image.columns)
    outside = np.ones((image.rows, image.columns), dtype=bool)
    outside[rows, columns] = False
    for record in result["organs"]:
        mask = masks[record["label"]]
        assert mask.shape == (1955, 1841) and mask.dtype == bool
        assert not (mask & outside).any()
        assert np.array_equal(decode_rle(record["mask_rle"]), mask)
        assert record["area_px"] == int(mask.sum()) and record["bbox"] == mask_bbox(mask)
        assert record["area_cm2"] == pytest.approx(record["area_px"] * 0.0225 / 100, abs=1e-3)
        if record["area_px"]:
            assert 0.5 < record["mean_probability"] <= 1.0
    assert result["ctr"]["status"] in ("ok", "unavailable")
    persisted = without_masks(result)
    assert "_masks" not in persisted
    json.dumps(persisted)  # JSON-ready once the masks are stripped


def test_organ_selection_and_arguments(registry: ModelRegistry, rg1: DecodedImage) -> None:
    result = segment_organs(rg1, registry, organs=["left lung", "Heart"], threshold=0.6)
    assert [o["label"] for o in result["organs"]] == ["Left Lung", "Heart"] == list(result["_masks"])
    assert result["threshold"] == 0.6 and result["organs"][0]["area_cm2"] is None

    with pytest.raises(MedVisionError) as err:
        segment_organs(rg1, registry, organs=["Heart", "Liver"])
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert "Liver" in err.value.message and "Right Lung" in err.value.message
    assert err.value.details["valid"] == segmentation.labels()
    for threshold in (0.0, 1.0, 1.5):
        with pytest.raises(MedVisionError) as err:
            segment_organs(rg1, registry, threshold=threshold)
        assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_ct_is_refused_unless_forced(registry: ModelRegistry) -> None:
    ct = decode_image(get_testdata_file("CT_small.dcm"))
    with pytest.raises(MedVisionError) as err:
        segment_organs(ct, registry)
    assert err.value.code is ErrorCode.INVALID_IMAGE_TYPE and err.value.details["detected_type"] == "CT"
    forced = segment_organs(ct, registry, organs=["Heart"], force=True)
    assert forced["forced"] is True and forced["_masks"]["Heart"].shape == (ct.rows, ct.columns)


def test_masks_and_records_do_not_depend_on_the_thread_count(registry: ModelRegistry, rg1: DecodedImage) -> None:
    """The labels' post-processing shares the session's threads; one thread gives the same result."""
    shared = segment_organs(rg1, registry)
    # The loaded session (its inference threads) stays; only the post-processing pool narrows.
    registry.settings = dataclasses.replace(registry.settings, threads=1)
    single = segment_organs(rg1, registry)
    assert list(single["_masks"]) == list(shared["_masks"])
    for label, mask in single["_masks"].items():
        assert np.array_equal(mask, shared["_masks"][label]), label
    assert without_masks(single)["organs"] == without_masks(shared)["organs"]
    assert single["ctr"] == shared["ctr"]
