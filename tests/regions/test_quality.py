"""Quality checks on the real CR chest PA (RG1), deliberately degraded copies, and synthetic masks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from engine.analysis import quality
from engine.analysis.quality import check_quality, rotation_index, rotation_metrics
from engine.imaging import DecodedImage, decode_image


def codes(result: dict) -> set[str]:
    return {w["code"] for w in result["warnings"]}


@pytest.fixture(scope="module")
def rg1_display(rg1: DecodedImage) -> np.ndarray:
    """RG1's display rendering at half resolution (978 x 921 uint8)."""
    return rg1.display()[::2, ::2].copy()


def png_image(pixels: np.ndarray, path: Path) -> DecodedImage:
    Image.fromarray(pixels).save(path)
    return decode_image(path)


def test_the_real_film_is_clean(rg1: DecodedImage) -> None:
    result = check_quality(rg1)
    assert result["warnings"] == []
    metrics = result["metrics"]
    assert metrics["dynamic_range"] > 150
    assert metrics["lung_minus_mediastinum"] < -30  # aerated lungs display darker
    assert metrics["inversion_method"] == "central_profile"
    assert metrics["view"] == {"view_position": "PA", "frontal": True, "method": "ViewPosition"}
    assert metrics["clipped_low_fraction"] < 0.01 and metrics["clipped_high_fraction"] < 0.01


def test_its_png_copy_is_clean(rg1_display: np.ndarray, tmp_path: Path) -> None:
    copy = png_image(rg1_display, tmp_path / "copy.png")
    assert copy.image_type == "CXR"
    assert check_quality(copy)["warnings"] == []


@pytest.mark.parametrize(
    ("code", "degrade"),
    [
        ("inverted", lambda d: 255 - d),
        ("low_contrast", lambda d: (d.astype(np.float32) * 0.2 + 100).astype(np.uint8)),
        ("clipped_exposure", lambda d: np.clip(d.astype(np.int16) * 2 - 150, 0, 255).astype(np.uint8)),
    ],
)
def test_each_degraded_copy_raises_its_warning(rg1_display: np.ndarray, tmp_path: Path, code, degrade) -> None:
    degraded = png_image(degrade(rg1_display), tmp_path / f"{code}.png")
    assert degraded.image_type == "CXR"
    result = check_quality(degraded)
    assert codes(result) == {code}, result["warnings"]
    warning = result["warnings"][0]
    assert warning["message"] and warning["value"] > 0 and warning["method"]


def test_monochrome2_chest_film_with_bright_lungs_is_inverted(rg1: DecodedImage) -> None:
    """RG1 is MONOCHROME1; labelled MONOCHROME2 by mistake its lungs display white."""
    mislabelled = dataclasses.replace(rg1, invert=False, photometric="MONOCHROME2")
    result = check_quality(mislabelled)
    assert "inverted" in codes(result)
    assert result["metrics"]["lung_minus_mediastinum"] > 30


def test_inversion_from_organ_masks(rg1: DecodedImage, rg1_lung_masks: dict) -> None:
    result = check_quality(rg1, rg1_lung_masks)
    assert result["warnings"] == [] and result["metrics"]["inversion_method"] == "organ_masks"
    flipped = dataclasses.replace(rg1, invert=False)
    warning = next(w for w in check_quality(flipped, rg1_lung_masks)["warnings"] if w["code"] == "inverted")
    assert warning["method"] == "organ_masks"


def test_white_dominated_non_chest_image_is_flagged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    white = np.clip(rng.normal(240, 8, (256, 200)), 0, 255).astype(np.uint8)
    white[100:150, 50:150] = 40
    image = png_image(white, tmp_path / "white.png")
    result = check_quality(image, image_type="Other")
    warning = next(w for w in result["warnings"] if w["code"] == "inverted")
    assert warning["method"] == "histogram" and warning["value"] > quality.WHITE_DOMINANT_FRACTION


