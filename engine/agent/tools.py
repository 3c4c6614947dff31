"""The tool registry: every tool the agent may call, with id, version, roles and schema.

A tool wraps Engine methods (and a few analysis functions) and returns a
:class:`ToolResult`: a JSON output that carries ids and paths, never pixels (masks
travel by ``mask_id``, regions by ``annotation_id``), the confidence it has in that
output, and the models that made it (id + sha256 + trained). Pipelines name tools
by id; :meth:`ToolRegistry.check_args` validates their arguments on load, and
``get_agent_capabilities`` lists the registry with versions.

Tools never catch errors: the workflow's tool-call boundary records any exception as
a failed, traced call (retry, fallback or stop, as the pipeline says).
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from engine.agent import management, zones
from engine.agent.guard import check_narrative
from engine.agent.toolkit import Tool, ToolCall, ToolRegistry, ToolResult
from engine.agent.volume_tools import volume_tools
from engine.analysis.classify import classify as run_classifier
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.crops import crop, square_box

if TYPE_CHECKING:
    pass

#: Style of "also check here" annotations (the spec's suggestion style: dashed yellow).
SUGGESTION_STYLE = {"color": "#FFE66D", "opacity": 0.6, "strokeWidth": 2, "fill": False, "lineDash": [5, 5],
                    "kind": "suggestion"}
SUGGESTION_LAYER = "ai_suggestions"
#: Zone crops are block-averaged down to at most about this many pixels a side before
#: the classifier's own resize to 224: twice its input keeps its anti-aliased resize
#: meaningful and cuts preprocessing of a 900-pixel zone from ~95 ms to ~15 ms.
ZONE_SCAN_SIDE = 448
FINDING_LAYER = "ai_agent"


# -- helpers -------------------------------------------------------------------------------
def _model(described: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not described:
        return []
    return [{"id": described["id"], "sha256": described.get("sha256"), "trained": described.get("trained"),
             "task": described.get("task")}]


def _round(value: Any, digits: int = 4) -> Any:
    return round(float(value), digits) if isinstance(value, int | float) and not isinstance(value, bool) else value


def patient_facts(image: dict[str, Any], history: str | None) -> dict[str, Any]:
    """De-identified patient facts: age in years, sex, history (names and ids scrubbed)."""
    patient = image.get("patient") or {}
    metadata = image.get("metadata") or {}
    age = _age(patient, metadata)
    sex = str(patient.get("PatientSex") or "").upper()[:1] or None
    sex = {"M": "M", "F": "F", "O": "O"}.get(sex) if sex else None
    return {"age": age, "sex": sex, "history": _scrub(history, patient)}


def _age(patient: dict[str, Any], metadata: dict[str, Any]) -> int | None:
    text = str(patient.get("PatientAge") or metadata.get("PatientAge") or "")
    match = re.fullmatch(r"(\d{1,3})([DWMY])", text.strip())
    if match:
        value, unit = int(match.group(1)), match.group(2)
        return value if unit == "Y" else 0
    birth = _date(patient.get("PatientBirthDate"))
    study = _date(patient.get("StudyDate") or metadata.get("StudyDate"))
    if birth and study and study >= birth:
        return study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
    return None


def _date(text: Any) -> date | None:
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", str(text or "").strip())
    if not match:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


#: Longest clinical history kept in the report (characters).
HISTORY_MAX_CHARS = 500


def _scrub(history: str | None, patient: dict[str, Any]) -> str | None:
    """The user's clinical history with the patient's name parts and ids replaced."""
    if not history or not isinstance(history, str):
        return None
    tokens = set()
    for key in ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber"):
        for part in re.split(r"[\^\s,]+", str(patient.get(key) or "")):
            if len(part) >= 2:
                tokens.add(part)
    text = history
    for token in sorted(tokens, key=len, reverse=True):
        text = re.sub(re.escape(token), "[redacted]", text, flags=re.IGNORECASE)
    return text.strip()[:HISTORY_MAX_CHARS] or None


# -- orchestrator ------------------------------------------------------------------------
def image_info(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Image type, modality, view and laterality from the stored header facts."""
    image = call.services.store.get_image(call.image_id, session_id=call.session_id)
    metadata = image.get("metadata") or {}
    view = metadata.get("ViewPosition") or None
    laterality = metadata.get("ImageLaterality") or metadata.get("Laterality") or None
    frontal = {"PA": True, "AP": True, "LL": False, "RL": False, "LAT": False, "LATERAL": False}.get(
        str(view or "").upper())
    spacing = metadata.get("pixel_spacing") or {}
    history = call.context.get("clinical_history")
    output = {
        "image_id": image["id"], "type": image["type"], "type_source": image["type_source"],
        "type_confidence": _round(metadata.get("type_confidence")), "type_reason": metadata.get("type_reason"),
        "modality": image.get("modality"), "view": view, "laterality": laterality, "frontal": frontal,
        "body_part": metadata.get("BodyPartExamined"), "rows": image["rows"], "columns": image["columns"],
        "pixel_spacing_mm": spacing.get("pixel_spacing_mm"), "spacing_source": spacing.get("source", "none"),
        "patient": patient_facts(image, history if isinstance(history, str) else None),
    }
    confidence = 1.0 if image["type_source"] == "user" else _round(metadata.get("type_confidence"))
    reasoning = (f"{image['type']} ({'set by the user' if image['type_source'] == 'user' else 'detected'}), "
                 f"view {view or 'unknown'}, laterality {laterality or 'not stated'}")
    return ToolResult(output, confidence=confidence, reasoning=reasoning)


