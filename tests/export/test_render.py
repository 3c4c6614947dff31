"""Overlays on the exported image: compose(), its layers, the legend and the annotated PNG."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from engine.export.bundle import ExportOptions, gather
from engine.export.render import (
    ANNOTATION_STYLES,
    FILL_ALPHA,
    ORGAN_PALETTE,
    UNTRAINED_HIDDEN_REASON,
    UNTRAINED_SUFFIX,
    base_image,
    compose,
    layer_images,
    legend,
    png_annotated,
)
from engine.vocabulary import DISCLAIMER

USER_BOX = (300, 400, 700, 800)  # the fixture's user bbox, source pixels


@pytest.fixture(scope="module")
def bundle(worked):
    return gather(worked.engine.services, worked.session_id, ExportOptions())


def _covered(layers) -> np.ndarray:
    return np.any([np.asarray(image)[..., 3] > 0 for _, image in layers], axis=0)


def _user_drawn(item):  # noqa: ANN001, ANN202 - an ImageExport
    """The image without the agent's annotations: those lie where the untrained organ masks put
    their boxes, which differs from machine to machine, and may cross the user's box."""
    return dataclasses.replace(item, annotations=[a for a in item.annotations if a["source"] != "ai"])


def test_compose_changes_exactly_the_pixels_its_layers_cover(bundle) -> None:
    (item,) = bundle.images
    base = np.asarray(base_image(item)).astype(int)
    assert base.shape == (1955, 1841, 3)
    plain, layers = compose(item, include_annotations=False, include_segmentation=False, include_measurements=False)
    assert np.array_equal(np.asarray(plain), base) and [layer["id"] for layer in layers] == ["image"]

    flags = {"include_segmentation": False, "include_measurements": False}
    drawn = np.asarray(compose(item, **flags)[0]).astype(int)
    changed = (drawn != base).any(axis=-1)
    assert not (changed & ~_covered(layer_images(item, **flags))).any()
    drawn = np.asarray(compose(_user_drawn(item), **flags)[0]).astype(int)
    changed = (drawn != base).any(axis=-1)
    x1, y1, x2, y2 = USER_BOX
    yellow = ANNOTATION_STYLES["user"][1]
    top_edge = drawn[y1, 450:650]  # right of the "opacity" label
    assert changed[y1, 450:650].all() and changed[450:650, x2].all()
    assert (np.abs(top_edge - yellow).max(axis=-1) < 25).all()
    assert not changed[y1 + 150:y2 - 150, x1 + 150:x2 - 150].any()  # the box's inside stays untouched


def test_switching_a_layer_off_removes_its_colour(bundle) -> None:
    (item,) = bundle.images
    yellow = ANNOTATION_STYLES["user"][1]

    def yellow_on_top_edge(image: Image.Image) -> float:
        edge = np.asarray(image).astype(int)[USER_BOX[1], 450:650]
        return float((np.abs(edge - yellow).max(axis=-1) < 30).mean())

    _, layers = compose(item)
    _, fewer = compose(item, include_annotations=False)
    # The user's line is drawn over everything but the agent's boxes (placed on the untrained organ
    # masks, so anywhere). Once it is off, no yellow may remain: checked without those masks, whose
    # outlines fall anywhere and one of whose palette colours is near yellow.
    assert yellow_on_top_edge(compose(_user_drawn(item))[0]) == 1.0
    assert yellow_on_top_edge(compose(item, include_annotations=False, include_segmentation=False)[0]) < 0.2
    # The AI layer holds the agent's region annotations: there only if the (untrained) classifier gave it
    # candidates to place, which differs from machine to machine.
    drawn = [a for a in item.annotations if a["type"] not in ("mask", "measurement")]
    ai = {"annotations-ai-untrained"} if any(a["source"] == "ai" for a in drawn) else set()  # listed, hidden
    expected = {"annotations-user"} | ai
    assert {layer["id"] for layer in layers} - {layer["id"] for layer in fewer} == expected
    base = np.asarray(base_image(item)).astype(int)
    measured = (np.asarray(compose(item, include_segmentation=False, include_annotations=False)[0]) != base).any(-1)
    assert measured[505:515, 300:800].any()  # the distance line (200,500)-(900,520)
    assert not measured[1500:, 1000:].any()


def test_organ_masks_are_tinted_with_their_palette_colour(bundle) -> None:
    (item,) = bundle.images
    organs = [m for m in item.masks if m.source == "organ_seg"]
    layers = layer_images(item, include_annotations=False, include_measurements=False)
    organ_layers = [(layer, image) for layer, image in layers if layer["kind"] == "organ_mask"]
    assert [layer["name"] for layer, _ in organ_layers] == [m.label + UNTRAINED_SUFFIX for m in organs]
    assert all(layer["untrained"] for layer, _ in organ_layers)
    for index, (organ, (layer, image)) in enumerate(zip(organs, organ_layers, strict=True)):
        rgba = np.asarray(image)
        assert np.array_equal(rgba[..., 3] > 0, organ.mask), organ.label
        assert (rgba[organ.mask][:, :3] == ORGAN_PALETTE[index]).all()
        assert layer["color"] == "#{:02x}{:02x}{:02x}".format(*ORGAN_PALETTE[index])
    # Where one organ's fill is the only overlay, the pixel is that colour blended over the image.
    base = np.asarray(base_image(item)).astype(float)
    composed = np.asarray(compose(item, include_annotations=False, include_measurements=False,
                                  show_untrained=True)[0]).astype(float)  # the user asks for them
    alphas = np.stack([np.asarray(image)[..., 3] for _, image in layers])
    alone = (alphas > 0).sum(axis=0) == 1
    index = int(np.argmax([(alone & (a == FILL_ALPHA)).sum() for a in alphas[:len(organs)]]))
    where = alone & (alphas[index] == FILL_ALPHA)
    assert where.sum() > 1000
    expected = base[where] + (np.array(ORGAN_PALETTE[index]) - base[where]) * FILL_ALPHA / 255
    assert np.abs(composed[where] - expected).max() <= 2