def test_real_images_of_other_kinds_raise_nothing(ct_small: DecodedImage) -> None:
    assert check_quality(ct_small)["warnings"] == []
    # A real CR ankle with full-height unexposed shutter bands at stored value 0.
    ankle = decode_image(get_testdata_file("RG3_UNCR.dcm"))
    result = check_quality(ankle)
    assert result["warnings"] == [] and result["metrics"]["clipped_low_fraction"] < quality.CLIPPED_FRACTION
    # CT holds air and padding at its minimum by design: clipping is not assessed.
    assert "clipped_low_fraction" not in check_quality(decode_image(get_testdata_file("693_UNCR.dcm")))["metrics"]


def test_lateral_view_from_the_header(rg1: DecodedImage) -> None:
    lateral = dataclasses.replace(rg1, metadata=rg1.metadata | {"ViewPosition": "LL"})
    warning = next(w for w in check_quality(lateral)["warnings"] if w["code"] == "non_frontal")
    assert warning["method"] == "ViewPosition" and "LL" in warning["message"]
    decubitus = dataclasses.replace(rg1, metadata=rg1.metadata | {"ViewPosition": "RLD"})
    assert "non_frontal" not in codes(check_quality(decubitus))


def synthetic_masks(rows: int, columns: int, right_gap: int, left_gap: int) -> dict[str, np.ndarray]:
    """Spine at the centre; clavicle heads ``right_gap``/``left_gap`` px from it."""
    centre = columns // 2
    masks = {k: np.zeros((rows, columns), bool) for k in
             ("Spine", "Right Clavicle", "Left Clavicle", "Right Lung", "Left Lung")}
    masks["Spine"][:, centre - 10:centre + 10] = True
    masks["Right Clavicle"][100:130, centre - 10 - right_gap - 200:centre - 10 - right_gap] = True
    masks["Left Clavicle"][100:130, centre + 10 + left_gap:centre + 10 + left_gap + 200] = True
    masks["Right Lung"][150:800, centre - 350:centre - 60] = True
    masks["Left Lung"][150:800, centre + 60:centre + 350] = True
    return masks


def test_rotation_from_clavicle_heads(rg1: DecodedImage) -> None:
    symmetric = synthetic_masks(rg1.rows, rg1.columns, 40, 40)
    assert rotation_index(symmetric) == 0.0
    rotated = synthetic_masks(rg1.rows, rg1.columns, 20, 80)
    metrics = rotation_metrics(rotated)
    assert metrics["nearer_side"] == "right" and metrics["index"] > quality.ROTATION_INDEX_MAX
    result = check_quality(rg1, rotated)
    warning = next(w for w in result["warnings"] if w["code"] == "rotation")
    assert warning["value"] == metrics["index"] and warning["method"] == "clavicle_spine_masks"
    assert "rotation" not in codes(check_quality(rg1, symmetric))
    slight = synthetic_masks(rg1.rows, rg1.columns, 35, 45)  # index ~0.12: within tolerance
    assert "rotation" not in codes(check_quality(rg1, slight))
    assert rotation_index({"Spine": symmetric["Spine"]}) is None
    assert rotation_index(None) is None


def test_lateral_layout_from_lung_masks(rg1: DecodedImage) -> None:
    no_header = dataclasses.replace(rg1, metadata={k: v for k, v in rg1.metadata.items() if k != "ViewPosition"})
    frontal = synthetic_masks(rg1.rows, rg1.columns, 40, 40)
    assert check_quality(no_header, frontal)["metrics"]["view"]["method"] == "lung_layout"
    assert "non_frontal" not in codes(check_quality(no_header, frontal))
    superimposed = dict(frontal)
    superimposed["Left Lung"] = np.roll(frontal["Right Lung"], 100, axis=1)
    warning = next(w for w in check_quality(no_header, superimposed)["warnings"] if w["code"] == "non_frontal")
    assert warning["method"] == "lung_layout"
    assert check_quality(no_header)["metrics"]["view"]["method"] == "unknown"
