"""Draw an exported image with its overlays: organ masks, masks, annotations, measurements.

Every overlay is drawn once, into its own transparent RGBA layer the size of the
(optionally downsampled) windowed image: :func:`layer_images` returns those layers (the
HTML report toggles them), :func:`compose` alpha-composites them over the base (PNG, PDF).
Coordinates are stored in source pixels and scaled here; masks are composited with numpy.

Masks and AI boxes made by untrained models (the dev pack's) are noise: they are left out
of a composed image unless asked for, named as untrained when shown, and a caption
(:func:`hidden_caption`) says what was left out and why.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from engine.analysis.volume.annotation import VOLUME_ROI
from engine.export.artifact import Artifact
from engine.export.bundle import ExportBundle, ImageExport
from engine.imaging.masks import decode_rle
from engine.vocabulary import DISCLAIMER, UNTRAINED_OVERLAYS_HIDDEN

Color = tuple[int, int, int]

# One colour per organ, in mask order (14 chest organs, then repeats); chosen to stay
# distinguishable on a grayscale radiograph.
ORGAN_PALETTE: tuple[Color, ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195),
)
MASK_COLOR: Color = (0, 160, 255)
MEASUREMENT_COLOR: Color = (57, 255, 20)
# Annotation groups: colour and whether the outline is dashed (AI output is dashed).
ANNOTATION_STYLES: dict[str, tuple[str, Color, bool]] = {
    "user": ("User drawings", (255, 215, 0), False),
    "ai": ("AI regions", (0, 229, 255), True),
    "suggestions": ("AI suggestions", (255, 64, 255), True),
    "system": ("System annotations", (200, 200, 200), True),
}
FILL_ALPHA = 70
#: Annotation types the annotation layers leave out: masks and measurements have their own layers, a
#: ``volume_roi`` holds a 3D region's voxel coordinates, not a shape on the slice.
NOT_DRAWN = ("mask", "measurement", VOLUME_ROI)
LINE_ALPHA = 235
STRIP_BANNER_COLOR: Color = (170, 0, 0)
STRIP_PLAIN_COLOR: Color = (40, 40, 40)
#: Added to the name of an overlay made by an untrained model, wherever it is shown.
UNTRAINED_SUFFIX = " (untrained model, not meaningful)"
#: Why such an overlay is hidden unless asked for.
UNTRAINED_HIDDEN_REASON = f"{UNTRAINED_OVERLAYS_HIDDEN} Export with show_untrained_overlays to draw them."


def _hex(color: Color) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def _rgb(hex_color: str) -> Color:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


class _Canvas:
    """The output geometry: size, source-to-output scale, line width and label font."""

    def __init__(self, item: ImageExport, max_side: int | None) -> None:
        rows, columns = item.decoded.rows, item.decoded.columns
        factor = min(1.0, max_side / max(rows, columns)) if max_side else 1.0
        self.size = (max(1, round(columns * factor)), max(1, round(rows * factor)))
        self.sx, self.sy = self.size[0] / columns, self.size[1] / rows
        self.line = max(2, round(max(self.size) / 450))
        self.font = _font(max(12, round(max(self.size) / 55)))

    def xy(self, point: Any) -> tuple[float, float]:
        return float(point[0]) * self.sx, float(point[1]) * self.sy

    def points(self, points: Any) -> list[tuple[float, float]]:
        return [self.xy(p) for p in points]

    def layer(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        image = Image.new("RGBA", self.size, (0, 0, 0, 0))
        return image, ImageDraw.Draw(image)

    def resample(self, mask: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resample of a boolean source-size mask to the output size."""
        if mask.shape == (self.size[1], self.size[0]):
            return mask
        rows = (np.arange(self.size[1]) * (mask.shape[0] / self.size[1])).astype(np.intp)
        columns = (np.arange(self.size[0]) * (mask.shape[1] / self.size[0])).astype(np.intp)
        return mask[rows][:, columns]

    def label(self, draw: ImageDraw.ImageDraw, at: tuple[float, float], text: str, color: Color) -> None:
        draw.text(at, text, fill=color + (255,), font=self.font, stroke_width=2, stroke_fill=(0, 0, 0, 255))


