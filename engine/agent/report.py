"""The structured report: built deterministically from tool outputs, validated by schema.

:func:`build_report` is a pure function of the run's facts and tool outputs (and the
``generated_at`` it is given): the same outputs always give the same report, which is
what the guard checks a narrative against. The shape is
``engine/schemas/report.schema.json`` (schema_version 1.0.0): case and de-identified
patient, images, every classifier finding (present or not, with side/zone when the
specialist placed it), diagnoses with confidence and evidence, lesions (AI annotations
by id with their measurements), measurements, management with its source, quality
warnings (including the quality gate's flags), reasoning, the narrative slot (filled
by ``write_narrative``), ``model_trained`` and the disclaimer.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from functools import lru_cache
from typing import Any

import jsonschema

from engine.errors import ErrorCode, MedVisionError
from engine.vocabulary import DISCLAIMER, UNTRAINED_BANNER, qualified

SCHEMA_VERSION = "1.0.0"
NO_MODEL_NOTE = "No image analysis model ran: no finding was assessed."


@lru_cache(maxsize=1)
def report_schema() -> dict:
    """``engine/schemas/report.schema.json``."""
    return json.loads((importlib.resources.files("engine.schemas") / "report.schema.json").read_text())


def validate_report(report: dict[str, Any]) -> None:
    """Check a report against the schema; ``INVALID_ARGUMENT`` naming the first bad field."""
    validator = jsonschema.Draft202012Validator(report_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"report does not follow report.schema.json at {where}: "
                                                         f"{errors[0].message}", key=where)


def case_id(session_id: str, image_ids: list[str]) -> str:
    """A stable, non-identifying case id for a session's images."""
    digest = hashlib.sha256(":".join([session_id, *sorted(image_ids)]).encode()).hexdigest()
    return f"case-{digest[:16]}"


def _round(value: Any, digits: int = 4) -> Any:
    return round(float(value), digits) if isinstance(value, int | float) and not isinstance(value, bool) else value


