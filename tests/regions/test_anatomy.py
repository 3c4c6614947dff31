"""Anatomical location from organ masks (synthetic PA layout and masks from a real film)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.analysis.anatomy import (
    ORGAN_LABELS,
    boolean_masks,
    estimate_midline,
    locate,
    lung_zones,
    midline_x,
)
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.masks import encode_rle
from engine.imaging.regions import mirror_mask, parse_region, region_mask

ROWS, COLUMNS = 300, 300


def pa_masks() -> dict[str, np.ndarray]:
    """A frontal layout: the patient's right lung on the image's left."""
    masks = {label: np.zeros((ROWS, COLUMNS), bool) for label in ORGAN_LABELS}
    masks["Right Lung"][30:270, 30:130] = True
    masks["Left Lung"][30:270, 170:270] = True
    masks["Heart"][150:250, 120:210] = True
    masks["Spine"][:, 145:155] = True
    masks["Mediastinum"][30:260, 130:170] = True
    masks["Right Clavicle"][20:35, 60:135] = True
    masks["Left Clavicle"][20:35, 165:240] = True
    return masks


def box(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    return region_mask(parse_region({"type": "bbox", "coordinates": [x1, y1, x2, y2]}, ROWS, COLUMNS))


def test_fourteen_pspnet_labels() -> None:
    assert len(ORGAN_LABELS) == 14 and "Facies Diaphragmatica" in ORGAN_LABELS


def test_lung_zone_from_masks() -> None:
    # Right lung rows 30..269: thirds 30-110, 110-190, 190-270.
    where = locate(box(40, 220, 80, 260), pa_masks())
    assert where["method"] == "organ_masks" and where["primary"] == "right lung, lower zone"
    assert where["side"] == "right"
    assert where["overlaps"][0] == {"structure": "Right Lung", "name": "right lung", "fraction_of_region": 1.0}
    assert where["zones"]["Right Lung"]["lower"] == 1.0
    assert locate(box(200, 40, 240, 60), pa_masks())["primary"] == "left lung, upper zone"


def test_region_spanning_two_zones_names_both() -> None:
    where = locate(box(40, 90, 80, 130), pa_masks())
    assert where["primary"] == "right lung, upper and middle zones"
    shares = where["zones"]["Right Lung"]
    assert shares["upper"] == pytest.approx(20 / 41, abs=0.01) and shares["lower"] == 0.0


def test_heart_wins_over_lung_and_bones_only_lead_alone() -> None:
    assert locate(box(140, 170, 200, 230), pa_masks())["primary"] == "heart"
    # The right apex under the clavicle: the lung leads although the clavicle covers more.
    where = locate(box(80, 22, 120, 40), pa_masks())
    names = [o["structure"] for o in where["overlaps"]]
    assert names[0] == "Right Clavicle" and where["primary"].startswith("right lung, upper zone")
    spine_only = locate(box(147, 280, 152, 290), pa_masks())
    assert spine_only["primary"] == "spine"


def test_outside_every_structure_falls_back_to_geometry_with_masks() -> None:
    where = locate(box(2, 2, 10, 10), pa_masks())
    assert where["method"] == "organ_masks" and where["overlaps"] == []
    assert where["primary"].startswith("outside the segmented structures; right hemithorax, upper zone")


def test_geometric_fallback_without_masks() -> None:
    for masks in (None, {}, {label: np.zeros((ROWS, COLUMNS), bool) for label in ORGAN_LABELS}):
        where = locate(box(200, 10, 250, 40), masks)
        assert where["method"] == "geometric"
        assert where["primary"] == "left hemithorax, upper zone (geometric estimate)"
        assert where["side"] == "left" and where["zones"]["upper"] == 1.0
    assert locate(box(100, 120, 200, 150), None)["side"] == "central"
    assert "right hemithorax, lower zone" in locate(box(10, 250, 60, 290), None)["primary"]


def test_rle_masks_are_accepted_and_wrong_sizes_refused() -> None:
    masks = {label: encode_rle(mask) for label, mask in pa_masks().items()}
    assert locate(box(40, 220, 80, 260), masks)["primary"] == "right lung, lower zone"
    with pytest.raises(MedVisionError) as err:
        boolean_masks({"Heart": np.ones((10, 10), bool)}, (ROWS, COLUMNS))
    assert err.value.code is ErrorCode.INVALID_ARGUMENT and "'Heart'" in err.value.message
    with pytest.raises(MedVisionError) as err:
        locate(np.zeros((ROWS, COLUMNS), bool), pa_masks())
    assert err.value.code is ErrorCode.INVALID_REGION


def test_flipped_film_is_noted() -> None:
    masks = {label: mask[:, ::-1] for label, mask in pa_masks().items()}
    assert "flipped" in locate(box(200, 220, 240, 260), masks)["note"]


def test_midline() -> None:
    masks = pa_masks()
    assert midline_x(masks, COLUMNS) == (149.5, "spine")
    del masks["Spine"]
    assert midline_x(masks, COLUMNS) == (149.5, "mediastinum")
    lungs = {k: v for k, v in pa_masks().items() if k.endswith("Lung")}
    assert estimate_midline(lungs, COLUMNS) == (149.5, "lungs")
    assert midline_x(None, COLUMNS) == (149.5, "image centre")
    # A tilted spine: the per-row median centre follows the column, not the outliers.
    tilted = np.zeros((ROWS, COLUMNS), bool)
    tilted[:, 100:110] = True
    tilted[:20, 250:290] = True
    assert midline_x({"Spine": tilted}, COLUMNS) == (104.5, "spine")


def test_lung_zones() -> None:
    assert lung_zones(pa_masks()["Right Lung"]) == [(30, 110), (110, 190), (190, 270)]


def test_locate_on_the_real_radiograph(rg1, rg1_lung_masks) -> None:
    """Regions of RG1 located with lung masks of the film itself, and geometrically."""
    right_lower = parse_region({"type": "point", "coordinates": [0.27, 0.55], "format": "relative",
                                "radius_px": 40}, rg1.rows, rg1.columns)
    mask = region_mask(right_lower)
    where = locate(mask, rg1_lung_masks)
    assert where["primary"].startswith("right lung") and where["method"] == "organ_masks"
    assert locate(mask, None)["primary"].startswith("right hemithorax, middle zone")
    axis, source = midline_x(rg1_lung_masks, rg1.columns)
    assert source == "mediastinum" and abs(axis - rg1.columns / 2) < 0.1 * rg1.columns
    mirrored = mirror_mask(mask, axis)
    assert locate(mirrored, rg1_lung_masks)["primary"].startswith("left lung")
