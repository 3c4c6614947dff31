"""One self-contained HTML report: layered images with toggles, findings, narrative, trace.

Everything is inline (data-URI PNGs, CSS, a few lines of JS): the file opens offline and
names no external address. Every text from the bundle goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import io
from html import escape
from string import Template
from typing import Any

from PIL import Image

from engine.export.artifact import Artifact
from engine.export.bundle import ExportBundle, ImageExport
from engine.export.render import base_image, hidden_caption, layer_images
from engine.export.tables import (
    finding_rows,
    guard_status,
    measurement_rows,
    model_output_lead,
    narrative_paragraphs,
    organ_rows,
    similar_rows,
    trace_summary,
)
from engine.vocabulary import DISCLAIMER

MAX_SIDE = 1024

PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="MedVision">
<title>$title</title>
<style>
body { font-family: Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
.banner { background: #b00000; color: #fff; padding: .6em; font-weight: bold; }
.disclaimer { background: #eee; padding: .6em; font-weight: bold; }
.stack { position: relative; display: inline-block; max-width: 100%; }
.stack img { display: block; width: 100%; }
.stack img.overlay { position: absolute; left: 0; top: 0; }
.swatch { display: inline-block; width: .9em; height: .9em; margin-right: .3em; vertical-align: middle; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #bbb; padding: .2em .5em; text-align: left; vertical-align: top; }
.positive { color: #b00000; font-weight: bold; }
</style></head><body>
$banner
<p class="disclaimer">$disclaimer</p>
<h1>$title</h1>
<p>$subtitle</p>
$sections
<p class="disclaimer">$disclaimer</p>
$banner
<script>
document.querySelectorAll("input[data-layer]").forEach(function (box) {
  box.addEventListener("change", function () {
    document.getElementById(box.dataset.layer).hidden = !box.checked;
  });
});
</script>
</body></html>
""")