def base_image(item: ImageExport, max_side: int | None = None) -> Image.Image:
    """The windowed 8-bit image as RGB (MONOCHROME1 inverted), downsampled to ``max_side``."""
    image = Image.fromarray(item.decoded.display()).convert("RGB")
    size = _Canvas(item, max_side).size
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _mask_layer(canvas: _Canvas, masks: list[np.ndarray], color: Color) -> tuple[Image.Image, tuple[int, int]]:
    """A semi-transparent fill with an opaque outline ``canvas.line`` pixels wide.

    Returns the RGBA patch covering the masks' bounding box (plus a one-pixel margin, so
    the outline closes there) and its top-left corner in the output image.
    """
    union = canvas.resample(masks[0]).copy()
    for mask in masks[1:]:
        union |= canvas.resample(mask)
    rows, columns = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    if rows.size == 0:
        return Image.new("RGBA", (1, 1), (0, 0, 0, 0)), (0, 0)
    top, left = max(int(rows[0]) - 1, 0), max(int(columns[0]) - 1, 0)
    union = union[top:int(rows[-1]) + 2, left:int(columns[-1]) + 2]
    inner = union.copy()
    for _ in range(canvas.line):  # erosion by 4-neighbour shifts: what it takes off is the outline
        previous = inner.copy()
        inner[1:] &= previous[:-1]
        inner[:-1] &= previous[1:]
        inner[:, 1:] &= previous[:, :-1]
        inner[:, :-1] &= previous[:, 1:]
    alpha = union.view(np.uint8) * np.uint8(LINE_ALPHA)
    alpha -= inner.view(np.uint8) * np.uint8(LINE_ALPHA - FILL_ALPHA)
    size = (alpha.shape[1], alpha.shape[0])
    bands = [Image.new("L", size, c) for c in color] + [Image.fromarray(alpha, "L")]
    return Image.merge("RGBA", bands), (left, top)


def _dashed(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], fill: tuple[int, ...],
            width: int) -> None:
    """A dashed polyline (PIL has none): dashes of 4 line widths, gaps of 2."""
    dash, gap = 4 * width, 2 * width
    for (x1, y1), (x2, y2) in zip(points, points[1:], strict=False):
        length = math.hypot(x2 - x1, y2 - y1)
        step = 0.0
        while step < length:
            end = min(step + dash, length)
            draw.line([(x1 + (x2 - x1) * step / length, y1 + (y2 - y1) * step / length),
                       (x1 + (x2 - x1) * end / length, y1 + (y2 - y1) * end / length)], fill=fill, width=width)
            step = end + gap


def _draw_annotation(canvas: _Canvas, draw: ImageDraw.ImageDraw, annotation: dict[str, Any], color: Color,
                     dashed: bool) -> None:
    kind, coords, label = annotation["type"], annotation["coordinates"], annotation.get("label") or ""
    fill, width = color + (LINE_ALPHA,), canvas.line
    if kind == "text":
        canvas.label(draw, canvas.xy(coords["position"]), str(coords.get("text") or label), color)
        return
    if kind == "point":
        x, y = canvas.xy(coords)
        radius = 3 * width
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=fill, width=width)
        draw.line([(x - 2 * radius, y), (x + 2 * radius, y)], fill=fill, width=1)
        draw.line([(x, y - 2 * radius), (x, y + 2 * radius)], fill=fill, width=1)
        anchor = (x + radius + width, y - radius)
    else:
        if kind == "bbox":
            x1, y1 = canvas.xy(coords[:2])
            x2, y2 = canvas.xy(coords[2:])
            points = [(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)]
        else:  # polygon is closed, freehand stays open
            points = canvas.points(coords)
            points += points[:1] if kind == "polygon" else []
        if dashed:
            _dashed(draw, points, fill, width)
        else:
            draw.line(points, fill=fill, width=width, joint="curve")
        anchor = (points[0][0] + width, points[0][1] + width)
    if label:
        canvas.label(draw, anchor, label, color)


def _draw_measurement(canvas: _Canvas, draw: ImageDraw.ImageDraw, annotation: dict[str, Any]) -> None:
    coords = annotation["coordinates"]
    points = canvas.points(coords.get("points") or [])
    if len(points) < 2:
        return
    fill, width = MEASUREMENT_COLOR + (LINE_ALPHA,), canvas.line
    draw.line(points + (points[:1] if coords.get("kind") == "area" else []), fill=fill, width=width, joint="curve")
    for x, y in points:
        draw.ellipse([x - 2 * width, y - 2 * width, x + 2 * width, y + 2 * width], fill=fill)
    result = coords.get("result") or {}
    text = annotation.get("label") or coords.get("kind", "")
    if result.get("value") is not None:
        text = f"{text}: {result['value']:.1f} {result.get('unit', '')}".strip()
    anchor = points[1] if coords.get("kind") == "angle" else points[-1]
    canvas.label(draw, (anchor[0] + 3 * width, anchor[1] + width), text, MEASUREMENT_COLOR)


