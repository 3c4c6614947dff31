"""Regions: parsing, validation with precise messages, rasterisation, bounds, mirroring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.masks import encode_rle
from engine.imaging.regions import (
    EDGE_TOLERANCE_PX,
    MIN_POINT_RADIUS_PX,
    Region,
    annotation_coordinates,
    default_point_radius,
    mirror_mask,
    mirror_region,
    parse_region,
    region_bounds,
    region_from_mask,
    region_mask,
)

ROWS, COLUMNS = 100, 200


def mask_of(spec: dict) -> np.ndarray:
    return region_mask(parse_region(spec, ROWS, COLUMNS), ROWS, COLUMNS)


def test_bbox_is_inclusive_and_relative_matches_pixels() -> None:
    box = mask_of({"type": "bbox", "coordinates": [20, 10, 60, 50]})
    assert box.sum() == 41 * 41  # columns 20..60 and rows 10..50, both ends included
    assert box[10, 20] and box[50, 60] and not box[9, 20] and not box[10, 61]
    # Relative 0.1..0.3 of 200 columns is exactly 40 pixels: columns 20..59 (centres 19.5..59.5).
    relative = mask_of({"type": "bbox", "coordinates": [0.1, 0.1, 0.3, 0.5], "format": "relative"})
    assert (relative == mask_of({"type": "bbox", "coordinates": [20, 10, 59, 49]})).all()
    assert relative.sum() == 40 * 40
    region = parse_region({"type": "bbox", "coordinates": [0.1, 0.1, 0.3, 0.5], "format": "relative"},
                          ROWS, COLUMNS)
    assert region.coordinates == (19.5, 9.5, 59.5, 49.5) and region.original_format == "relative"
    assert region.to_dict() == {"type": "bbox", "coordinates": [19.5, 9.5, 59.5, 49.5],
                                "format": "pixel", "original_format": "relative"}
    centre = parse_region({"type": "point", "coordinates": [0.5, 0.5], "format": "relative"}, ROWS, COLUMNS)
    assert centre.coordinates == ((COLUMNS - 1) / 2, (ROWS - 1) / 2)


def test_polygon_equal_to_a_bbox_rasterises_the_same() -> None:
    square = mask_of({"type": "polygon", "coordinates": [[20, 10], [60, 10], [60, 50], [20, 50]]})
    assert (square == mask_of({"type": "bbox", "coordinates": [20, 10, 60, 50]})).all()


def test_triangle_area_edges_included() -> None:
    triangle = mask_of({"type": "polygon", "coordinates": [[10, 10], [110, 10], [10, 90]]})
    geometric = 100 * 80 / 2
    assert geometric < triangle.sum() < geometric + 100 + 80 + 130  # plus about one outline
    assert triangle[10, 10] and triangle[10, 110] and triangle[90, 10]  # vertices are inside


def test_thin_polygon_keeps_its_outline() -> None:
    sliver = mask_of({"type": "freehand", "coordinates": [[0, 0], [100, 1], [0, 1.5]]})
    assert sliver.sum() >= 100  # no pixel centre strictly inside, but the outline counts


def test_self_intersecting_polygon_fills_both_lobes() -> None:
    bow_tie = mask_of({"type": "polygon", "coordinates": [[0, 0], [40, 40], [40, 0], [0, 40]]})
    assert bow_tie[20, 5] and bow_tie[20, 35]  # left and right lobes
    assert not bow_tie[5, 20] and not bow_tie[35, 20]  # top and bottom wedges are outside


def test_point_disc_default_and_explicit_radius() -> None:
    assert default_point_radius(ROWS, COLUMNS) == MIN_POINT_RADIUS_PX  # 1 % of 224 px < 3 px
    assert default_point_radius(1955, 1841) == pytest.approx(0.01 * math.hypot(1955, 1841))
    disc = mask_of({"type": "point", "coordinates": [100, 50], "radius_px": 10})
    assert abs(int(disc.sum()) - math.pi * 100) < 0.05 * math.pi * 100
    region = parse_region({"type": "point", "coordinates": [100, 50]}, ROWS, COLUMNS)
    assert region.radius_px == MIN_POINT_RADIUS_PX and region_mask(region).sum() == 29
    corner = mask_of({"type": "point", "coordinates": [0, 0], "radius_px": 5})
    assert 0 < corner.sum() < math.pi * 25 / 3  # clipped to the image: about a quarter disc


def test_mask_regions_from_rle_array_and_png() -> None:
    import base64
    import io

    from PIL import Image

    original = np.zeros((ROWS, COLUMNS), bool)
    original[30:40, 30:80] = True
    assert (mask_of({"type": "mask", "coordinates": encode_rle(original)}) == original).all()
    assert (mask_of({"type": "mask", "rle": encode_rle(original)}) == original).all()
    buffer = io.BytesIO()
    Image.fromarray(original.astype(np.uint8) * 255).save(buffer, format="PNG")
    png = base64.b64encode(buffer.getvalue()).decode()
    assert (mask_of({"type": "mask", "png_base64": png}) == original).all()
    region = region_from_mask(original)
    assert region.to_dict()["coordinates"] == encode_rle(original)
    assert region_bounds(region) == [30.0, 30.0, 79.0, 39.0]


def test_edges_within_tolerance_are_accepted_and_clamped() -> None:
    assert mask_of({"type": "bbox", "coordinates": [0, 0, COLUMNS, ROWS]}).all()
    assert mask_of({"type": "bbox", "coordinates": [0, 0, 1, 1], "format": "relative"}).all()
    region = parse_region({"type": "bbox", "coordinates": [-0.5, -0.4, COLUMNS + 0.5, 10]}, ROWS, COLUMNS)
    assert region.coordinates == (0.0, 0.0, float(COLUMNS), 10.0)
    point = parse_region({"type": "point", "coordinates": [COLUMNS + EDGE_TOLERANCE_PX, 3]}, ROWS, COLUMNS)
    assert point.coordinates == (float(COLUMNS), 3.0)


RLE_WRONG_SIZE = encode_rle(np.ones((10, 10), bool))


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"type": "bbox", "coordinates": [10, 10, 5, 20]}, "x2 (5) must be greater than x1 (10)"),
        ({"type": "bbox", "coordinates": [10, 20, 15, 20]}, "y2 (20) must be greater than y1 (20)"),
        ({"type": "bbox", "coordinates": [10, 10, 250, 20]}, "x = 250 is outside the image (width 200 px"),
        ({"type": "bbox", "coordinates": [10, 10, 20, 100.6]}, "y = 100.6 is outside the image"),
        ({"type": "bbox", "coordinates": [-0.6, 10, 20, 20]}, "x = -0.6 is outside"),
        ({"type": "bbox", "coordinates": [0.1, 0.1, 1.2, 0.2], "format": "relative"},
         "coordinates[2] = 1.2 is outside 0..1"),
        ({"type": "bbox", "coordinates": [-0.1, 0.1, 0.2, 0.2], "format": "relative"}, "outside 0..1"),
        ({"type": "bbox", "coordinates": [float("nan"), 1, 2, 3]}, "coordinates[0] is not a finite number"),
        ({"type": "bbox", "coordinates": [1, float("inf"), 2, 3]}, "not a finite number"),
        ({"type": "bbox", "coordinates": ["a", 1, 2, 3]}, "coordinates[0] must be a number, not 'a'"),
        ({"type": "bbox", "coordinates": [True, 1, 2, 3]}, "must be a number"),
        ({"type": "bbox", "coordinates": [1, 2, 3]}, "must have 4 numbers, got 3"),
        ({"type": "bbox", "coordinates": [0.2, 0.2, 0.8, 0.8]}, "covers no pixel centre"),
        ({"type": "polygon", "coordinates": [[1, 1], [5, 5]]}, "at least 3 points, got 2"),
        ({"type": "freehand", "coordinates": [[1, 1], [5, 5], [9, 9], [3, 3]]}, "collinear"),
        ({"type": "polygon", "coordinates": [[1, 1], [1, 1], [1, 1]]}, "collinear"),
        ({"type": "polygon", "coordinates": [[1, 1], [5, "x"], [9, 2]]}, "polygon point 1[1] must be a number"),
        ({"type": "polygon", "coordinates": [[1, 1], [500, 5], [9, 2]]}, "polygon point 1 x = 500"),
        ({"type": "point", "coordinates": [-3, 10]}, "point x = -3 is outside"),
        ({"type": "point", "coordinates": [3, 10], "radius_px": 0}, "radius_px must be a positive"),
        ({"type": "bbox", "coordinates": [3, 10, 20, 20], "radius_px": 4}, "radius_px applies to points only"),
        ({"type": "circle", "coordinates": [1, 2]}, "unknown region type 'circle'"),
        ({"coordinates": [1, 2]}, "unknown region type None"),
        ({"type": "bbox", "coordinates": [1, 2, 3, 4], "format": "mm"}, "unknown coordinate format 'mm'"),
        ({"type": "bbox"}, "needs 'coordinates'"),
        ({"type": "mask", "coordinates": RLE_WRONG_SIZE}, "mask RLE size [10, 10] (rows, columns) does not match"),
        ({"type": "mask", "coordinates": {"size": [ROWS, COLUMNS], "counts": [5]}}, "invalid mask RLE"),
        ({"type": "mask", "coordinates": encode_rle(np.zeros((ROWS, COLUMNS), bool))}, "covers no pixel"),
        ({"type": "mask", "coordinates": [1, 2]}, "needs an RLE dict"),
        ({"type": "mask", "png_base64": "not base64!"}, "invalid base64 PNG mask"),
    ],
)
def test_invalid_regions_are_named(spec: dict, fragment: str) -> None:
    with pytest.raises(MedVisionError) as err:
        parse_region(spec, ROWS, COLUMNS)
    assert err.value.code is ErrorCode.INVALID_REGION
    assert fragment in err.value.message


def test_a_region_is_not_a_dict() -> None:
    with pytest.raises(MedVisionError) as err:
        parse_region("bbox", ROWS, COLUMNS)  # type: ignore[arg-type]
    assert err.value.code is ErrorCode.INVALID_REGION and "JSON object" in err.value.message


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(MedVisionError) as err:
        Region("bbox", (50, 10, 20, 40), ROWS, COLUMNS)
    assert err.value.code is ErrorCode.INVALID_REGION
    with pytest.raises(MedVisionError):
        Region("mask", (), ROWS, COLUMNS, mask=np.ones((5, 5), bool))
    region = parse_region({"type": "bbox", "coordinates": [1, 2, 30, 40]}, ROWS, COLUMNS)
    with pytest.raises(MedVisionError) as err:
        region_mask(region, 50, 50)
    assert "belongs to a 200x100 image" in err.value.message


def test_bounds() -> None:
    assert region_bounds(parse_region({"type": "bbox", "coordinates": [20, 10, 60, 50]}, ROWS, COLUMNS)) \
        == [20.0, 10.0, 60.0, 50.0]
    polygon = parse_region({"type": "polygon", "coordinates": [[5, 50], [30, 20], [60, 70]]}, ROWS, COLUMNS)
    assert region_bounds(polygon) == [5.0, 20.0, 60.0, 70.0]
    point = parse_region({"type": "point", "coordinates": [2, 50], "radius_px": 5}, ROWS, COLUMNS)
    assert region_bounds(point) == [0.0, 45.0, 7.0, 55.0]


def test_mirror_bbox_polygon_point_and_mask() -> None:
    axis = (COLUMNS - 1) / 2  # the image centre in pixel-centre coordinates
    box = parse_region({"type": "bbox", "coordinates": [10, 10, 30, 20]}, ROWS, COLUMNS)
    mirrored = mirror_region(box, axis)
    assert mirrored.type == "bbox" and mirrored.coordinates == (169.0, 10.0, 189.0, 20.0)
    assert (region_mask(mirrored) == region_mask(box)[:, ::-1]).all()
    polygon = parse_region({"type": "polygon", "coordinates": [[10, 10], [60, 10], [30, 50]]}, ROWS, COLUMNS)
    assert (region_mask(mirror_region(polygon, axis)) == region_mask(polygon)[:, ::-1]).all()
    point = parse_region({"type": "point", "coordinates": [20, 30], "radius_px": 4}, ROWS, COLUMNS)
    assert mirror_region(point, axis).coordinates == (179.0, 30.0)
    # Clipped at the image edge: a polygon whose mirror leaves the image becomes a mask.
    clipped = mirror_region(polygon, 20.0)
    assert clipped.type == "mask"
    assert 0 < region_mask(clipped).sum() < region_mask(polygon).sum()
    assert region_mask(clipped)[:, 41:].sum() == 0
    box_clipped = mirror_region(box, 15.0)  # [10, 30] -> [0, 20]
    assert box_clipped.type == "bbox" and box_clipped.coordinates == (0.0, 10.0, 20.0, 20.0)
    with pytest.raises(MedVisionError) as err:
        mirror_region(box, -40.0)
    assert err.value.code is ErrorCode.INVALID_REGION and "outside the image" in err.value.message


def test_mirror_mask_never_raises_for_an_empty_result() -> None:
    mask = np.zeros((ROWS, COLUMNS), bool)
    mask[10:20, 10:30] = True
    assert (mirror_mask(mask, (COLUMNS - 1) / 2) == mask[:, ::-1]).all()
    assert not mirror_mask(mask, -50.0).any()
    with pytest.raises(MedVisionError) as err:
        mirror_mask(mask, float("nan"))
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_annotation_coordinates_for_every_type() -> None:
    assert annotation_coordinates("bbox", [1, 2, 30, 40], ROWS, COLUMNS) == [1.0, 2.0, 30.0, 40.0]
    assert annotation_coordinates("bbox", {"coordinates": [0, 0, 0.5, 0.5], "format": "relative"},
                                  ROWS, COLUMNS) == [0.0, 0.0, 99.5, 49.5]
    assert annotation_coordinates("point", [3, 4], ROWS, COLUMNS) == [3.0, 4.0]
    assert annotation_coordinates("freehand", [[1, 1], [9, 1], [5, 8]], ROWS, COLUMNS) == \
        [[1.0, 1.0], [9.0, 1.0], [5.0, 8.0]]
    mask = np.zeros((ROWS, COLUMNS), bool)
    mask[5:9, 5:9] = True
    assert annotation_coordinates("mask", encode_rle(mask), ROWS, COLUMNS) == encode_rle(mask)
    assert annotation_coordinates("text", {"position": [0.5, 0.5], "text": "see here", "format": "relative"},
                                  ROWS, COLUMNS) == {"position": [99.5, 49.5], "text": "see here"}
    assert annotation_coordinates("measurement", {"kind": "angle", "points": [[1, 0], [0, 0], [0, 1]]},
                                  ROWS, COLUMNS) == {"kind": "angle",
                                                     "points": [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]}


@pytest.mark.parametrize(
    ("annotation_type", "coordinates", "fragment"),
    [
        ("measurement", {"kind": "angle", "points": [[0, 0], [1, 1]]}, "needs 3 points, got 2"),
        ("measurement", {"kind": "distance", "points": [[0, 0], [1, 1], [2, 2]]}, "needs 2 points, got 3"),
        ("measurement", {"kind": "distance", "points": [[4, 4], [4, 4]]}, "coincide"),
        ("measurement", {"kind": "angle", "points": [[0, 0], [0, 0], [3, 1]]}, "differ from its vertex"),
        ("measurement", {"kind": "area", "points": [[0, 0], [1, 1], [2, 2]]}, "collinear"),
        ("measurement", {"kind": "volume", "points": [[0, 0], [1, 1]]}, "unknown measurement kind"),
        ("measurement", {"kind": "distance", "points": [[0, 0], [900, 1]]}, "measurement point 1 x = 900"),
        ("measurement", {"kind": "distance", "points": [[0, 0], [9, 1]], "value": 3}, "unknown key(s)"),
        ("measurement", [[0, 0], [9, 1]], "must be a JSON object"),
        ("text", {"position": [1, 1], "text": " "}, "non-empty 'text'"),
        ("text", {"position": [1, 1], "text": "x" * 2001}, "at most 2000"),
        ("text", {"position": [1, 1000], "text": "x"}, "text position y = 1000"),
        ("bbox", {"coordinates": [1, 2, 3, 4], "color": "red"}, "unknown key(s) in bbox"),
    ],
)
def test_invalid_annotation_coordinates(annotation_type: str, coordinates, fragment: str) -> None:
    with pytest.raises(MedVisionError) as err:
        annotation_coordinates(annotation_type, coordinates, ROWS, COLUMNS)
    assert err.value.code is ErrorCode.INVALID_REGION
    assert fragment in err.value.message


def test_unknown_annotation_type_and_unknown_image_size() -> None:
    with pytest.raises(MedVisionError) as err:
        annotation_coordinates("ellipse", [1, 2, 3, 4], ROWS, COLUMNS)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(MedVisionError) as err:
        annotation_coordinates("bbox", [1, 2, 3, 4], None, None)  # type: ignore[arg-type]
    assert err.value.code is ErrorCode.INVALID_REGION and "no recorded size" in err.value.message


def test_regions_on_a_real_radiograph(rg1) -> None:
    """A relative bbox over RG1's right lung selects the right pixels of the real film."""
    region = parse_region({"type": "bbox", "coordinates": [0.2, 0.3, 0.35, 0.6], "format": "relative"},
                          rg1.rows, rg1.columns)
    mask = region_mask(region, rg1.rows, rg1.columns)
    x1, y1, x2, y2 = region.coordinates
    assert mask.sum() == (math.floor(x2) - math.ceil(x1) + 1) * (math.floor(y2) - math.ceil(y1) + 1)
    centre = region_mask(parse_region({"type": "bbox", "coordinates": [0.45, 0.3, 0.55, 0.6],
                                       "format": "relative"}, rg1.rows, rg1.columns))
    display = rg1.display()
    assert display[mask].mean() + 30 < display[centre].mean()  # aerated lung vs mediastinum


