"""The self-contained HTML report: no external address, one image per layer, escaped text."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from engine.export.bundle import ExportOptions, gather
from engine.export.html import MAX_SIDE, html_report
from engine.export.render import UNTRAINED_SUFFIX, compose, layer_images
from engine.vocabulary import DISCLAIMER, UNTRAINED_OVERLAYS_HIDDEN


class _Page(HTMLParser):
    """What the tests read from a page: images, checkboxes, scripts and visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.boxes: list[dict[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "input":
            self.boxes.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(data: bytes) -> tuple[str, _Page]:
    page = _Page()
    text = data.decode("utf-8")
    page.feed(text)
    page.close()
    return text, page


@pytest.fixture(scope="module")
def report(worked):
    bundle = gather(worked.engine.services, worked.session_id, ExportOptions(institution="<script>alert(1)</script>"))
    (artifact,) = html_report(bundle)
    return bundle, artifact


def test_html_is_self_contained(report) -> None:
    bundle, artifact = report
    assert artifact.media_type == "text/html" and artifact.name == f"{bundle.session_id}_report.html"
    text, page = _parse(artifact.data)
    assert "http:" not in text and "https:" not in text
    # base64 may spell "http" by chance; everything else may not.
    assert "http" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert page.images and all(i["src"].startswith("data:image/png;base64,") for i in page.images)
    assert not re.search(r"<(link|iframe|object|embed)\b|\bsrc=\"(?!data:)", text)
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_html_has_one_image_per_layer_and_a_checkbox_per_overlay(report) -> None:
    bundle, artifact = report
    (item,) = bundle.images
    _, layers = compose(item, max_side=MAX_SIDE)
    _, page = _parse(artifact.data)
    assert len(page.images) == len(layers)
    overlays = {i["id"]: i for i in page.images if i.get("id")}
    assert len(overlays) == len(layers) - 1
    assert sorted(b["data-layer"] for b in page.boxes) == sorted(overlays)
    assert all(b.get("type") == "checkbox" for b in page.boxes)
    # Overlays of the untrained models start unchecked and hidden, named so; the others start on.
    untrained = {f"layer-{item.image_id}-{layer['id']}" for layer in layers if layer["untrained"]}
    assert len(untrained) >= 14  # the organ masks at least
    assert all(("checked" in b) == (b["data-layer"] not in untrained) for b in page.boxes)
    assert all(("hidden" in overlays[name]) == (name in untrained) for name in overlays)
    assert all(overlays[name]["alt"].endswith(UNTRAINED_SUFFIX) for name in untrained)
    assert any(line.strip().startswith("Hidden: ") and UNTRAINED_OVERLAYS_HIDDEN in line for line in page.text)
    # An organ mask of the untrained dev pack may be empty (or vanish at this scale) on some
    # machines: its layer is then blank. Every other overlay draws something.
    blank = {f"layer-{item.image_id}-{layer['id']}" for layer, image in layer_images(item, max_side=MAX_SIDE)
             if not np.asarray(image)[..., 3].any()}
    assert all("-organ-" in name for name in blank), blank
    sizes = set()
    for image in page.images:
        decoded = Image.open(io.BytesIO(base64.b64decode(image["src"].split(",", 1)[1])))
        sizes.add(decoded.size)
        if image.get("id"):  # an overlay: transparent but for what it draws
            alpha = np.asarray(decoded.convert("RGBA"))[..., 3]
            assert (alpha > 0).mean() < 1 and bool((alpha > 0).any()) == (image["id"] not in blank), image["id"]
    assert sizes == {(964, 1024)}
    user = overlays[f"layer-{item.image_id}-annotations-user"]
    assert user["alt"] == "User drawings"


def test_html_shows_untrained_overlays_when_asked(worked) -> None:
    bundle = gather(worked.engine.services, worked.session_id, ExportOptions(show_untrained_overlays=True,
                                                                            include_report=False))
    _, page = _parse(html_report(bundle)[0].data)
    assert page.boxes and all("checked" in b for b in page.boxes)
    assert not any("hidden" in image for image in page.images)
    assert any(image.get("alt", "").endswith(UNTRAINED_SUFFIX) for image in page.images)


def test_html_shows_findings_report_trace_and_warnings(report) -> None:
    bundle, artifact = report
    (item,) = bundle.images
    _, page = _parse(artifact.data)
    shown = " ".join(" ".join(page.text).split())
    for finding in bundle.report["findings"]:
        assert finding["label"] in shown
    assert bundle.banner in shown and DISCLAIMER in shown
    assert f"guard {bundle.report['narrative']['guard']['status']}" in shown
    assert bundle.report["narrative"]["impression"][:60] in shown
    for model in bundle.models:
        assert model["id"] in shown and model["version"] in shown
    for case in item.similar_cases:
        assert case["case_id"] in shown
    assert "width (distance)" in shown and "700.29 px" in shown and "pixel spacing unknown" in shown
    for step in bundle.trace["steps"]:
        assert step["agent"] in shown
    # Only when the untrained organ masks gave one (an empty heart or lung mask gives none).
    ctr = ((item.segmentation or {}).get("ctr") or {}).get("ratio")
    assert ("Cardiothoracic ratio" in shown) == (ctr is not None)


def test_html_prints_identifiers_only_when_asked(worked) -> None:
    name = worked.engine.store.get_image(worked.image_id)["patient"]["PatientName"]
    hidden = html_report(gather(worked.engine.services, worked.session_id, ExportOptions(include_report=False)))[0]
    shown = html_report(gather(worked.engine.services, worked.session_id,
                               ExportOptions(include_identifiers=True, include_annotations=False)))[0]
    assert name.encode() not in hidden.data and name.encode() in shown.data
    _, page = _parse(hidden.data)
    assert "Agent trace" not in " ".join(page.text)
    _, bare = _parse(shown.data)
    assert len(bare.images) == 1 and not bare.boxes  # annotations off: no overlays gathered
