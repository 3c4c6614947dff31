"""The tables the PDF and HTML reports print, built once so both say the same."""

from __future__ import annotations

from typing import Any

from engine.export.bundle import ExportBundle, ImageExport
from engine.vocabulary import UNTRAINED_OUTPUTS


def finding_rows(bundle: ExportBundle) -> list[dict[str, Any]]:
    """Label, probability, threshold, positive and evidence: the report's, else the classifier's."""
    if bundle.report and bundle.report.get("findings"):
        return [{"label": f["label"], "probability": f.get("probability"), "threshold": f.get("threshold"),
                 "positive": bool(f.get("present")), "evidence": "; ".join(f.get("evidence") or [])}
                for f in bundle.report["findings"]]
    rows = []
    for item in bundle.images:
        for f in (item.classification or {}).get("findings") or []:
            rows.append({"label": f["label"], "probability": f.get("probability"), "threshold": f.get("threshold"),
                         "positive": bool(f.get("positive")), "evidence": f"classifier, image {item.image_id}"})
    return rows


def measurement_rows(item: ImageExport) -> list[dict[str, str]]:
    """Each measurement as name, value with unit, and a note when the spacing is unknown."""
    rows = []
    for annotation in item.measurements:
        coords = annotation.get("coordinates") if "coordinates" in annotation else None
        result = (coords or {}).get("result") or annotation
        value = result.get("value")
        shown = f"{value:.2f} {result.get('unit', '')}".strip() if isinstance(value, int | float) else "not measured"
        name = annotation.get("label") or annotation.get("name") or ""
        kind = (coords or {}).get("kind", "")
        note = "" if result.get("calibrated", True) else result.get("note") or "pixel spacing unknown: pixels"
        rows.append({"name": f"{name} ({kind})" if kind else name, "value": shown, "note": note})
    return rows


def organ_rows(item: ImageExport) -> list[dict[str, str]]:
    """Organ areas (cm2 when calibrated, else px) and the cardiothoracic ratio, when segmented."""
    seg = item.segmentation or {}
    rows = [{"name": o["label"], "value": f"{o['area_cm2']:.1f} cm2" if o.get("area_cm2") is not None
             else f"{o.get('area_px', 0)} px"} for o in seg.get("organs") or []]
    ctr = seg.get("ctr") or {}
    if ctr.get("ratio") is not None:
        rows.append({"name": "Cardiothoracic ratio", "value": f"{ctr['ratio']:.2f} (threshold {ctr.get('threshold')})"})
    return rows


def trace_summary(bundle: ExportBundle) -> dict[str, Any]:
    """Steps (agent, status, latency, tools), totals and models with versions, from the trace."""
    trace = bundle.trace or {}
    steps = [{"step": s.get("step_id"), "agent": s.get("agent") or "", "status": s.get("status") or "",
              "latency_ms": s.get("latency_ms"),
              "tools": ", ".join(t.get("tool_id") or "" for t in s.get("tool_calls") or [])}
             for s in trace.get("steps") or []]
    pipeline = trace.get("pipeline") or {}
    return {"run_id": trace.get("run_id"), "task": trace.get("task"), "status": trace.get("status"),
            "pipeline": f"{pipeline.get('id', '')} {pipeline.get('version', '')}".strip(),
            "steps": steps, "totals": trace.get("totals") or {},
            "issues": [i.get("message", "") for i in (trace.get("attribution") or {}).get("issues") or []]}


def guard_status(bundle: ExportBundle) -> str:
    """How the narrative was written and what its guard said, e.g. ``template, guard fallback``."""
    narrative = (bundle.report or {}).get("narrative") or {}
    if not narrative:
        return "no narrative"
    return f"{narrative.get('source', 'unknown')}, guard {(narrative.get('guard') or {}).get('status', 'unknown')}"


def similar_rows(item: ImageExport, excerpt_chars: int = 300) -> list[dict[str, str]]:
    """Similar cases as case id, similarity and a report excerpt (findings, then impression)."""
    rows = []
    for case in item.similar_cases:
        report = case.get("report") or {}
        excerpt = " ".join(p for p in (report.get("findings") or case.get("findings"), report.get("impression")) if p)
        rows.append({"case_id": str(case.get("case_id", "")), "similarity": f"{case.get('similarity', 0):.3f}",
                     "excerpt": excerpt[:excerpt_chars]})
    return rows


def model_output_lead(bundle: ExportBundle) -> str | None:
    """The first sentence of every section holding model output, when the models are untrained."""
    return UNTRAINED_OUTPUTS if bundle.model_trained is False else None


def narrative_paragraphs(bundle: ExportBundle) -> list[str]:
    """The narrative as printed: "Findings. ..." and "Impression. ...", each led by the
    untrained-models sentence (before its name, so neither reads as a report) when untrained."""
    narrative = (bundle.report or {}).get("narrative")
    if not narrative:
        return []
    lead = model_output_lead(bundle)
    out = []
    for name, key in (("Findings", "findings"), ("Impression", "impression")):
        text = str(narrative.get(key) or "")
        if lead is None:
            out.append(f"{name}. {text}")
        else:
            out.append(f"{lead} {name} field of the narrative: {text.removeprefix(lead).lstrip()}")
    return out