def test_fast_path_scales_coordinates(bundle) -> None:
    (item,) = bundle.images
    image, layers = compose(item, max_side=1024)  # its speed: benchmarks/bench_export.py
    assert image.size == (964, 1024)
    scale = 1024 / 1955
    base = np.asarray(base_image(item, 1024)).astype(int)
    changed = (np.asarray(compose(_user_drawn(item), include_segmentation=False, include_measurements=False,
                                  max_side=1024)[0]).astype(int) != base).any(axis=-1)
    assert changed[round(USER_BOX[1] * scale), round(450 * scale):round(650 * scale)].all()
    assert not changed[round(560 * scale):round(640 * scale), round(460 * scale):round(540 * scale)].any()
    for layer, overlay in layer_images(item, max_side=1024):
        assert overlay.size == image.size and overlay.mode == "RGBA", layer["id"]


def test_layer_list_is_json_ready_and_feeds_the_legend(bundle) -> None:
    (item,) = bundle.images
    _, layers = compose(item, max_side=512)
    assert json.loads(json.dumps(layers)) == layers
    kinds = [layer["kind"] for layer in layers]
    assert kinds.count("organ_mask") == 14 and kinds[0] == "image"
    assert set(kinds) == {"image", "organ_mask", "mask", "annotation", "measurement"}
    counts = {layer["id"]: layer["count"] for layer in layers}
    assert counts["annotations-user"] == 5 and counts["measurements"] == 2 and counts["masks"] == 1
    ai = [a for a in item.annotations if a["source"] == "ai" and a["type"] not in ("mask", "measurement")]
    # as many as the agent placed (model-dependent, maybe 0), all resting on the untrained classifier
    assert counts.get("annotations-ai-untrained", 0) == len(ai) and "annotations-ai" not in counts
    hidden = [layer for layer in layers if not layer["visible"]]
    assert [layer["kind"] for layer in hidden].count("organ_mask") == 14
    assert all(layer["untrained"] and layer["hidden_reason"] == UNTRAINED_HIDDEN_REASON for layer in hidden)
    assert not any(layer["untrained"] for layer in layers if layer["visible"])
    entries = legend(layers)  # what is drawn, nothing else
    assert [name for name, _ in entries] == [layer["name"] for layer in layers[1:] if layer["visible"]]
    _, asked = compose(item, max_side=512, show_untrained=True)
    assert all(layer["visible"] for layer in asked)
    entries = legend(asked)
    assert len(entries) == len(asked) - 1
    assert entries[0] == (layers[1]["name"], ORGAN_PALETTE[0]) and entries[0][0].endswith(UNTRAINED_SUFFIX)


def test_untrained_overlays_leave_the_image_plain_outside_user_drawings(bundle) -> None:
    """The PNG export of the untrained run: the film itself wherever the user drew nothing."""
    (item,) = bundle.images
    base = np.asarray(base_image(item)).astype(int)
    (artifact,) = png_annotated(bundle)
    exported = np.asarray(Image.open(io.BytesIO(artifact.data)).convert("RGB"))[:1955].astype(int)
    user = [a for a in item.annotations if a["source"] == "user"]
    drawn = _covered(layer_images(dataclasses.replace(item, annotations=user, masks=[
        m for m in item.masks if not item.mask_untrained(m)])))
    assert (exported != base).any(axis=-1)[~drawn].sum() == 0
    assert (exported != base).any(axis=-1)[drawn].mean() > 0.3  # the user's drawings are there
    strip = Image.open(io.BytesIO(artifact.data)).convert("RGB")
    assert strip.height > 1955 + 3 * 14  # banner, hidden-overlays caption, disclaimer, footer
    shown = png_annotated(dataclasses.replace(bundle, options=ExportOptions(show_untrained_overlays=True)))[0]
    shown_pixels = np.asarray(Image.open(io.BytesIO(shown.data)).convert("RGB"))[:1955].astype(int)
    assert (shown_pixels != base).any(axis=-1)[~drawn].mean() > 0.2  # the organ masks, on request


def test_png_carries_the_banner_disclaimer_and_metadata(bundle, worked) -> None:
    (artifact,) = png_annotated(bundle)
    (item,) = bundle.images
    assert artifact.media_type == "image/png" and artifact.name == f"{item.image_id}_annotated.png"
    image = Image.open(io.BytesIO(artifact.data))
    image.load()
    assert image.format == "PNG" and image.width == 1841 and image.height > 1955
    assert image.text["Software"] == "MedVision" and image.text["ModelTrained"] == "false"
    assert DISCLAIMER in image.text["Disclaimer"] and bundle.banner in image.text["Disclaimer"]
    strip = np.asarray(image.convert("RGB"))[1960:].astype(int)
    red = (strip[..., 0] > 150) & (strip[..., 1] < 40) & (strip[..., 2] < 40)
    white = (strip > 230).all(axis=-1)
    assert red.mean() > 0.5 and white.any()  # a red strip with text in it
    name = worked.engine.store.get_image(worked.image_id)["patient"]["PatientName"]
    assert name.encode() not in artifact.data and name not in artifact.name