def _group(annotation: dict[str, Any]) -> str:
    if annotation.get("layer") == "suggestions":
        return "suggestions"
    return annotation.get("source") if annotation.get("source") in ANNOTATION_STYLES else "user"


def _accepted_masks(item: ImageExport) -> list[np.ndarray]:
    """Mask annotations that are not already an interactive mask (accepting one copies it)."""
    out = []
    for annotation in item.annotations:
        if annotation["type"] == "mask":
            mask = decode_rle(annotation["coordinates"])
            if not any(m.mask.shape == mask.shape and np.array_equal(m.mask, mask) for m in item.masks):
                out.append(mask)
    return out


Placed = tuple[dict[str, Any], Image.Image | None, tuple[int, int]]


def _placed_layers(item: ImageExport, canvas: _Canvas, *, include_annotations: bool, include_segmentation: bool,
                   include_measurements: bool, draw_untrained: bool = True) -> list[Placed]:
    """Each non-empty overlay as ``(layer, RGBA patch, top-left corner)`` on ``canvas``.

    Overlays made by untrained models are named so (``"untrained": true`` and
    :data:`UNTRAINED_SUFFIX`); with ``draw_untrained`` False they are listed with no patch.
    """
    layers: list[Placed] = []

    def add(layer_id: str, name: str, kind: str, count: int, color: Color,
            draw: Callable[[], tuple[Image.Image, tuple[int, int]]], untrained: bool = False) -> None:
        if count:
            layer = {"id": layer_id, "name": name + (UNTRAINED_SUFFIX if untrained else ""), "kind": kind,
                     "count": count, "color": _hex(color), "untrained": untrained}
            layers.append((layer, *draw()) if draw_untrained or not untrained else (layer, None, (0, 0)))

    def drawn(annotations: list[dict[str, Any]], color: Color,
              dashed: bool) -> Callable[[], tuple[Image.Image, tuple[int, int]]]:
        def draw() -> tuple[Image.Image, tuple[int, int]]:
            image, pen = canvas.layer()
            for annotation in annotations:
                _draw_annotation(canvas, pen, annotation, color, dashed)
            return image, (0, 0)
        return draw

    if include_segmentation:
        organs = [m for m in item.masks if m.source == "organ_seg"]
        for index, organ in enumerate(organs):
            color = ORGAN_PALETTE[index % len(ORGAN_PALETTE)]
            add(f"organ-{organ.mask_id}", organ.label, "organ_mask", 1, color,
                lambda organ=organ, color=color: _mask_layer(canvas, [organ.mask], color), item.mask_untrained(organ))
        others = [m for m in item.masks if m.source != "organ_seg"]
        masks = [m.mask for m in others if not item.mask_untrained(m)] + _accepted_masks(item)
        if masks:
            add("masks", "Masks", "mask", len(masks), MASK_COLOR, lambda: _mask_layer(canvas, masks, MASK_COLOR))
        untrained_masks = [m.mask for m in others if item.mask_untrained(m)]
        if untrained_masks:
            add("masks-untrained", "Masks", "mask", len(untrained_masks), MASK_COLOR,
                lambda: _mask_layer(canvas, untrained_masks, MASK_COLOR), True)
    if include_annotations:
        for group, (name, color, dashed) in ANNOTATION_STYLES.items():
            mine = [a for a in item.annotations if a["type"] not in NOT_DRAWN and _group(a) == group]
            trained = [a for a in mine if not item.annotation_untrained(a)]
            untrained = [a for a in mine if item.annotation_untrained(a)]
            add(f"annotations-{group}", name, "annotation", len(trained), color, drawn(trained, color, dashed))
            add(f"annotations-{group}-untrained", name, "annotation", len(untrained), color,
                drawn(untrained, color, dashed), True)
    if include_measurements:
        mine = [a for a in item.annotations if a["type"] == "measurement"]

        def measured() -> tuple[Image.Image, tuple[int, int]]:
            image, pen = canvas.layer()
            for annotation in mine:
                _draw_measurement(canvas, pen, annotation)
            return image, (0, 0)
        add("measurements", "Measurements", "measurement", len(mine), MEASUREMENT_COLOR, measured)
    return layers


