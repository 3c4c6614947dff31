"""The PDF report (reportlab platypus, built-in Helvetica only).

Templates: ``default`` prints every section, ``clinical`` is concise (no trace page, no
similar-case excerpts), ``research`` adds the full model table with sha256 prefixes.
Every page carries the disclaimer, and a red banner when any model was untrained.
"""

from __future__ import annotations

import io
from html import escape
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import (
    Image,
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from engine.export.artifact import Artifact
from engine.export.bundle import ExportBundle, ImageExport
from engine.export.render import compose, hidden_caption, legend
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

IMAGE_MAX_SIDE = 1200
MARGIN = 15 * mm
BANNER_HEIGHT = 9 * mm
BANNER_RED = colors.HexColor("#b00000")
MAX_TRACE_ISSUES = 8

_styles = getSampleStyleSheet()
BODY = _styles["BodyText"]
SMALL = ParagraphStyle("small", parent=BODY, fontSize=7.5, leading=9)
BANNER_STYLE = ParagraphStyle("banner", parent=SMALL, textColor=BANNER_RED)
HEADING = _styles["Heading2"]
TITLE = _styles["Title"]
GRID = TableStyle([
    ("FONT", (0, 0), (-1, -1), "Helvetica", 8),
    ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
    ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")),
    ("VALIGN", (0, 0), (-1, -1), "TOP"),
])


def _p(text: Any, style: ParagraphStyle = BODY) -> Paragraph:
    """A paragraph of plain text (escaped: reportlab reads its own markup)."""
    return Paragraph(escape("" if text is None else str(text)), style)


def _table(headers: list[str], rows: list[list[Any]], widths: list[float] | None = None) -> Table:
    cells = [headers] + [[_p(c, SMALL) if isinstance(c, str) and len(c) > 20 else c for c in row] for row in rows]
    table = Table(cells, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(GRID)
    return table


def _legend(layers: list[dict[str, Any]]) -> Table | None:
    """Overlay colours as swatches, three to a row."""
    entries = legend(layers)
    if not entries:
        return None
    cells, style = [], [("FONT", (0, 0), (-1, -1), "Helvetica", 7.5), ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]
    for index, (name, rgb) in enumerate(entries):
        row, column = divmod(index, 3)
        if column == 0:
            cells.append(["", ""] * 3)
        cells[row][2 * column + 1] = name
        style.append(("BACKGROUND", (2 * column, row), (2 * column, row), colors.Color(*(c / 255 for c in rgb))))
    table = Table(cells, colWidths=[4 * mm, 52 * mm] * 3, rowHeights=4.5 * mm, hAlign="LEFT")
    table.setStyle(TableStyle(style))
    return table


def _image(bundle: ExportBundle, item: ImageExport, width: float) -> list[Any]:
    """The composed image (embedded as JPEG: reportlab copies it as is, which is fast) and its legend."""
    options = bundle.options
    composed, layers = compose(item, include_annotations=options.include_annotations,
                               include_measurements=options.include_measurements, max_side=IMAGE_MAX_SIDE,
                               show_untrained=options.show_untrained_overlays)
    buffer = io.BytesIO()
    composed.save(buffer, "JPEG", quality=90)
    buffer.seek(0)
    height = min(width * composed.height / composed.width, 150 * mm)
    meta = item.image
    flow: list[Any] = [_p(f"Image {item.image_id}: {meta.get('type', '')} {meta.get('modality') or ''}, "
                          f"{meta.get('columns')} x {meta.get('rows')} px", HEADING),
                       Image(buffer, width=height * composed.width / composed.height, height=height)]
    key = _legend(layers)
    note = hidden_caption(layers)
    return [KeepTogether(flow + ([Spacer(1, 2 * mm), key] if key else [])
                         + ([Spacer(1, 1 * mm), _p(note, BANNER_STYLE)] if note else []))]


def _findings(bundle: ExportBundle) -> list[Any]:
    rows = finding_rows(bundle)
    if not rows:
        return []
    table = _table(["Finding", "Probability", "Threshold", "Result", "Evidence"],
                   [[f["label"], "" if f["probability"] is None else f"{f['probability']:.3f}", f["threshold"],
                     "positive" if f["positive"] else "negative", f["evidence"]] for f in rows],
                   [32 * mm, 20 * mm, 18 * mm, 18 * mm, 92 * mm])
    table.setStyle(TableStyle([("TEXTCOLOR", (3, i), (3, i), BANNER_RED)
                               for i, f in enumerate(rows, start=1) if f["positive"]]))
    return [_p("Findings", HEADING), *_lead(bundle), table]


def _lead(bundle: ExportBundle) -> list[Any]:
    """The untrained-models sentence opening a section of model output (nothing when trained)."""
    lead = model_output_lead(bundle)
    return [_p(lead, BANNER_STYLE)] if lead else []


def _per_image(bundle: ExportBundle, item: ImageExport, excerpts: bool) -> list[Any]:
    """Measurements, organ areas / CTR and similar cases of one image."""
    flow: list[Any] = []
    rows = measurement_rows(item) if bundle.options.include_measurements else []
    if rows:
        flow += [_p(f"Measurements, image {item.image_id}", HEADING), *_lead(bundle),
                 _table(["Measurement", "Value", "Note"], [[r["name"], r["value"], r["note"]] for r in rows],
                        [50 * mm, 35 * mm, 95 * mm])]
    organs = organ_rows(item)
    if organs:
        flow += [_p(f"Organs, image {item.image_id}", HEADING), *_lead(bundle),
                 _table(["Organ", "Area"], [[r["name"], r["value"]] for r in organs], [60 * mm, 60 * mm])]
    cases = similar_rows(item)
    if cases:
        headers = ["Case", "Similarity"] + (["Report excerpt"] if excerpts else [])
        flow += [_p(f"Similar cases, image {item.image_id}", HEADING), *_lead(bundle),
                 _table(headers, [[c["case_id"], c["similarity"]] + ([c["excerpt"]] if excerpts else [])
                                  for c in cases], [45 * mm, 20 * mm] + ([115 * mm] if excerpts else []))]
    return flow


def _narrative(bundle: ExportBundle) -> list[Any]:
    paragraphs = narrative_paragraphs(bundle)
    if not paragraphs:
        return []
    return [_p("Report", HEADING), *[_p(text) for text in paragraphs], _p(f"Narrative: {guard_status(bundle)}", SMALL)]


def _models(bundle: ExportBundle, full: bool) -> list[Any]:
    if not bundle.models:
        return []
    if full:
        return [_p("Models", HEADING), _table(
            ["Model", "Task", "Version", "Precision", "Trained", "sha256"],
            [[m.get("id"), m.get("task"), m.get("version"), m.get("precision"), str(m.get("trained")),
              (m.get("sha256") or "")[:16]] for m in bundle.models])]
    return [_p("Models", HEADING), _table(["Model", "Task", "Version", "Trained"],
                                          [[m.get("id"), m.get("task"), m.get("version"), str(m.get("trained"))]
                                           for m in bundle.models])]


def _trace(bundle: ExportBundle) -> list[Any]:
    """One page: run, steps with agents, tools and latencies, totals and the first issues."""
    if not bundle.trace:
        return []
    trace = trace_summary(bundle)
    totals = trace["totals"]
    flow: list[Any] = [PageBreak(), _p("Agent trace", HEADING), *_lead(bundle), _p(
        f"Run {trace['run_id']}, task {trace['task']}, pipeline {trace['pipeline']}, status {trace['status']}: "
        f"{totals.get('tool_calls', 0)} tool calls ({totals.get('failed', 0)} failed, "
        f"{totals.get('low_confidence', 0)} low confidence), {totals.get('steps_ms', 0):.0f} ms in steps."),
        _table(["Step", "Agent", "Status", "Latency (ms)", "Tools"],
               [[s["step"], s["agent"], s["status"], s["latency_ms"], s["tools"]] for s in trace["steps"]],
               [28 * mm, 38 * mm, 24 * mm, 20 * mm, 70 * mm])]
    if trace["issues"]:
        flow.append(_p("Issues", HEADING))
        flow += [_p(issue, SMALL) for issue in trace["issues"][:MAX_TRACE_ISSUES]]
        if len(trace["issues"]) > MAX_TRACE_ISSUES:
            flow.append(_p(f"... and {len(trace['issues']) - MAX_TRACE_ISSUES} more in the JSON trace.", SMALL))
    return flow


def _story(bundle: ExportBundle, width: float) -> list[Any]:
    options = bundle.options
    template = options.template
    block = bundle.patient_block()
    story: list[Any] = [
        _p(options.institution or "MedVision", TITLE),
        _p(f"Session {bundle.session_id}, template {template}, generated {bundle.generated_at}"),
        _p("Patient" + (" (de-identified)" if block.get("deidentified") else ""), HEADING),
        _table(["Field", "Value"], [[k, str(v)] for k, v in block.items() if k != "deidentified"], [45 * mm, 90 * mm]),
    ]
    for item in bundle.images:
        story += _image(bundle, item, width)
    story += _findings(bundle) + _narrative(bundle)
    for item in bundle.images:
        story += _per_image(bundle, item, excerpts=template != "clinical")
    if template != "clinical":
        story += _trace(bundle)
    story += _models(bundle, full=template == "research")
    if bundle.missing:
        story += [_p("Not included", HEADING)] + [_p(f"- {m}") for m in bundle.missing]
    story += [Spacer(1, 4 * mm), _p(DISCLAIMER, HEADING)]
    return story


def pdf_report(bundle: ExportBundle) -> list[Artifact]:
    """The session as one PDF (see the module docstring)."""
    banner = bundle.banner
    top = MARGIN + (BANNER_HEIGHT if banner else 0)

    def decorate(canvas: Any, document: Any) -> None:
        width, height = A4
        canvas.saveState()
        if banner:
            canvas.setFillColor(BANNER_RED)
            canvas.rect(0, height - BANNER_HEIGHT - 4 * mm, width, BANNER_HEIGHT, stroke=0, fill=1)
            canvas.setFillColor(colors.white)
            canvas.setFont("Helvetica-Bold", 10)
            canvas.drawCentredString(width / 2, height - BANNER_HEIGHT + 0.5 * mm, banner)
        canvas.setFillColor(colors.black)
        canvas.setFont("Helvetica", 7.5)
        canvas.drawString(MARGIN, 8 * mm, DISCLAIMER)
        canvas.drawRightString(width - MARGIN, 8 * mm, f"MedVision, session {bundle.session_id}, page {document.page}")
        canvas.restoreState()

    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=top, bottomMargin=MARGIN,
        title=f"MedVision report, session {bundle.session_id}", author="MedVision", creator="MedVision",
        subject=" ".join(p for p in (DISCLAIMER, banner) if p))
    document.build(_story(bundle, A4[0] - 2 * MARGIN), onFirstPage=decorate, onLaterPages=decorate)
    return [Artifact(f"{bundle.session_id}_report.pdf", buffer.getvalue(), "application/pdf")]