def test_scanline_fill_matches_scikit_image_on_random_polygons() -> None:
    """The fast even-odd scanline fill equals skimage.draw.polygon plus the outline pixels."""
    from skimage.draw import polygon

    from engine.imaging.regions import _outline_pixels, rasterize_polygon

    rng = np.random.default_rng(7)
    shape = (61, 61)
    for _ in range(300):  # random, mostly self-intersecting outlines
        points = rng.uniform(-0.5, 60.5, (int(rng.integers(3, 12)), 2))
        if rng.random() < 0.3:
            points = np.round(points)  # vertices on pixel centres: the boundary cases
        reference = np.zeros(shape, bool)
        rr, cc = polygon(points[:, 1], points[:, 0], shape)
        reference[rr, cc] = True
        rr, cc = _outline_pixels(points[:, 1], points[:, 0], shape)
        reference[rr, cc] = True
        assert (rasterize_polygon(points, shape) == reference).all()


def test_a_large_freehand_outline_is_fast(rg1) -> None:
    import time

    outline = [[920 + 700 * math.cos(t) * (1 + 0.1 * math.sin(7 * t)), 980 + 800 * math.sin(t)]
               for t in np.linspace(0, 2 * math.pi, 2000, endpoint=False)]
    started = time.perf_counter()
    mask = region_mask(parse_region({"type": "freehand", "coordinates": outline}, rg1.rows, rg1.columns))
    assert time.perf_counter() - started < 5.0  # a per-pixel point-in-polygon test took ~25 s
    assert mask.sum() == pytest.approx(math.pi * 700 * 800, rel=0.02)