def layer_images(item: ImageExport, *, include_annotations: bool = True, include_segmentation: bool = True,
                 include_measurements: bool = True, max_side: int | None = None,
                 ) -> list[tuple[dict[str, Any], Image.Image]]:
    """Each overlay as ``(layer, RGBA image)``, the base's size; empty layers are left out.

    ``layer`` is ``{"id", "name", "kind", "count", "color"}`` with kind ``organ_mask``
    (one per organ), ``mask`` (interactive and accepted masks), ``annotation`` (one per
    source: user, ai, system, or the suggestions layer) or ``measurement``.
    """
    canvas = _Canvas(item, max_side)
    out = []
    for layer, patch, corner in _placed_layers(item, canvas, include_annotations=include_annotations,
                                               include_segmentation=include_segmentation,
                                               include_measurements=include_measurements):
        if patch is None:  # not reached: every layer is drawn here
            continue
        if patch.size != canvas.size:
            full = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
            full.paste(patch, corner)
            patch = full
        out.append((layer, patch))
    return out


def compose(item: ImageExport, *, include_annotations: bool = True, include_segmentation: bool = True,
            include_measurements: bool = True, max_side: int | None = None, show_untrained: bool = False,
            ) -> tuple[Image.Image, list[dict[str, Any]]]:
    """The windowed image with every chosen overlay (RGB), and the layer list (JSON-ready).

    Overlays from untrained models are left out unless ``show_untrained`` (then drawn,
    named as such); every layer says ``visible``, and a hidden one says why (``hidden_reason``).
    """
    canvas = _Canvas(item, max_side)
    image = base_image(item, max_side).convert("RGBA")
    overlays = _placed_layers(item, canvas, include_annotations=include_annotations,
                              include_segmentation=include_segmentation, include_measurements=include_measurements,
                              draw_untrained=show_untrained)
    layers = [{"id": "image", "name": f"Image {item.image_id}", "kind": "image", "count": 1, "color": None,
               "untrained": False, "visible": True}]
    for layer, patch, corner in overlays:
        if patch is not None:
            image.alpha_composite(patch, dest=corner)
            layers.append(layer | {"visible": True})
        else:
            layers.append(layer | {"visible": False, "hidden_reason": UNTRAINED_HIDDEN_REASON})
    return image.convert("RGB"), layers


def legend(layers: list[dict[str, Any]]) -> list[tuple[str, Color]]:
    """``(name, rgb)`` of each drawn overlay layer, in drawing order, for a printed legend."""
    return [(layer["name"], _rgb(layer["color"])) for layer in layers
            if layer.get("color") and layer.get("visible", True)]


def hidden_caption(layers: list[dict[str, Any]]) -> str | None:
    """One line saying which overlays from untrained models were left out and why, or None."""
    hidden = [layer for layer in layers if layer.get("visible") is False]
    if not hidden:
        return None
    names = ", ".join(layer["name"].removesuffix(UNTRAINED_SUFFIX) for layer in hidden[:6])
    more = f" and {len(hidden) - 6} more" if len(hidden) > 6 else ""
    return (f"Hidden: {len(hidden)} overlay layer(s) from untrained models ({names}{more}). "
            f"{UNTRAINED_HIDDEN_REASON}")


def _with_strip(image: Image.Image, lines: list[str], banner: bool) -> Image.Image:
    """The image with a strip below it carrying ``lines`` (red when models were untrained)."""
    font = _font(max(14, image.width // 70))
    line_height = font.size + 6 if isinstance(font, ImageFont.FreeTypeFont) else 16
    out = Image.new("RGB", (image.width, image.height + line_height * len(lines) + 12),
                    STRIP_BANNER_COLOR if banner else STRIP_PLAIN_COLOR)
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for index, line in enumerate(lines):
        draw.text((8, image.height + 6 + index * line_height), line, fill=(255, 255, 255), font=font)
    return out


def png_annotated(bundle: ExportBundle) -> list[Artifact]:
    """One full-resolution annotated PNG per image, with the disclaimer (and banner) in a strip."""
    options, artifacts = bundle.options, []
    for item in bundle.images:
        image, layers = compose(item, include_annotations=options.include_annotations,
                                include_measurements=options.include_measurements,
                                show_untrained=options.show_untrained_overlays)
        lines = [line for line in (bundle.banner, hidden_caption(layers), DISCLAIMER) if line]
        lines.append(f"MedVision export, image {item.image_id}, {bundle.generated_at}")
        info = PngInfo()
        info.add_text("Software", "MedVision")
        info.add_text("Disclaimer", DISCLAIMER + (f" {bundle.banner}" if bundle.banner else ""))
        info.add_text("ModelTrained", str(bundle.model_trained).lower() if bundle.model_trained is not None
                      else "unknown")
        buffer = io.BytesIO()
        _with_strip(image, lines, bool(bundle.banner)).save(buffer, "PNG", pnginfo=info, compress_level=6)
        artifacts.append(Artifact(f"{item.image_id}_annotated.png", buffer.getvalue(), "image/png"))
    return artifacts