def build_report(facts: dict[str, Any], outputs: dict[str, Any], *, session_id: str, generated_at: str,
                 flags: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report of one run from its tool outputs.

    Parameters
    ----------
    facts:
        The run's facts (:func:`engine.agent.workflow.build_facts`): image, patient,
        models.
    outputs:
        Tool id -> output (per-item tools: ``{"items": [...]}``).
    session_id, generated_at:
        Written as they are.
    flags:
        Quality-gate flags (``{"code", "message", "action"}``), listed as warnings.
    """
    info = outputs.get("image_info") or {}
    classification = outputs.get("classify") or {}
    regions = [r for r in (outputs.get("region_analysis") or {}).get("items", []) if r.get("annotation_id")]
    placed = {r["label"]: r for r in regions}
    segmentation = outputs.get("segment_organs") or {}
    measured = (outputs.get("measurements") or {}).get("measurements", [])
    ctr = next((m["value"] for m in measured if m["name"] == "cardiothoracic_ratio"), None)
    threshold = classification.get("threshold")
    model_id = classification.get("model_id")
    prior = outputs.get("compare_prior") or {}
    prior_rows = {row["label"]: row for row in prior.get("changed", [])}

    findings = []
    for finding in classification.get("findings", []):
        region = placed.get(finding["label"]) if finding["positive"] else None
        evidence = [f"classifier {model_id}: probability {finding['probability']:.2f} "
                    f"{'>=' if finding['positive'] else '<'} threshold {threshold:.2f}"]
        if region is not None:
            evidence.append(_region_evidence(region))
        if finding["label"] in prior_rows and prior.get("citation"):
            row = prior_rows[finding["label"]]
            evidence.append(f"{row['change']} since the {prior['citation']}: probability"
                            f" {row['prior_probability']:.2f} then")
        if finding["label"] == "Cardiomegaly" and ctr is not None:
            evidence.append(f"cardiothoracic ratio {ctr:.2f} from organ masks ({segmentation.get('model_id')})")
        findings.append({
            "label": finding["label"], "present": bool(finding["positive"]),
            "probability": _round(finding["probability"]), "threshold": _round(threshold),
            "side": region.get("side") if region else None, "zone": region.get("zone") if region else None,
            "source": f"classify:{model_id}", "evidence": evidence,
        })
    diagnoses = [{"disease": f["label"], "confidence": f["probability"], "evidence": list(f["evidence"])}
                 for f in sorted((f for f in findings if f["present"]),
                                 key=lambda f: (-(f["probability"] or 0.0), f["label"]))]
    lesions = []
    for region in regions:
        values = {}
        area = region.get("area")
        if isinstance(area, dict) and area.get("value") is not None:
            values["region_area"] = {"value": _round(area["value"], 2), "unit": area.get("unit") or "px"}
        if region.get("region_probability") is not None:
            values["zone_probability"] = {"value": _round(region["region_probability"]), "unit": "probability"}
        lesions.append({"annotation_id": region["annotation_id"], "label": region["label"],
                        "location": region.get("location"), "side": region.get("side"), "zone": region.get("zone"),
                        "measurements": values})
    management_out = (outputs.get("management_rules") or {}).get("management") or {}
    management = {"follow_up_months": management_out.get("follow_up_months"),
                  "suggestion": management_out.get("suggestion") or "No follow-up rule was evaluated.",
                  "source": management_out.get("source") or "none"}
    warnings = []
    for warning in (outputs.get("quality_check") or {}).get("warnings", []) + segmentation.get("quality_warnings", []):
        if warning["code"] not in {w["code"] for w in warnings}:
            warnings.append({"code": warning["code"], "message": warning["message"], "source": "quality_check"})
    for flag in flags or []:
        warnings.append({"code": flag["code"], "message": flag["message"], "source": f"quality_gate:{flag['action']}"})
    trained = (facts.get("models") or {}).get("trained")
    image = {"image_id": info.get("image_id") or facts.get("image", {}).get("image_id"),
             "type": info.get("type") or facts.get("image", {}).get("type") or "Other",
             "modality": info.get("modality"), "view": info.get("view"), "laterality": info.get("laterality")}
    patient = info.get("patient") or {"age": None, "sex": None, "history": None}
    report = {
        "schema_version": SCHEMA_VERSION,
        "case_id": case_id(session_id, [image["image_id"]] if image["image_id"] else []),
        "session_id": session_id,
        "generated_at": generated_at,
        "patient": {"age": patient.get("age"), "sex": patient.get("sex"), "history": patient.get("history")},
        "images": [image],
        "findings": findings,
        "diagnoses": diagnoses,
        "lesions": lesions,
        "measurements": [{"name": m["name"], "value": m["value"], "unit": m["unit"]} for m in measured],
        "management": management,
        "quality": {"warnings": warnings},
        "reasoning": "",
        "narrative": None,
        "model_trained": bool(trained) if trained is not None else False,
        "disclaimer": DISCLAIMER if trained else f"{DISCLAIMER} {UNTRAINED_BANNER if trained is False else NO_MODEL_NOTE}",
    }
    report["reasoning"] = qualified(_reasoning(report, info, classification, segmentation, regions, management_out),
                                    trained)
    return report


def _region_evidence(region: dict[str, Any]) -> str:
    text = f"region analysis: {region.get('location') or 'location unknown'}"
    if region.get("region_probability") is not None:
        text += f" (zone probability {region['region_probability']:.2f})"
    return text + f", annotation {region['annotation_id']}"


def _reasoning(report: dict[str, Any], info: dict[str, Any], classification: dict[str, Any],
               segmentation: dict[str, Any], regions: list[dict[str, Any]], management: dict[str, Any]) -> str:
    """A deterministic account of how the report follows from the tool outputs."""
    parts = []
    if info:
        parts.append(f"Image {info.get('type')} ({info.get('modality') or 'modality unknown'}), "
                     f"view {info.get('view') or 'unknown'}.")
    warnings = [w["code"] for w in report["quality"]["warnings"] if w["source"] == "quality_check"]
    flags = [w["code"] for w in report["quality"]["warnings"] if w["source"].startswith("quality_gate")]
    parts.append("Image quality: " + ("; ".join(warnings) if warnings else "no warnings") + ".")
    if flags:
        parts.append("Quality gate flags: " + "; ".join(flags) + ".")
    if classification:
        present = [d["disease"] for d in report["diagnoses"]]
        parts.append(f"Classifier {classification.get('model_id')} at threshold {classification.get('threshold'):.2f}: "
                     + (", ".join(present) if present else "no finding") + " above threshold.")
    else:
        parts.append("No classification was available.")
    ctr = (segmentation.get("ctr") or {}).get("ratio")
    if ctr is not None:
        parts.append(f"Organ segmentation gave a cardiothoracic ratio of {ctr:.2f}.")
    for region in regions:
        parts.append(f"{region['label']} placed at {region.get('location') or 'an undetermined location'}.")
    if management:
        parts.append(f"Follow-up rule {management.get('rule_id') or 'default'} applies.")
    return " ".join(parts)


def models_untrained(report: dict[str, Any]) -> bool:
    """Whether the report rests on untrained models (not merely on no model: its disclaimer says which)."""
    return report.get("model_trained") is False and UNTRAINED_BANNER in (report.get("disclaimer") or "")
