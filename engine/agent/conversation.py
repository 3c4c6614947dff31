"""Questions about an image (``ask_about_image``), answered from the structured context.

The context is the image's latest completed agent report, else its latest stored
analyses (classification, organ segmentation) turned into a report of the same shape.
Each fact becomes a numbered source (``S1``...) naming the tool output it comes from
(tool id plus run, analysis or annotation id), and every answer cites the sources it
rests on.

With the pack's text language model the answer is written under a JSON grammar
(``{"answer", "sources"}``, sources limited to the listed ids) and checked by the
narrative guard; an answer that fails the grammar, cites nothing or fails the guard
is replaced by the deterministic answer, and the result says so. Without a language
model the deterministic answer is built from the facts the question names. A text
model cannot see pixels: without context (``include_context=False``) the answer says
so instead of guessing.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from engine.agent.guard import check_narrative, display_name, named_labels
from engine.agent.memory import ConversationMemory
from engine.agent.report import build_report, models_untrained
from engine.analysis.questions import compose_answer, guarded, parse_question
from engine.errors import ErrorCode, MedVisionError
from engine.store import now_iso
from engine.vocabulary import DISCLAIMER, UNTRAINED_OUTPUTS, qualified

if TYPE_CHECKING:
    from engine.services import Services

QUESTION_MAX_CHARS = 1000
#: The answer's length under the grammar; with the cited ids it fits ANSWER_MAX_TOKENS,
#: so the grammar closes the JSON before the token budget cuts it.
ANSWER_MAX_CHARS = 160
ANSWER_MAX_TOKENS = 100
#: Sources shown to the language model at most (the prompt stays short).
PROMPT_SOURCES = 24
_TOPICS = {
    "heart": ("heart", "cardiac", "cardiothoracic", "ctr", "cardiomegaly"),
    "where": ("where", "location", "located", "side", "zone", "which lung"),
    "follow_up": ("follow", "management", "recommend", "next step", "what should", "suggest"),
    "quality": ("quality", "exposure", "rotation", "rotated", "inverted", "contrast"),
}


def gather_context(services: Services, session_id: str, image_id: str) -> dict[str, Any]:
    """The report a question is answered from, where it came from, and its numbered sources."""
    runs = [r for r in services.store.list_agent_runs(session_id, status="completed") if r["image_id"] == image_id]
    report, origin = None, None
    for run in reversed(runs):
        row = services.store.get_agent_run(run["id"], session_id=session_id)
        if row["report"]:
            report, origin = row["report"], {"kind": "agent_run", "run_id": run["id"]}
            break
    if report is None:
        report, origin = _report_from_analyses(services, session_id, image_id)
    return {"report": report, "origin": origin, "sources": _sources(report, origin) if report else []}


def _report_from_analyses(services: Services, session_id: str, image_id: str) -> tuple[dict | None, dict | None]:
    classification = segmentation = None
    classify_id = segment_id = None
    for row in reversed(services.store.list_analyses(session_id, image_id)):
        result = row["result"] or {}
        if classification is None and (result.get("classification") or {}).get("status") == "ok" \
                and row["kind"] == "analyze_image":
            classification, classify_id = result["classification"], row["id"]
        if segmentation is None and (result.get("segmentation") or {}).get("status") == "ok":
            segmentation, segment_id = result["segmentation"], row["id"]
    if classification is None and segmentation is None:
        return None, None
    image = services.store.get_image(image_id, session_id=session_id)
    outputs: dict[str, Any] = {"image_info": {"image_id": image_id, "type": image["type"],
                                              "modality": image.get("modality"),
                                              "view": (image.get("metadata") or {}).get("ViewPosition"),
                                              "laterality": None, "patient": None}}
    models = []
    if classification is not None:
        outputs["classify"] = {"threshold": classification["threshold"], "model_id": classification["model"]["id"],
                               "positive": classification["positive"],
                               "findings": [{"label": f["label"], "probability": round(float(f["probability"]), 4),
                                             "positive": f["positive"]} for f in classification["findings"]]}
        models.append(classification["model_trained"])
    if segmentation is not None:
        ctr = segmentation.get("ctr") or {}
        outputs["segment_organs"] = {"model_id": segmentation["model"]["id"], "ctr": ctr, "quality_warnings": []}
        if ctr.get("status") == "ok":
            outputs["measurements"] = {"measurements": [{"name": "cardiothoracic_ratio",
                                                         "value": round(float(ctr["ratio"]), 4), "unit": "ratio"}]}
        models.append(segmentation["model_trained"])
    facts = {"models": {"trained": all(models) if models else None}, "image": outputs["image_info"]}
    report = build_report(facts, outputs, session_id=session_id, generated_at=now_iso())
    return report, {"kind": "analyses", "classify_analysis_id": classify_id, "segment_analysis_id": segment_id}


def _ref(origin: dict[str, Any], tool_id: str) -> str | None:
    if origin["kind"] == "agent_run":
        return origin["run_id"]
    return origin.get("segment_analysis_id") if tool_id in ("segment_organs", "measurements") \
        else origin.get("classify_analysis_id")


def _sources(report: dict[str, Any], origin: dict[str, Any]) -> list[dict[str, Any]]:
    """Numbered facts, each naming the tool output it rests on."""
    facts: list[dict[str, Any]] = []

    def add(tool_id: str, text: str, ref: str | None = None, **extra: Any) -> None:
        facts.append({"id": f"S{len(facts) + 1}", "tool_id": tool_id, "ref": ref or _ref(origin, tool_id),
                      "text": text} | extra)

    for finding in sorted(report["findings"], key=lambda f: (not f["present"], -(f["probability"] or 0))):
        where = " ".join(filter(None, [finding.get("side"), f"{finding['zone']} zone" if finding.get("zone") else None]))
        state = "present" if finding["present"] else "absent"
        text = f"{display_name(finding['label'])}: {state}" + (f", {where}" if where else "")
        if finding["probability"] is not None:
            text += f" (probability {finding['probability']:.2f}, threshold {finding['threshold']:.2f})"
        add("classify", text, label=finding["label"], present=finding["present"], probability=finding["probability"])
    for lesion in report["lesions"]:
        add("region_analysis", f"{display_name(lesion['label'])} region: {lesion.get('location') or 'location unknown'}"
            f" (annotation {lesion['annotation_id']})", ref=lesion["annotation_id"], label=lesion["label"])
    for measurement in report["measurements"]:
        add("measurements", f"{measurement['name'].replace('_', ' ')}: {measurement['value']} {measurement['unit']}",
            name=measurement["name"])
    management = report["management"]
    if management.get("source") not in (None, "none"):
        add("management_rules", f"follow-up: {management['suggestion']} (source: {management['source']})")
    warnings = report["quality"]["warnings"]
    add("quality_check", "quality: " + ("; ".join(w["message"] for w in warnings) if warnings else "no warnings"))
    if not report["findings"]:
        add("image_info", "no image analysis model ran on this image: no finding was assessed", untrained=True)
    elif not report["model_trained"]:
        add("classify", "the models are untrained development weights: results are not meaningful",
            untrained=True)
    return facts


def _topic(question: str) -> str | None:
    text = question.lower()
    for topic, words in _TOPICS.items():
        if any(re.search(rf"\b{re.escape(w)}", text) for w in words):
            return topic
    return None


def facts_answer(question: str, context: dict[str, Any]) -> dict[str, Any]:
    """The deterministic answer: the facts the question names, each cited."""
    sources = context["sources"]
    if not sources:
        return {"answer": "There is no analysis of this image yet: run analyze_image or invoke_medical_agent first.",
                "sources": [], "confidence": None}
    by_label = {s["label"]: s for s in sources if s["tool_id"] == "classify" and "label" in s}
    labels = [label for label in named_labels(question) | set(parse_question(question)["labels"])
              if label in by_label]
    topic = _topic(question)
    cited: list[dict[str, Any]] = []
    if labels:
        cited = [by_label[label] for label in sorted(labels)]
        cited += [s for s in sources if s["tool_id"] == "region_analysis" and s.get("label") in labels]
    elif topic == "heart":
        cited = [s for s in sources if s.get("name") == "cardiothoracic_ratio" or s.get("label") == "Cardiomegaly"]
    elif topic == "where":
        cited = [s for s in sources if s["tool_id"] == "region_analysis"] or \
            [s for s in sources if s.get("present")][:3]
    elif topic == "follow_up":
        cited = [s for s in sources if s["tool_id"] == "management_rules"]
    elif topic == "quality":
        cited = [s for s in sources if s["tool_id"] == "quality_check"]
    if not cited:
        present = [s for s in sources if s.get("present")]
        cited = present[:5] or [s for s in sources if s["tool_id"] == "classify"][:3]
        cited += [s for s in sources if s["tool_id"] == "management_rules"]
    cited += [s for s in sources if s.get("untrained")]
    unique = list({s["id"]: s for s in cited}.values())
    answer = " ".join(f"{_sentence(s['text'])} [{s['id']}]" for s in unique)
    confidence = None
    if len(labels) == 1 and by_label[labels[0]].get("probability") is not None:
        probability = by_label[labels[0]]["probability"]
        confidence = round(probability if by_label[labels[0]]["present"] else 1.0 - probability, 4)
    return {"answer": answer, "sources": unique, "confidence": confidence}


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


#: A base model follows examples better than instructions: two worked answers, each a
#: full sentence that repeats the fact's own words and numbers and cites its ids.
_FEW_SHOT = (
    "Questions about a chest image are answered in one or two sentences, only from the numbered facts, "
    "citing the facts used.\n"
    "Facts:\n[S1] pneumothorax: absent (probability 0.12, threshold 0.50)\n"
    "[S2] consolidation: present, right lower zone (probability 0.71, threshold 0.50)\n"
    "Question: Is there a pneumothorax?\n"
    'Answer: {"answer": "No pneumothorax: it is absent (probability 0.12).", "sources": ["S1"]}\n'
    "Question: Where is the consolidation?\n"
    'Answer: {"answer": "Consolidation is present in the right lower zone (probability 0.71).", '
    '"sources": ["S2"]}\n'
)


def _llm_answer(llm: Any, question: str, context: dict[str, Any], memory: dict[str, Any],
                seed: int | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The language model's answer (or None) and a record of the attempt."""
    shown = context["sources"][:PROMPT_SOURCES]
    ids = [s["id"] for s in shown]
    schema = {"type": "object", "additionalProperties": False, "required": ["answer", "sources"],
              "properties": {"answer": {"type": "string", "maxLength": ANSWER_MAX_CHARS},
                             "sources": {"type": "array", "items": {"enum": ids}, "minItems": 1, "maxItems": 4}}}
    lines = [_FEW_SHOT, "Facts:"]
    lines += [f"[{s['id']}] {s['text']}" for s in shown]
    if memory.get("summary"):
        lines.append("Earlier conversation (summary): " + memory["summary"][-600:])
    for turn in memory.get("turns", [])[-4:]:
        lines.append(f"{turn['role']}: {str(turn['content'])[:200]}")
    lines += [f"Question: {question}", "Answer: "]
    record: dict[str, Any] = {"source_ids": ids}
    started = time.perf_counter()
    try:
        result = llm.complete("\n".join(lines), json_schema=schema, max_tokens=ANSWER_MAX_TOKENS, temperature=0.0,
                              seed=seed)
    except MedVisionError as exc:
        record |= {"error": exc.to_dict(), "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
        return None, record
    record |= {k: result.get(k) for k in ("text", "parse_error", "tokens", "latency_ms", "finish_reason")}
    parsed = result.get("parsed")
    if not parsed or not str(parsed.get("answer", "")).strip():
        record["rejected"] = result.get("parse_error") or "empty answer"
        return None, record
    return parsed, record


def ask_about_image(services: Services, session_id: str, question: str, image_id: str | None = None,
                    include_context: bool = True, *, seed: int | None = 0) -> dict[str, Any]:
    """Answer a question about an image from its structured context, citing sources.

    Returns
    -------
    dict
        ``answer``, ``confidence`` (of the facts the answer rests on, when one finding is
        asked about), ``sources`` (the cited facts: ``id``, ``tool_id``, ``ref``,
        ``text``), ``source`` ("llm" or "facts"), ``guard`` (when the language model
        answered: ``status`` passed / fallback and its violations), ``context``
        (where the facts came from), ``model_trained`` and the disclaimer.
    """
    if not isinstance(question, str) or not question.strip():
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "question must be a non-empty string")
    if len(question) > QUESTION_MAX_CHARS:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"question longer than {QUESTION_MAX_CHARS} characters")
    session = services.store.get_session(session_id)
    image_id = image_id or session["current_image_id"]
    if image_id is None:
        raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, "the session has no images yet")
    services.store.get_image(image_id, session_id=session_id)
    started = time.perf_counter()
    memory = ConversationMemory(services.store)
    if include_context:
        context = gather_context(services, session_id, image_id)
    else:
        context = {"report": None, "origin": None, "sources": []}
    if include_context:
        asked = _asked_answer(services, session_id, image_id, question)
        if asked is not None:
            return _record(services, memory, session_id, image_id, question, asked, started)
    answer = facts_answer(question, context)
    if not include_context:
        answer["answer"] = ("Without the analysis context there is nothing to answer from: the language model of "
                            "this pack reads text, not pixels. Ask again with include_context, or analyse the image.")
    source, guard, attempt = "facts", None, None
    llm, llm_error = _language_model(services) if include_context and context["report"] is not None else (None, None)
    if llm_error is not None:
        guard = {"status": "fallback", "violations": [], "reason": f"language model unavailable: {llm_error}"}
    if llm is not None:
        parsed, attempt = _llm_answer(llm, question, context, memory.context(session_id), seed)
        if parsed is not None:
            violations = check_narrative(parsed["answer"], context["report"])
            guard = {"status": "passed" if not violations else "fallback", "violations": violations}
            if not violations:
                cited = [s for s in context["sources"] if s["id"] in set(parsed["sources"])]
                answer = {"answer": parsed["answer"].strip(), "sources": cited, "confidence": answer["confidence"]}
                source = "llm"
        else:
            guard = {"status": "fallback", "violations": [], "reason": attempt.get("rejected") or attempt.get("error")}
    report = context["report"] or {}
    result = {
        "session_id": session_id, "image_id": image_id, "question": question,
        "answer": qualified(answer["answer"], False) if report and models_untrained(report) else answer["answer"],
        "confidence": answer["confidence"],
        "sources": [{k: s[k] for k in ("id", "tool_id", "ref", "text")} for s in answer["sources"]],
        "source": source, "guard": guard, "llm_attempt": attempt, "context": context["origin"],
        "model_trained": report.get("model_trained") if report else None, "disclaimer": DISCLAIMER,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    with services.store.db.transaction():
        memory.add(session_id, "user", "question", question, image_id=image_id)
        memory.add(session_id, "agent", "answer", result["answer"], sources=result["sources"], image_id=image_id,
                   run_id=(context["origin"] or {}).get("run_id"))
        services.store.add_interaction(session_id, "query", {"question": question, "source": source,
                                                           "sources": [s["id"] for s in result["sources"]]}, image_id)
    return result


def _language_model(services: Services) -> tuple[Any, str | None]:
    """``(model, None)``; ``(None, None)`` when the pack has none; ``(None, why)`` when it cannot load."""
    try:
        llm = services.models.llm()
        if llm is not None:
            llm.load()
        return llm, None
    except MedVisionError as exc:
        return None, str(exc)


def _asked_answer(services: Services, session_id: str, image_id: str, question: str) -> dict[str, Any] | None:
    """The answer from the question table (``engine.analysis.questions``), or None for the facts path.

    Answered here: a finding asked about the selected region (the latest region analysis:
    its crop's and the whole image's classifier output), a finding no model covers, a size
    that needs units (the image's pixel spacing) and any question about the region; a
    finding asked about the whole image goes to :func:`facts_answer` as before.
    """
    parsed = parse_question(question)
    if parsed["kind"] == "unknown" or not (parsed["refers_to_region"] or parsed["not_covered"]
                                           or parsed["measurement"] == "physical"):
        return None
    _, decoded = services.images.decoded_image(session_id, image_id)
    region = services.analysis.latest_result(session_id, image_id, ("region",))
    crop = whole = measurements = None
    crop_ref = image_ref = measurements_ref = None
    lead = ""
    if parsed["labels"]:
        if region is not None:
            crop = region.get("classification") or services.regions.crop_classification(
                session_id, image_id, region["region_info"]["region"])
            crop_ref = f"classify on the region crop {crop['crop']}, region analysis {region['analysis_id']}"
        elif parsed["refers_to_region"]:
            lead = "No region of this image has been analysed yet: select one and ask again. "
        whole = region.get("image_classification") if region else None
        if whole is None or (crop is not None and whole.get("threshold") != crop["threshold"]):
            whole = services.regions.image_classification(session_id, image_id, decoded,
                                                          crop["threshold"] if crop else 0.5)
        image_ref = (f"analyze_image analysis {whole['analysis_id']}" if whole.get("analysis_id")
                     else "classify on the whole image, run for this answer")
    if parsed["measurement"] and region is not None:
        measurements = region.get("measurements")
        measurements_ref = f"measure, region analysis {region['analysis_id']}"
    composed = compose_answer(parsed, crop=crop, image=whole, crop_ref=crop_ref, image_ref=image_ref,
                              measurements=measurements, measurements_ref=measurements_ref,
                              spacing_known=decoded.pixel_spacing_mm is not None, image_format=decoded.format)
    answered = guarded(composed, check_narrative)
    text = answered["text"]
    if lead and text.startswith(UNTRAINED_OUTPUTS):  # the untrained-models sentence stays first
        text = f"{UNTRAINED_OUTPUTS} {lead}{text[len(UNTRAINED_OUTPUTS):].lstrip()}"
    elif lead:
        text = lead + text
    answered["text"] = text
    answered["context"] = {"kind": "region_analysis", "analysis_id": region["analysis_id"]} if region else None
    return answered


def _record(services: Services, memory: ConversationMemory, session_id: str, image_id: str, question: str,
            asked: dict[str, Any], started: float) -> dict[str, Any]:
    """The result of an answer from the question table, kept in the conversation memory."""
    result = {
        "session_id": session_id, "image_id": image_id, "question": question,
        "answer": asked["text"], "confidence": None, "sources": asked["sources"], "source": "facts",
        "guard": asked["guard"], "llm_attempt": None, "context": asked["context"],
        "model_trained": (asked.get("model") or {}).get("trained"), "disclaimer": DISCLAIMER,
        "kind": asked["kind"], "findings": asked["findings"], "not_covered": asked["not_covered"],
        "threshold": asked["threshold"], "model": asked["model"],
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    with services.store.db.transaction():
        memory.add(session_id, "user", "question", question, image_id=image_id)
        memory.add(session_id, "agent", "answer", result["answer"], sources=result["sources"], image_id=image_id,
                   run_id=None)
        services.store.add_interaction(session_id, "query", {"question": question, "source": "question_table",
                                                           "sources": [s["id"] for s in result["sources"]]}, image_id)
    return result