def _png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(headers: list[str], rows: list[list[Any]], marked: list[bool] | None = None) -> str:
    """A table of escaped cells; ``marked`` rows get the ``positive`` class."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        ('<tr class="positive">' if marked and marked[i] else "<tr>")
        + "".join(f"<td>{escape('' if cell is None else str(cell))}</td>" for cell in row) + "</tr>"
        for i, row in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(title: str, body: str, lead: str | None = None) -> str:
    """A section; ``lead`` (the untrained-models sentence) opens one holding model output."""
    opening = f'<p class="banner">{escape(lead)}</p>' if lead else ""
    return f"<section><h2>{escape(title)}</h2>{opening}{body}</section>\n"


def _image_section(bundle: ExportBundle, item: ImageExport) -> str:
    """The base image and each overlay stacked, with one checkbox per overlay."""
    options = bundle.options
    overlays = layer_images(item, include_annotations=options.include_annotations,
                            include_measurements=options.include_measurements, max_side=MAX_SIDE)
    prefix = f"layer-{item.image_id}"
    images = [f'<img src="{_png_uri(base_image(item, MAX_SIDE))}" alt="image {escape(item.image_id)}">']
    boxes, hidden = [], []
    for layer, image in overlays:
        element_id = escape(f"{prefix}-{layer['id']}")
        shown = options.show_untrained_overlays or not layer.get("untrained")
        if not shown:
            hidden.append(layer | {"visible": False})
        images.append(f'<img class="overlay" id="{element_id}" src="{_png_uri(image)}" alt="{escape(layer["name"])}"'
                      + ("" if shown else " hidden") + ">")
        boxes.append(f'<label><input type="checkbox"{" checked" if shown else ""} data-layer="{element_id}">'
                     f'<span class="swatch" style="background:{escape(layer["color"])}"></span>'
                     f'{escape(layer["name"])} ({layer["count"]})</label><br>')
    meta = item.image
    caption = f"{meta.get('type', '')} {meta.get('modality') or ''}, {meta.get('columns')} x {meta.get('rows')} px"
    note = hidden_caption(hidden)
    return _section(f"Image {item.image_id}",
                    f'<p>{escape(caption)}</p>' + (f'<p class="banner">{escape(note)}</p>' if note else "")
                    + f'<div class="stack">{"".join(images)}</div>'
                    f'<fieldset><legend>Layers</legend>{"".join(boxes)}</fieldset>')


def _sections(bundle: ExportBundle) -> str:
    options, report = bundle.options, bundle.report
    block = bundle.patient_block()
    out = [_section("Patient", _table(["Field", "Value"], [[k, v] for k, v in block.items()]))]
    out += [_image_section(bundle, item) for item in bundle.images]
    lead = model_output_lead(bundle)
    findings = finding_rows(bundle)
    if findings:
        out.append(_section("Findings", lead=lead, body=_table(
            ["Finding", "Probability", "Threshold", "Result", "Evidence"],
            [[f["label"], f"{f['probability']:.3f}" if f["probability"] is not None else "", f["threshold"],
              "positive" if f["positive"] else "negative", f["evidence"]] for f in findings],
            [f["positive"] for f in findings])))
    for item in bundle.images:
        rows = measurement_rows(item) if options.include_measurements else []
        if rows:
            table = _table(["Measurement", "Value", "Note"], [[r["name"], r["value"], r["note"]] for r in rows])
            out.append(_section(f"Measurements, image {item.image_id}", table, lead))
        if organ_rows(item):
            table = _table(["Organ", "Area"], [[r["name"], r["value"]] for r in organ_rows(item)])
            out.append(_section(f"Organs, image {item.image_id}", table, lead))
        if item.similar_cases:
            out.append(_section(f"Similar cases, image {item.image_id}", lead=lead, body=_table(
                ["Case", "Similarity", "Report excerpt"],
                [[c["case_id"], c["similarity"], c["excerpt"]] for c in similar_rows(item)])))
    paragraphs = narrative_paragraphs(bundle) if report else []
    if paragraphs:
        out.append(_section("Report", "".join(f"<p>{escape(text)}</p>" for text in paragraphs)
                            + f"<p>Narrative: {escape(guard_status(bundle))}</p>"))
    if bundle.trace:
        trace = trace_summary(bundle)
        totals = trace["totals"]
        head = (f"<p>Run {escape(str(trace['run_id']))}, task {escape(str(trace['task']))}, pipeline "
                f"{escape(trace['pipeline'])}, status {escape(str(trace['status']))}: {totals.get('tool_calls', 0)} "
                f"tool calls, {totals.get('steps_ms', 0):.0f} ms.</p>")
        steps = _table(["Step", "Agent", "Status", "Latency (ms)", "Tools"],
                       [[s["step"], s["agent"], s["status"], s["latency_ms"], s["tools"]] for s in trace["steps"]])
        out.append(_section("Agent trace", head + steps, lead=lead))
    if bundle.models:
        out.append(_section("Models", _table(
            ["Model", "Task", "Version", "Trained", "sha256"],
            [[m.get("id"), m.get("task"), m.get("version"), m.get("trained"), (m.get("sha256") or "")[:12]]
             for m in bundle.models])))
    if bundle.missing:
        out.append(_section("Not included", "<ul>" + "".join(f"<li>{escape(m)}</li>" for m in bundle.missing)
                            + "</ul>"))
    return "".join(out)


def html_report(bundle: ExportBundle) -> list[Artifact]:
    """The session as one self-contained HTML file (see the module docstring)."""
    institution = bundle.options.institution
    title = f"MedVision report, session {bundle.session_id}"
    subtitle = ", ".join(p for p in (institution, f"template {bundle.options.template}",
                                      f"generated {bundle.generated_at}") if p)
    page = PAGE.substitute(
        title=escape(title), subtitle=escape(subtitle), disclaimer=escape(DISCLAIMER),
        banner=f'<p class="banner">{escape(bundle.banner)}</p>' if bundle.banner else "",
        sections=_sections(bundle))
    return [Artifact(f"{bundle.session_id}_report.html", page.encode("utf-8"), "text/html")]
