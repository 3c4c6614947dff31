"""Measurements against hand-computed shapes: isotropic, anisotropic, unknown and detector spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.analysis.measurements import (
    DETECTOR_NOTE,
    NO_SPACING_NOTE,
    angle,
    area,
    distance,
    longest_diameter,
    measure_annotation,
    measure_mask,
    perimeter,
    perpendicular_diameter,
    polyline_length,
    recist_diameters,
    resolve_spacing,
)
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.regions import parse_region


def disc(rows: int, columns: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.ogrid[:rows, :columns]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2


def test_distance_converts_each_axis_with_its_own_spacing() -> None:
    # 30 columns at 0.2 mm and 40 rows at 0.1 mm: hypot(6, 4) mm, not 50 px x anything.
    result = distance([0, 0], [30, 40], (0.1, 0.2))
    assert result["value"] == pytest.approx(math.hypot(6, 4), abs=1e-4)
    assert result["unit"] == "mm" and result["calibrated"] is True and result["note"] is None
    assert result["spacing_source"] == "PixelSpacing" and result["method"]


def test_unknown_spacing_stays_in_pixels_with_a_note() -> None:
    result = distance([0, 0], [3, 4], None)
    assert result["value"] == 5.0 and result["unit"] == "px"
    assert result["calibrated"] is False and result["note"] == NO_SPACING_NOTE
    assert area([[0, 0], [4, 0], [4, 3]])["unit"] == "px2"


def test_detector_spacing_is_flagged_uncalibrated() -> None:
    result = distance([0, 0], [3, 4], (0.5, 0.5), "ImagerPixelSpacing")
    assert result["value"] == 2.5 and result["unit"] == "mm"
    assert result["calibrated"] is False and result["note"] == DETECTOR_NOTE
    # Angles do not change under a uniform magnification: still calibrated.
    assert angle([1, 0], [0, 0], [0, 1], (0.5, 0.5), "ImagerPixelSpacing")["calibrated"] is True


def test_spacing_from_a_decoded_image_and_from_stored_metadata(ct_small, rg1) -> None:
    assert resolve_spacing(ct_small) == ((0.661468, 0.661468), "PixelSpacing")
    assert resolve_spacing(rg1) == (None, "none")  # RG1 has PixelSpacing 0\0: unknown
    assert resolve_spacing(ct_small.metadata["pixel_spacing"]) == ((0.661468, 0.661468), "PixelSpacing")
    result = distance([0, 0], [100, 0], ct_small)
    assert result["value"] == pytest.approx(66.1468) and result["calibrated"] is True
    with pytest.raises(MedVisionError) as err:
        resolve_spacing((0.0, 1.0))
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_polyline_length() -> None:
    assert polyline_length([[0, 0], [3, 4], [3, 10]], (1.0, 1.0))["value"] == pytest.approx(11.0)
    # 10 columns at 0.5 mm then 10 rows at 2 mm
    assert polyline_length([[0, 0], [10, 0], [10, 10]], (2.0, 0.5))["value"] == pytest.approx(25.0)


def test_area_and_perimeter_of_a_rectangle_anisotropic() -> None:
    mask = np.zeros((50, 80), bool)
    mask[10:30, 20:60] = True  # 20 rows x 40 columns; 0.5 mm rows, 0.25 mm columns: 10 x 10 mm
    result = area(mask, (0.5, 0.25))
    assert result["value"] == pytest.approx(100.0) and result["unit"] == "mm2"
    assert result["value_cm2"] == pytest.approx(1.0) and result["pixel_count"] == 800
    # The smoothed contour rounds the four corners: a little under 2 x 10 + 2 x 10 mm.
    assert 0.95 * 40 < perimeter(mask, (0.5, 0.25))["value"] < 40
    outline = [[20, 10], [60, 10], [60, 30], [20, 30]]
    assert area(outline, (0.5, 0.25))["value"] == pytest.approx(40 * 0.25 * 20 * 0.5)
    assert perimeter(outline, (0.5, 0.25))["value"] == pytest.approx(2 * 10 + 2 * 10)


def test_circle_area_perimeter_and_diameters() -> None:
    radius = 60
    mask = disc(300, 300, 150, 150, radius)
    result = measure_mask(mask, (0.5, 0.5))
    assert result["area"]["value"] == pytest.approx(math.pi * (radius * 0.5) ** 2, rel=0.01)
    assert result["perimeter"]["value"] == pytest.approx(2 * math.pi * radius * 0.5, rel=0.01)
    # The digitised disc spans 2r + 1 pixels edge to edge.
    assert result["long_axis"]["value"] == pytest.approx((2 * radius + 1) * 0.5, abs=0.5)
    assert result["short_axis"]["value"] == pytest.approx((2 * radius + 1) * 0.5, abs=0.6)
    polygon = [[150 + radius * math.cos(t), 150 + radius * math.sin(t)]
               for t in np.linspace(0, 2 * math.pi, 720, endpoint=False)]
    assert area(polygon, (0.5, 0.5))["value"] == pytest.approx(math.pi * 30**2, rel=1e-4)


def test_recist_on_a_tilted_ellipse() -> None:
    rows, columns = 300, 300
    yy, xx = np.mgrid[:rows, :columns]
    theta = math.radians(30)
    u = (xx - 150) * math.cos(theta) + (yy - 150) * math.sin(theta)
    v = -(xx - 150) * math.sin(theta) + (yy - 150) * math.cos(theta)
    ellipse = (u / 100) ** 2 + (v / 40) ** 2 <= 1
    result = recist_diameters(ellipse, (1.0, 1.0))
    assert result["long_axis"]["value"] == pytest.approx(200, abs=2.5)
    assert result["short_axis"]["value"] == pytest.approx(80, abs=2.5)
    (x1, y1), (x2, y2) = result["long_axis"]["endpoints"]
    assert math.degrees(math.atan2(y2 - y1, x2 - x1)) == pytest.approx(30, abs=2)
    (a1, b1), (a2, b2) = result["short_axis"]["endpoints"]
    dot = (x2 - x1) * (a2 - a1) + (y2 - y1) * (b2 - b1)
    assert abs(dot) / (math.hypot(x2 - x1, y2 - y1) * math.hypot(a2 - a1, b2 - b1)) < 0.02


def test_anisotropic_pixels_measure_the_physical_shape() -> None:
    # A physical circle of radius 20 mm imaged with 0.5 mm rows and 0.25 mm columns: an
    # ellipse of 80 rows x 160 columns on the pixel grid, the same in every direction in mm.
    yy, xx = np.ogrid[:200, :300]
    mask = ((xx - 150) * 0.25) ** 2 + ((yy - 100) * 0.5) ** 2 <= 20**2
    result = measure_mask(mask, (0.5, 0.25))
    assert result["area"]["value"] == pytest.approx(math.pi * 400, rel=0.01)
    assert result["long_axis"]["value"] == pytest.approx(40, abs=0.8)
    assert result["short_axis"]["value"] == pytest.approx(40, abs=0.8)
    assert result["perimeter"]["value"] == pytest.approx(2 * math.pi * 20, rel=0.015)


def test_perpendicular_chord_stays_inside_a_concave_mask() -> None:
    # An L: a 100 x 20 bar with a 20 x 60 leg; the chord must not bridge the notch.
    mask = np.zeros((120, 140), bool)
    mask[10:30, 10:110] = True
    mask[10:70, 10:30] = True
    long_axis = longest_diameter(mask, None)
    short = perpendicular_diameter(mask, None, long_axis=long_axis)
    assert short["unit"] == "px"
    (a1, b1), (a2, b2) = short["endpoints"]
    for t in np.linspace(0.02, 0.98, 50):
        x, y = a1 + t * (a2 - a1), b1 + t * (b2 - b1)
        assert mask[int(math.floor(y + 0.5)), int(math.floor(x + 0.5))]


def test_right_angle_and_anisotropic_angle() -> None:
    assert angle([10, 0], [0, 0], [0, 10])["value"] == pytest.approx(90.0)
    # A right triangle with legs 3 and 4: the angle at the leg-3 end is atan(4 / 3).
    assert angle([0, 0], [3, 0], [0, 4])["value"] == pytest.approx(math.degrees(math.atan2(4, 3)), abs=1e-4)
    # 45 degrees on the grid is atan(1 / 2) in mm when a column is 2 mm and a row 1 mm.
    result = angle([1, 0], [0, 0], [1, 1], (1.0, 2.0))
    assert result["value"] == pytest.approx(math.degrees(math.atan2(1, 2)), abs=1e-4)
    assert result["unit"] == "deg"
    assert angle([1, 0], [0, 0], [0, 1])["calibrated"] is False  # square pixels assumed


def test_self_intersecting_outline_is_rasterised() -> None:
    bow_tie = area([[0, 0], [40, 40], [40, 0], [0, 40]])
    assert "rasterised" in bow_tie["method"]
    assert 800 < bow_tie["value"] < 1000  # two triangles of 400 px2 plus their outlines


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda: angle([0, 0], [0, 0], [1, 1]), ErrorCode.INVALID_REGION),
        (lambda: distance([0, float("nan")], [1, 1]), ErrorCode.INVALID_REGION),
        (lambda: distance([0, "a"], [1, 1]), ErrorCode.INVALID_REGION),
        (lambda: area(np.zeros((10, 10), bool)), ErrorCode.INVALID_REGION),
        (lambda: longest_diameter(np.zeros((10, 10), bool)), ErrorCode.INVALID_REGION),
        (lambda: area([[0, 0], [1, 1]]), ErrorCode.INVALID_REGION),
    ],
)
def test_bad_input(call, code) -> None:
    with pytest.raises(MedVisionError) as err:
        call()
    assert err.value.code is code


def test_measure_a_region_and_a_single_pixel() -> None:
    region = parse_region({"type": "bbox", "coordinates": [10, 10, 29, 19]}, 50, 50)
    assert area(region, (1.0, 1.0))["value"] == 200.0
    pixel = np.zeros((5, 5), bool)
    pixel[2, 2] = True
    result = measure_mask(pixel, (1.0, 1.0))
    assert result["area"]["value"] == 1.0 and result["long_axis"]["value"] == pytest.approx(1.0)


def test_measure_annotation_kinds() -> None:
    spacing = (0.5, 0.5)
    assert measure_annotation({"kind": "distance", "points": [[0, 0], [30, 40]]}, spacing)["value"] == 25.0
    assert measure_annotation({"kind": "polyline", "points": [[0, 0], [0, 10], [10, 10]]}, spacing)["value"] == 10.0
    assert measure_annotation({"kind": "angle", "points": [[10, 0], [0, 0], [0, 10]]}, spacing)["value"] == 90.0
    assert measure_annotation({"kind": "area", "points": [[0, 0], [10, 0], [10, 10]]}, spacing)["value"] == 12.5


def test_measuring_a_lesion_on_real_ct(ct_small) -> None:
    """Threshold CT_small's HU values and measure the blob under the centre: real pixels, real spacing."""
    from scipy import ndimage

    body = ct_small.pixels > -300  # soft tissue and bone in HU
    labels, _ = ndimage.label(body)
    largest = labels == np.bincount(labels.ravel())[1:].argmax() + 1
    result = measure_mask(largest, ct_small)
    spacing = 0.661468
    assert result["area"]["value"] == pytest.approx(largest.sum() * spacing**2, rel=1e-4)
    assert result["area"]["calibrated"] is True and result["area"]["unit"] == "mm2"
    x1, x2 = np.flatnonzero(largest.any(axis=0))[[0, -1]]
    y1, y2 = np.flatnonzero(largest.any(axis=1))[[0, -1]]
    widest = max(x2 - x1 + 1, y2 - y1 + 1) * spacing
    assert widest - 1 <= result["long_axis"]["value"] <= math.hypot(x2 - x1 + 1, y2 - y1 + 1) * spacing
    assert 0 < result["short_axis"]["value"] <= result["long_axis"]["value"] + 1e-6