# -- image analysis ------------------------------------------------------------------------
def quality_check(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Ingest quality warnings (inversion, contrast, clipping, view) of the image."""
    image = call.services.store.get_image(call.image_id, session_id=call.session_id)
    quality = (image.get("metadata") or {}).get("quality") or {}
    warnings = [{"code": w["code"], "message": w["message"], "method": w.get("method")}
                for w in quality.get("warnings", [])]
    metrics = quality.get("metrics") or {}
    output = {"warnings": warnings, "count": len(warnings), "view": metrics.get("view")}
    reasoning = "no quality warnings" if not warnings else "quality warnings: " + ", ".join(w["code"] for w in warnings)
    return ToolResult(output, reasoning=reasoning)


def classify(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Whole-image multi-label classification (Engine.analyze_image, classify only)."""
    threshold = float(args.get("threshold", 0.5))
    result = call.services.analysis.analyze_image(call.session_id, call.image_id, classify=True, detect=False, segment=False,
                                       generate_report=False, classification_threshold=threshold,
                                       force=bool(args.get("force", False)))
    classification = result["classification"]
    findings = [{"label": f["label"], "probability": _round(f["probability"]), "positive": f["positive"]}
                for f in classification["findings"]]
    positive = [f for f in findings if f["positive"]]
    confidence = max(f["probability"] for f in positive) if positive else \
        _round(1.0 - max((f["probability"] for f in findings), default=0.0))
    output = {"analysis_id": result["analysis_id"], "model_id": classification["model"]["id"],
              "threshold": threshold, "calibration": classification["calibration"],
              "positive": [f["label"] for f in positive], "findings": findings,
              "model_trained": classification["model_trained"]}
    top = ", ".join(f"{f['label']} {f['probability']:.2f}" for f in positive[:5]) or "none"
    return ToolResult(output, confidence=confidence, models=_model(classification["model"]),
                      reasoning=f"{len(positive)} finding(s) at or above {threshold:.2f}: {top}")


def _stored_segmentation(call: ToolCall) -> dict[str, Any] | None:
    """The latest stored organ segmentation of the image by the pack's current model."""
    entry = call.services.models.entry("organ_seg")
    if entry is None:
        return None
    for row in reversed(call.services.store.list_analyses(call.session_id, call.image_id)):
        segmentation = (row["result"] or {}).get("segmentation") or {}
        if segmentation.get("status") == "ok" and (segmentation.get("model") or {}).get("id") == entry.id \
                and len(segmentation.get("organs") or []) == len(entry.labels):
            if call.services.store.list_masks(call.session_id, call.image_id, source="organ_seg", analysis_id=row["id"]):
                return {"analysis_id": row["id"], "segmentation": segmentation}
    return None


def segment_organs(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Chest organ segmentation with the cardiothoracic ratio; masks stay in the store by id."""
    reused = _stored_segmentation(call) if args.get("reuse", True) and not args.get("organs") else None
    if reused is not None:
        analysis_id, segmentation = reused["analysis_id"], reused["segmentation"]
    else:
        result = call.services.analysis.analyze_image(call.session_id, call.image_id, classify=False, detect=False, segment=True,
                                           generate_report=False, segment_organs=args.get("organs"),
                                           force=bool(args.get("force", False)))
        analysis_id, segmentation = result["analysis_id"], result["segmentation"]
        if segmentation.get("status") != "ok":
            raise MedVisionError(ErrorCode.MODEL_NOT_FOUND, segmentation.get("reason", "organ segmentation unavailable"))
    organs = [{"label": o["label"], "mask_id": o.get("mask_id"), "area_px": o["area_px"], "area_cm2": o.get("area_cm2"),
               "bbox": o["bbox"], "mean_probability": o.get("mean_probability")} for o in segmentation["organs"]]
    ctr = segmentation.get("ctr") or {}
    quality = segmentation.get("quality") or {}
    key = {o["label"]: o for o in organs}
    probabilities = [key[k]["mean_probability"] for k in ("Left Lung", "Right Lung", "Heart")
                     if k in key and key[k]["mean_probability"] is not None]
    output = {"analysis_id": analysis_id, "reused": reused is not None, "model_id": segmentation["model"]["id"],
              "organs": organs,
              "ctr": {k: ctr.get(k) for k in ("status", "ratio", "threshold", "positive", "cardiac_width_px",
                                              "thoracic_width_px", "cardiac_width_mm", "thoracic_width_mm",
                                              "view_position", "note", "reason") if k in ctr},
              "quality_warnings": [{"code": w["code"], "message": w["message"], "method": w.get("method")}
                                   for w in quality.get("warnings", [])],
              "spacing": segmentation.get("spacing"), "model_trained": segmentation["model_trained"]}
    ratio = ctr.get("ratio")
    reasoning = f"{len(organs)} organ masks ({'reused analysis ' + analysis_id if reused else 'new'}); " + (
        f"CTR {ratio:.2f}" if isinstance(ratio, int | float) else f"CTR unavailable ({ctr.get('reason')})")
    return ToolResult(output, confidence=_round(sum(probabilities) / len(probabilities)) if probabilities else None,
                      models=_model(segmentation["model"]), reasoning=reasoning)


def similar_cases(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Similar reference cases (visual RAG); skipped when the library is empty."""
    stats = call.services.similar.library.stats()
    if not stats["cases"]:
        return ToolResult({"cases": 0, "skipped": "the reference library is empty"}, skipped=True,
                          reasoning="reference library is empty: no similar-case search")
    found = call.services.similar.search_similar_cases(call.session_id, call.image_id, top_k=int(args.get("top_k", 5)),
                                             include_reports=False)
    results = [{"case_id": r.get("case_id"), "similarity": _round(r.get("similarity")), "labels": r.get("labels")}
               for r in found["results"]]
    output = {"cases": stats["cases"], "results": results,
              "aggregated_labels": {k: _round(v) for k, v in (found.get("aggregated_labels") or {}).items()}
              if isinstance(found.get("aggregated_labels"), dict) else found.get("aggregated_labels")}
    top = results[0]["similarity"] if results else None
    return ToolResult(output, confidence=top, models=_model(found.get("model")),
                      reasoning=f"{len(results)} similar case(s) of {stats['cases']}")


# -- specialist ------------------------------------------------------------------------------
def zone_scan(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Classify each lung zone's crop, so findings can be placed on a side and zone."""
    services = call.services
    image, decoded = services.images.decoded_image(call.session_id, call.image_id)
    masks, source = (None, "geometric") if args.get("geometric") else _lung_masks(call)
    boxes, method = zones.lung_zone_boxes(masks, decoded.rows, decoded.columns, source)
    wanted = {c["label"] for c in (call.facts.get("candidates") or {}).get("items", [])}
    scanned, model = [], None
    for entry in boxes:
        box = square_box(entry["box"], decoded.rows, decoded.columns)
        result = run_classifier(crop(decoded, box, max_side=ZONE_SCAN_SIDE), services.models, force=True)
        model = result["model"]
        probabilities = {f["label"]: _round(f["probability"]) for f in result["findings"]
                         if not wanted or f["label"] in wanted}
        scanned.append(entry | {"probabilities": probabilities})
    output = {"method": method, "zones": scanned, "labels": sorted(wanted),
              "model_id": model["id"] if model else None}
    return ToolResult(output, models=_model(model),
                      reasoning=f"{len(scanned)} lung zones classified ({method})")


def _lung_masks(call: ToolCall) -> tuple[dict[str, Any] | None, str]:
    """Lung masks for zone boxes and where they came from: the organ model's when it is trained,
    else the lung fields found by image processing (untrained masks are noise and are not read)."""
    analysis = call.services.analysis
    if analysis.organ_model_trained():
        return analysis.organ_masks(call.session_id, call.image_id, run=False), "organ_masks"
    fields = analysis.lung_fields(call.session_id, call.image_id)
    masks = {label: mask for label, mask in (("Right Lung", fields.right), ("Left Lung", fields.left))
             if mask is not None}
    return masks, "lung_fields_classical"


def _target_masks(call: ToolCall, geometric: bool) -> dict[str, Any] | None:
    """Organ masks for a heart/mediastinum/diaphragm box: only a trained organ model's."""
    if geometric or not call.services.analysis.organ_model_trained():
        return None
    return call.services.analysis.organ_masks(call.session_id, call.image_id, run=False)


def _locate(call: ToolCall, item: dict[str, Any], geometric: bool, threshold: float) -> dict[str, Any]:
    """Side, zone and box for one candidate finding."""
    services = call.services
    _, decoded = services.images.decoded_image(call.session_id, call.image_id)
    target, label = item["target"], item["label"]
    if target in zones.TARGET_MASKS:
        box, method = zones.target_box(target, _target_masks(call, geometric), decoded.rows, decoded.columns)
        return {"box": box, "method": method, "side": None, "zone": None, "probability": None}
    scan = call.outputs.get("zone_scan") or {}
    scanned = [z for z in scan.get("zones", []) if z["zone"] in item["zones"] and label in z["probabilities"]]
    if geometric or not scanned:
        masks, source = (None, "geometric") if geometric else _lung_masks(call)
        boxes, method = zones.lung_zone_boxes(masks, decoded.rows, decoded.columns, source)
        chosen = [b for b in boxes if b["zone"] in item["zones"]]
        return {"box": zones.union_box([b["box"] for b in chosen]), "method": method, "side": None,
                "zone": item["zones"][0] if len(item["zones"]) == 1 else None, "probability": None}
    best = max(scanned, key=lambda z: (z["probabilities"][label], z["side"] == "right"))
    other = [z for z in scanned if z["side"] != best["side"] and z["zone"] == best["zone"]]
    bilateral = bool(other) and best["probabilities"][label] >= threshold and \
        other[0]["probabilities"][label] >= threshold
    boxes = [best["box"]] + ([other[0]["box"]] if bilateral else [])
    return {"box": zones.union_box(boxes) if bilateral else best["box"], "method": best["method"],
            "side": "bilateral" if bilateral else best["side"], "zone": best["zone"],
            "probability": best["probabilities"][label]}


def region_analysis(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Analyse the zone of one candidate finding (Engine.analyze_selected_region) as an AI annotation."""
    item = call.item or {}
    if not item.get("label"):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "region_analysis runs per candidate finding (foreach)")
    if item.get("target") == "none":
        return ToolResult({"label": item["label"], "skipped": "no region is analysed for this finding"},
                          skipped=True, reasoning=f"{item['label']}: no region to analyse")
    threshold = float((call.outputs.get("classify") or {}).get("threshold", 0.5))
    where = _locate(call, item, bool(args.get("geometric")), threshold)
    actions = list(args.get("actions") or ["describe"])
    region = call.services.regions.analyze_selected_region(call.session_id, {"type": "bbox", "coordinates": where["box"]},
                                                 question=item["label"], actions=actions, image_id=call.image_id,
                                                 answer=False)  # the label names the annotation: no question
    anatomy = region["region_info"]["anatomy"]
    area = region["region_info"]["area"]
    region_probability = where["probability"]
    if "classification" in region:
        for finding in region["classification"].get("findings", []):
            if finding["label"] == item["label"]:
                region_probability = _round(finding["probability"])
    side = where["side"]
    if side is None and item.get("target") == "lung" and anatomy.get("side") in ("left", "right"):
        side = anatomy["side"]  # no zone scan: the lung the box lies in
    output = {"label": item["label"], "annotation_id": region["annotation_id"], "analysis_id": region["analysis_id"],
              "bbox": where["box"], "method": where["method"], "side": side, "zone": where["zone"],
              "location": anatomy.get("primary"), "region_probability": region_probability,
              "whole_image_probability": item.get("probability"), "threshold": threshold,
              "area": {"value": _round(area.get("value"), 2), "unit": area.get("unit")} if isinstance(area, dict) else None,
              "description": region.get("description")}
    scan_model = (call.outputs.get("zone_scan") or {}).get("model_id")
    models = _pack_model(call, scan_model) if where["probability"] is not None and scan_model else []
    if "classification" in region:
        models = _model(region["classification"].get("model"))
    return ToolResult(output, confidence=region_probability, models=models,
                      reasoning=f"{item['label']}: {anatomy.get('primary')}"
                                + (f", zone probability {region_probability:.2f}" if region_probability is not None else ""))


def _pack_model(call: ToolCall, model_id: str | None) -> list[dict[str, Any]]:
    """The trace's model record of a pack entry by id (none when the pack lacks it)."""
    if not model_id:
        return []
    try:
        return _model(call.services.models.pack.get(model_id).describe())
    except MedVisionError:
        return []


def user_region(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Analyse the region the user selected on the canvas (context.user_selection)."""
    selection = call.context.get("user_selection")
    if not isinstance(selection, dict):
        return ToolResult({"skipped": "no user selection"}, skipped=True, reasoning="no user selection")
    question = call.context.get("question") or call.facts.get("task") or "user selection"
    region = call.services.regions.analyze_selected_region(call.session_id, selection, question=str(question)[:200],
                                                 actions=list(args.get("actions") or ["describe", "classify"]),
                                                 image_id=call.image_id, check=check_narrative)
    classification = region.get("classification") or {}
    top = (classification.get("findings") or [None])[0]
    output = {"annotation_id": region["annotation_id"], "analysis_id": region["analysis_id"],
              "bbox": region["region_info"]["bbox"], "location": region["region_info"]["anatomy"].get("primary"),
              "side": region["region_info"]["anatomy"].get("side"), "description": region.get("description"),
              "top_finding": {"label": top["label"], "probability": _round(top["probability"])} if top else None}
    return ToolResult(output, confidence=output["top_finding"]["probability"] if top else None,
                      models=_model(classification.get("model")),
                      reasoning=f"user region: {output['location']}")


def measurements(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Measurements from the organ segmentation: cardiothoracic ratio, widths, lung areas."""
    seg = call.outputs.get("segment_organs")
    if not seg:
        return ToolResult({"measurements": [], "skipped": "no organ segmentation"}, skipped=True,
                          reasoning="no organ segmentation to measure")
    values: list[dict[str, Any]] = []
    ctr = seg.get("ctr") or {}
    if ctr.get("status") == "ok":
        values.append({"name": "cardiothoracic_ratio", "value": _round(ctr["ratio"]), "unit": "ratio"})
        for name in ("cardiac_width", "thoracic_width"):
            mm, px = ctr.get(f"{name}_mm"), ctr.get(f"{name}_px")
            if mm is not None:
                values.append({"name": name, "value": _round(mm, 1), "unit": "mm"})
            elif px is not None:
                values.append({"name": name, "value": int(px), "unit": "px"})
    for organ in seg.get("organs", []):
        if organ["label"] in ("Left Lung", "Right Lung", "Heart"):
            name = organ["label"].lower().replace(" ", "_") + "_area"
            if organ.get("area_cm2") is not None:
                values.append({"name": name, "value": _round(organ["area_cm2"], 2), "unit": "cm2"})
            else:
                values.append({"name": name, "value": int(organ["area_px"]), "unit": "px"})
    return ToolResult({"measurements": values, "source_analysis_id": seg["analysis_id"]},
                      models=_pack_model(call, seg["model_id"]),
                      reasoning=f"{len(values)} measurement(s) from organ masks")


# -- follow-up -----------------------------------------------------------------------------
#: A finding whose probability moved at least this much since the prior is listed as changed.
PRIOR_DELTA = 0.1


def compare_prior(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """The most recent relevant prior in the store (same Patient ID and issuer, modality, body part),
    compared with this image: each finding then and now, the cardiothoracic ratio; cited by the report."""
    priors = call.services.priors
    try:
        held = priors.held(priors.facts(call.session_id), count=1)
    except MedVisionError as exc:
        return ToolResult({"prior": None, "skipped": exc.message}, skipped=True, reasoning=exc.message)
    if not held:
        return ToolResult({"prior": None, "skipped": "no prior study of this patient in the store"}, skipped=True,
                          reasoning="no prior study of this patient in the store")
    prior = held[0]
    compared = call.services.compare.compare(call.session_id, prior["session_id"], image_id=call.image_id,
                                             register=False, analyze=True)
    findings = compared["findings"]
    changed = [row for row in findings["findings"]
               if row["change"] in ("new", "resolved") or abs(row["delta"] or 0.0) >= args.get("min_delta", PRIOR_DELTA)]
    citation = (f"prior study of {prior['study_date']} (Study Instance UID {prior['study_uid']}),"
                f" classified by {findings['prior_model']}")
    output = {"prior": {k: prior.get(k) for k in ("session_id", "study_uid", "study_date", "modality", "body_part")},
              "citation": citation, "changed": changed[:10], "ctr": compared["measurements"]["ctr"],
              "same_model": findings["same_model"], "note": findings["note"],
              "analysis_ids": compared["analysis_ids"]}
    return ToolResult(output, reasoning=f"compared with the {citation}: {len(changed)} finding(s) changed",
                      models=_pack_model(call, findings["current_model"]))


def management_rules(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Age, history and findings -> a management suggestion from the rules table, with its source."""
    present = (call.facts.get("findings") or {}).get("items", [])
    facts = {k: call.facts.get(k) for k in ("patient", "measurements", "image", "findings", "lesions")}
    evaluated = management.evaluate(facts, present)
    management_ = evaluated["management"]
    return ToolResult({"management": management_, "matched": evaluated["matched"]},
                      reasoning=f"rule {management_.get('rule_id') or 'default'}: {management_['suggestion']}")


# -- report ----------------------------------------------------------------------------------
def build_report(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """The structured report, deterministically from the tool outputs (schema-validated)."""
    from engine.agent.report import build_report as build
    from engine.agent.report import validate_report

    report = build(call.facts, call.outputs, session_id=call.session_id, generated_at=call.facts["run"]["now"],
                   flags=call.facts.get("flags", {}).get("items", []))
    validate_report(report)
    summary = {"findings_present": [f["label"] for f in report["findings"] if f["present"]],
               "diagnoses": len(report["diagnoses"]), "lesions": len(report["lesions"]),
               "measurements": len(report["measurements"]), "management": report["management"],
               "model_trained": report["model_trained"]}
    return ToolResult({"report": report, "summary": summary},
                      reasoning=f"report with {len(report['diagnoses'])} diagnosis(es), schema valid")


def write_narrative(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """The narrative (findings + impression) by the LLM under a grammar, checked by the guard."""
    from engine.agent.narrative import write_narrative as write

    report = (call.outputs.get("build_report") or {}).get("report")
    if report is None:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "write_narrative needs build_report first")
    written = write(report, call.llm, seed=call.seed)
    attempts = written.get("attempts") or []
    events = [{"kind": "narrative_attempt", "attempt": i + 1, "output": _attempt_summary(a)}
              for i, a in enumerate(attempts)]
    guard = written.get("guard") or {}
    models = _llm_models(call.llm) if call.llm is not None and (written.get("source") == "llm" or attempts) else []
    output = {"narrative": written["narrative"], "source": written["source"],
              "guard": {"status": guard.get("status"), "violations": guard.get("violations", [])},
              "attempts": len(attempts)}
    return ToolResult(output, models=models, events=events,
                      reasoning=f"narrative from {written['source']}, guard {guard.get('status')}")


def template_narrative(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """The deterministic template narrative (fallback of write_narrative)."""
    from engine.agent.narrative import template_narrative as template

    report = (call.outputs.get("build_report") or {}).get("report")
    if report is None:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "template_narrative needs build_report first")
    return ToolResult({"narrative": template(report), "source": "template",
                       "guard": {"status": "fallback", "violations": []}, "attempts": 0},
                      reasoning="template narrative")


def _llm_models(llm: Any) -> list[dict[str, Any]]:
    if llm is None:
        return []
    described = llm.describe()
    model = described.get("model") if isinstance(described.get("model"), dict) else described
    return [{"id": model.get("id"), "sha256": model.get("sha256"), "trained": model.get("trained", True),
             "task": model.get("task", "llm")}]


def _attempt_summary(attempt: Any) -> dict[str, Any]:
    """An attempt as the trace keeps it: its text, violations and timings (small, JSON)."""
    if not isinstance(attempt, dict):
        return {"value": str(attempt)[:500]}
    keep = {}
    for key, value in attempt.items():
        if isinstance(value, str):
            keep[key] = value[:2000]
        elif isinstance(value, int | float | bool) or value is None:
            keep[key] = value
        elif isinstance(value, list | dict):
            keep[key] = value
    return keep


def suggest_regions(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Related-region suggestions ("also check here") as AI annotations in the suggestion style."""
    settings = dict(call.pipeline.auto_suggest)
    override = call.context.get("auto_suggest")
    if isinstance(override, bool):
        settings["enabled"] = override
    elif isinstance(override, dict):
        settings |= {k: v for k, v in override.items() if k in ("enabled", "min_confidence", "max_suggestions")}
    settings |= {k: v for k, v in args.items() if k in ("min_confidence", "max_suggestions")}
    if not settings.get("enabled", True):
        return ToolResult({"suggestions": [], "skipped": "suggestions are turned off"}, skipped=True,
                          reasoning="suggestions turned off")
    minimum, limit = float(settings["min_confidence"]), int(settings["max_suggestions"])
    scan = call.outputs.get("zone_scan") or {}
    lesions = call.outputs.get("region_analysis") or {}
    taken = {(item.get("label"), item.get("side"), item.get("zone")) for item in lesions.get("items", [])}
    present = {f["label"] for f in (call.facts.get("findings") or {}).get("items", [])}
    options = []
    for entry in scan.get("zones", []):
        for label, probability in entry["probabilities"].items():
            if label in present and probability >= minimum and (label, entry["side"], entry["zone"]) not in taken \
                    and (label, "bilateral", entry["zone"]) not in taken:
                options.append((probability, label, entry))
    options.sort(key=lambda o: (-o[0], o[1], o[2]["side"], o[2]["zone"]))
    suggestions = []
    for probability, label, entry in options[:limit]:
        note = f"Also check here: {label.replace('_', ' ').lower()} possible ({entry['side']} {entry['zone']} zone)"
        added = call.services.annotations.add(call.session_id, call.image_id, "bbox", entry["box"],
                                           label=f"also check: {label}", notes=note, source="ai",
                                           confidence=float(probability), layer=SUGGESTION_LAYER,
                                           style=SUGGESTION_STYLE)
        suggestions.append({"annotation_id": added["annotation_id"], "label": label, "side": entry["side"],
                            "zone": entry["zone"], "bbox": entry["box"], "confidence": probability, "note": note})
    return ToolResult({"suggestions": suggestions, "min_confidence": minimum, "max_suggestions": limit,
                       "considered": len(options)},
                      confidence=max((s["confidence"] for s in suggestions), default=None),
                      reasoning=f"{len(suggestions)} related region(s) at or above {minimum:.2f}")


# -- the registry -----------------------------------------------------------------------------
_THRESHOLD = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}


def _schema(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties}


def builtin_tools() -> list[Tool]:
    """The tools the packaged pipelines use."""
    cxr = ("CXR",)
    return [
        Tool("image_info", "1.0.0", ("orchestrator",), "Image type, modality, view and laterality from the header",
             image_info, mcp_tools=("get_session_status",)),
        Tool("quality_check", "1.0.0", ("orchestrator", "image_analysis"),
             "Image quality warnings (inversion, contrast, clipping, view)", quality_check,
             mcp_tools=("add_image_to_session",)),
        Tool("classify", "1.0.0", ("image_analysis",), "Whole-image multi-label chest classifier (DenseNet-121)",
             classify, _schema({"threshold": _THRESHOLD, "force": {"type": "boolean"}}), cxr,
             ("analyze_image",), writes=True),
        Tool("segment_organs", "1.0.0", ("image_analysis",),
             "Chest organ segmentation (PSPNet) with cardiothoracic ratio; reuses a stored one",
             segment_organs, _schema({"organs": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                      "reuse": {"type": "boolean"}, "force": {"type": "boolean"}}),
             cxr, ("analyze_image",), writes=True),
        Tool("similar_cases", "1.0.0", ("image_analysis",), "Similar reference cases (visual RAG); skips an empty library",
             similar_cases, _schema({"top_k": {"type": "integer", "minimum": 1, "maximum": 50}}),
             mcp_tools=("search_similar_cases",)),
        Tool("zone_scan", "1.0.0", ("specialist",), "Classify each lung zone to place findings on a side and zone",
             zone_scan, _schema({"geometric": {"type": "boolean"}}), cxr, ("analyze_selected_region",),
             consumes=("segment_organs", "classify")),
        Tool("region_analysis", "1.0.0", ("specialist",),
             "Analyse the zone of one candidate finding; keeps it as an AI annotation",
             region_analysis, _schema({"geometric": {"type": "boolean"},
                                       "actions": {"type": "array", "minItems": 1,
                                                   "items": {"enum": ["describe", "measure", "classify", "compare"]}}}),
             cxr, ("analyze_selected_region",), consumes=("zone_scan", "segment_organs", "classify"),
             writes=True, per_item=True),
        Tool("user_region", "1.0.0", ("specialist",), "Analyse the region the user selected on the canvas",
             user_region, _schema({"actions": {"type": "array", "minItems": 1,
                                               "items": {"enum": ["describe", "measure", "classify", "compare"]}}}),
             mcp_tools=("analyze_selected_region",), writes=True),
        Tool("measurements", "1.0.0", ("specialist",), "Cardiothoracic ratio, widths and organ areas from the masks",
             measurements, image_types=cxr, mcp_tools=("analyze_image",), consumes=("segment_organs",)),
        Tool("compare_prior", "1.0.0", ("follow_up",),
             "The most recent relevant prior in the store compared with this image (findings then and now, CTR)",
             compare_prior, _schema({"min_delta": {"type": "number", "minimum": 0, "maximum": 1}}), cxr,
             ("list_priors", "compare_with_prior"), consumes=("classify",), writes=True),
        Tool("management_rules", "1.0.0", ("follow_up",),
             "Follow-up suggestion from the rules table (age, history, findings), with its source",
             management_rules, consumes=("classify", "region_analysis", "measurements", "image_info")),
        Tool("build_report", "1.0.0", ("report",), "Structured report (report.schema.json) from the tool outputs",
             build_report, consumes=("image_info", "quality_check", "classify", "segment_organs", "region_analysis",
                                     "measurements", "management_rules", "volume_info", "segment_volume",
                                     "volume_measurements")),
        Tool("write_narrative", "1.0.0", ("report",), "Narrative by the language model, checked by the guard",
             write_narrative, consumes=("build_report",)),
        Tool("template_narrative", "1.0.0", ("report",), "Deterministic template narrative",
             template_narrative, consumes=("build_report",)),
        Tool("suggest_regions", "1.0.0", ("report", "specialist"),
             "Related-region suggestions as AI annotations (min_confidence, max_suggestions)",
             suggest_regions, _schema({"min_confidence": {"type": "number", "minimum": 0, "maximum": 1},
                                       "max_suggestions": {"type": "integer", "minimum": 0, "maximum": 20}}),
             mcp_tools=("add_annotation",), consumes=("zone_scan", "region_analysis"), writes=True),
        *volume_tools(),
    ]


@lru_cache(maxsize=1)
def default_registry() -> ToolRegistry:
    """The registry with the built-in tools (shared, read-only)."""
    return ToolRegistry(builtin_tools())


def stable_hash(value: str) -> str:
    """A short stable digest (case ids)."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def elapsed_ms(since: float) -> float:
    """Milliseconds since ``since`` (a perf_counter value), rounded to 0.01."""
    return round((time.perf_counter() - since) * 1000, 2)
