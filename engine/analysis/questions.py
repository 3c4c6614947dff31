"""What a question asks, in the classifier's labels, and the answer the models' outputs give.

:func:`parse_question` maps a question's wording to the classifier's labels ("is there
fluid?" -> Effusion, "enlarged heart" -> Cardiomegaly), to findings no model covers
("air under the diaphragm" -> pneumoperitoneum) and to size questions, from the
package data table ``engine/analysis/questions.json`` (matching rules in its
``description``). :func:`compose_answer` turns the classifier's outputs on the region
crop and on the whole image (and a region's measurements) into a plain answer that
cites its sources, plus the structured report that answer rests on, so that the
agent's narrative guard can check it (``engine.agent.guard.check_narrative``).

The region service (``analyze_selected_region(question=...)``) and the agent
(``ask_about_image``) both use it; everything here is deterministic text from numbers.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from engine.vocabulary import UNTRAINED_OUTPUTS

#: The first sentence of every answer that rests on untrained models (one wording everywhere).
UNTRAINED_SENTENCE = UNTRAINED_OUTPUTS
#: Kinds of a parsed question, in the order they are answered.
KINDS = ("finding", "not_covered", "needs_spacing", "measurement", "unknown")
_WORD = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    """The question table (package data ``engine/analysis/questions.json``)."""
    text = (importlib.resources.files("engine.analysis") / "questions.json").read_text(encoding="utf-8")
    return json.loads(text)


def _words(text: str, fillers: frozenset[str]) -> list[str]:
    return [w for w in _WORD.findall(text.lower().replace("\u2019", "'").replace("'s", "")) if w not in fillers]


@dataclass(frozen=True)
class _Compiled:
    fillers: frozenset[str]
    terms: dict[tuple[str, ...], tuple[str, Any]]  # words -> (kind, labels / name / measurement kind)
    longest: int


@lru_cache(maxsize=1)
def _compiled() -> _Compiled:
    data = table()
    fillers = frozenset(data["fillers"])
    terms: dict[tuple[str, ...], tuple[str, Any]] = {}

    def add(phrase: str, kind: str, value: Any) -> None:
        key = tuple(_words(phrase, fillers))
        if not key:
            raise ValueError(f"questions.json: {phrase!r} is only filler words")
        if key in terms:
            old_kind, old_value = terms[key]
            if old_kind == kind == "finding":
                terms[key] = ("finding", old_value | value)
                return
            if (old_kind, old_value) != (kind, value):
                raise ValueError(f"questions.json: {phrase!r} has two meanings")
        terms[key] = (kind, value)

    for label, spec in data["findings"].items():
        for phrase in [*spec["terms"], label.replace("_", " ")]:
            add(phrase, "finding", frozenset({label}))
    for group in data["groups"]:
        for phrase in group["terms"]:
            add(phrase, "finding", frozenset(group["labels"]))
    for name, spec in data["not_covered"].items():
        for phrase in spec["terms"]:
            add(phrase, "not_covered", name)
    for kind in ("physical", "size"):
        for phrase in data["measurement"][kind]:
            add(phrase, "measurement", kind)
    for phrase in data["region_words"]:
        add(phrase, "region", True)
    return _Compiled(fillers, terms, max(len(k) for k in terms))


def labels() -> list[str]:
    """The classifier labels the table knows, in its order."""
    return list(table()["findings"])


def display_name(label: str) -> str:
    """A label in words ("Effusion" -> "pleural effusion")."""
    spec = table()["findings"].get(label)
    return spec["display"] if spec else label.replace("_", " ").lower()


def parse_question(question: str) -> dict[str, Any]:
    """What a question names.

    Returns
    -------
    dict
        ``labels`` (classifier labels, table order), ``terms`` (each matched wording:
        ``{"words", "labels"}``), ``not_covered`` (``{"name", "words", "answered_by"}``),
        ``measurement`` (None, "size" or "physical": a unit that needs pixel spacing),
        ``refers_to_region`` and ``kind``, the first of :data:`KINDS` that applies
        before the models are asked ("finding", "not_covered", "measurement" or
        "unknown"; "needs_spacing" is decided by :func:`question_kind` with the image).
    """
    compiled = _compiled()
    words = _words(question or "", compiled.fillers)
    found: list[tuple[str, tuple[str, ...], Any]] = []
    index = 0
    while index < len(words):
        for size in range(min(compiled.longest, len(words) - index), 0, -1):
            key = tuple(words[index:index + size])
            if key in compiled.terms:
                kind, value = compiled.terms[key]
                found.append((kind, key, value))
                index += size
                break
        else:
            index += 1
    order = labels()
    named = {label for kind, _, value in found if kind == "finding" for label in value}
    not_covered, seen = [], set()
    for kind, key, name in found:
        if kind == "not_covered" and name not in seen:
            seen.add(name)
            not_covered.append({"name": name, "words": " ".join(key),
                                "answered_by": table()["not_covered"][name]["answered_by"]})
    measures = {value for kind, _, value in found if kind == "measurement"}
    measurement = "physical" if "physical" in measures else ("size" if measures else None)
    parsed = {
        "question": question,
        "labels": [label for label in order if label in named],
        "terms": [{"words": " ".join(key), "labels": sorted(value)} for kind, key, value in found if kind == "finding"],
        "not_covered": not_covered,
        "measurement": measurement,
        "refers_to_region": any(kind == "region" for kind, _, _ in found),
    }
    parsed["kind"] = question_kind(parsed)
    return parsed


def question_kind(parsed: dict[str, Any], *, spacing_known: bool | None = None) -> str:
    """One of :data:`KINDS`: what answers the question (finding labels first)."""
    if parsed["labels"]:
        return "finding"
    if parsed["not_covered"]:
        return "not_covered"
    if parsed["measurement"] == "physical" and spacing_known is False:
        return "needs_spacing"
    if parsed["measurement"]:
        return "measurement"
    return "unknown"


def mapping(question: str) -> list[str] | str:
    """The table's answer in short: the labels, else "not covered", "needs spacing",
    "measurement" or "unknown" (a physical size asked of an image without spacing)."""
    parsed = parse_question(question)
    kind = question_kind(parsed, spacing_known=False)
    return parsed["labels"] if kind == "finding" else kind.replace("_", " ")


# -- the answer ------------------------------------------------------------------------------------


def _probability(classification: dict[str, Any] | None, label: str) -> dict[str, Any] | None:
    for finding in (classification or {}).get("findings") or []:
        if finding["label"] == label:
            return finding
    return None


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _state(display: str, crop: dict | None, image: dict | None) -> str:
    above = [name for name, f in (("the region crop", crop), ("the whole image", image)) if f and f["positive"]]
    if len(above) == 2:
        return f"{display[:1].upper() + display[1:]} above the threshold on the region crop and on the whole image"
    if above == ["the region crop"]:
        return f"{display[:1].upper() + display[1:]} above the threshold on the region crop only"
    if above == ["the whole image"]:
        return f"{display[:1].upper() + display[1:]} above the threshold on the whole image only"
    return f"{display[:1].upper() + display[1:]} not detected, below the threshold"


def compose_answer(parsed: dict[str, Any], *, crop: dict[str, Any] | None = None,
                   image: dict[str, Any] | None = None, crop_ref: str | None = None, image_ref: str | None = None,
                   measurements: dict[str, Any] | None = None, measurements_ref: str | None = None,
                   spacing_known: bool = True, image_format: str | None = None) -> dict[str, Any]:
    """The answer to a parsed question from the classifier's outputs and a region's measurements.

    Parameters
    ----------
    crop, image:
        The classifier's results (``engine.analysis.classify.classify``) on the region
        crop and on the whole image; either may be None (not available).
    crop_ref, image_ref, measurements_ref:
        What each source is (an analysis id, "region crop [x1, y1, x2, y2]"...).
    measurements:
        ``measure_mask`` of the region (for size questions).

    Returns
    -------
    dict
        ``kind``, ``text`` (cites ``[S1]``...), ``labels``, ``findings`` (per label:
        ``region_probability``, ``image_probability``, ``threshold`` and whether each
        is above it), ``not_covered``, ``model`` (``id``, ``trained``), ``threshold``,
        ``sources`` (``id``, ``tool_id``, ``ref``, ``text``) and ``report``, the
        structured facts the text rests on, in the shape the narrative guard reads.
    """
    kind = question_kind(parsed, spacing_known=spacing_known)
    sources: list[dict[str, Any]] = []
    sentences: list[str] = []
    report_findings: list[dict[str, Any]] = []
    report_measurements: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    classifiers = [c for c in (crop, image) if c and c.get("status", "ok") == "ok"]
    model = (classifiers[0].get("model") or {}) if classifiers else {}
    trained = all(c.get("model_trained") for c in classifiers) if classifiers else None
    threshold = classifiers[0].get("threshold") if classifiers else None
    model_labels = {f["label"] for c in classifiers for f in c.get("findings") or []}

    def cite(tool_id: str, ref: str | None, text: str) -> str:
        sources.append({"id": f"S{len(sources) + 1}", "tool_id": tool_id, "ref": ref, "text": text})
        return sources[-1]["id"]

    asked = [label for label in parsed["labels"] if label in model_labels]
    missing = [label for label in parsed["labels"] if label not in model_labels]
    if trained is False and (asked or parsed["measurement"]):
        sentences.append(UNTRAINED_SENTENCE)
    if asked:
        crop_id = image_id = None
        if crop is not None:
            crop_id = cite("classify", crop_ref, "classifier on the region crop: " + ", ".join(
                f"{display_name(label)} probability {_fmt(_probability(crop, label)['probability'])}"
                for label in asked) + f" (threshold {_fmt(crop['threshold'])})")
        if image is not None:
            image_id = cite("classify", image_ref, "classifier on the whole image: " + ", ".join(
                f"{display_name(label)} probability {_fmt(_probability(image, label)['probability'])}"
                for label in asked) + f" (threshold {_fmt(image['threshold'])})")
        for label in asked:
            on_crop, on_image = _probability(crop, label), _probability(image, label)
            parts = []
            if on_crop is not None:
                parts.append(f"region crop probability {_fmt(on_crop['probability'])} [{crop_id}]")
                report_findings.append({"label": label, "present": on_crop["positive"],
                                        "probability": on_crop["probability"], "threshold": on_crop["threshold"]})
            if on_image is not None:
                parts.append(f"whole image probability {_fmt(on_image['probability'])} [{image_id}]")
                report_findings.append({"label": label, "present": on_image["positive"],
                                        "probability": on_image["probability"], "threshold": on_image["threshold"]})
            sentences.append(f"{_state(display_name(label), on_crop, on_image)}: {', '.join(parts)}, "
                             f"threshold {_fmt(threshold)}.")
            findings.append({"label": label, "display": display_name(label),
                             "region_probability": on_crop["probability"] if on_crop else None,
                             "image_probability": on_image["probability"] if on_image else None,
                             "threshold": threshold,
                             "region_positive": on_crop["positive"] if on_crop else None,
                             "image_positive": on_image["positive"] if on_image else None})
        sentences.append(f"Classifier {model.get('id')}, " + ("trained." if trained else "untrained."))
    for label in missing:
        sentences.append(f"The classifier that ran has no {display_name(label)} output, so it cannot answer "
                         "about it; a classifier with that label would.")
    for item in parsed["not_covered"]:
        sentences.append(f"No model of this pack covers {item['name']}, so these models cannot answer this; "
                         f"what would answer it: {item['answered_by']}.")
    if parsed["measurement"]:
        spacing_answer = table()["measurement"]["answered_by"]
        axes = {k: (measurements or {}).get(k) for k in ("long_axis", "short_axis")}
        known = [f"{name.replace('_', ' ')} {value['value']:.1f} {value['unit']}" for name, value in axes.items()
                 if isinstance(value, dict) and value.get("value") is not None]
        ref_id = cite("measure", measurements_ref, "region measurements: " + ", ".join(known)) if known else None
        for name, value in axes.items():
            if isinstance(value, dict) and value.get("value") is not None:
                report_measurements.append({"name": name, "value": value["value"], "unit": value["unit"]})
        if not spacing_known:
            what = f"this {image_format.upper()} image" if image_format else "this image"
            text = f"The size in mm cannot be measured: {what} has no pixel spacing, so only pixels are known"
            text += f" (region {', '.join(known)} [{ref_id}])." if known else "."
            sentences.append(text + f" What would answer it: {spacing_answer}.")
        elif known:
            sentences.append(f"The region measures {', '.join(known)} [{ref_id}].")
        else:
            sentences.append("Select a region and measure it (analyze_selected_region with the measure action) "
                             "to get its size.")
    if kind == "unknown" and not sentences:
        sentences.append("The question names no finding the models assess and no measurement, so the models "
                         "cannot answer it; ask about a finding by name, or about a size.")
    text = " ".join(sentences)
    report = {"findings": report_findings, "measurements": report_measurements, "model_trained": trained,
              "lesions": [], "diagnoses": [],
              # the answer's own fixed wording and its sources' text: words the guard may accept
              "sources": [s["text"] for s in sources],
              "wording": _template_words(parsed, model.get("id"), image_format)}
    return {"kind": kind, "text": text, "labels": asked, "findings": findings, "not_covered": parsed["not_covered"],
            "measurement": parsed["measurement"], "model": {"id": model.get("id"), "trained": trained} if model else None,
            "threshold": threshold, "sources": sources, "report": report}


def _template_words(parsed: dict[str, Any], model_id: str | None, image_format: str | None) -> str:
    """The words :func:`compose_answer` writes itself (not findings), for the guard's unknown-word rule."""
    fixed = ("these are outputs of untrained development models not findings above below the threshold on "
             "region crop only and whole image detected probability classifier trained untrained the that ran "
             "has no output so it cannot answer about a with label would model this pack covers these can what "
             "it size in mm be measured has pixel spacing only pixels are known long short axis measures select "
             "measure to get its action analyze selected question names finding assess measurement ask by name "
             "or")
    extra = [item["name"] + " " + item["answered_by"] for item in parsed["not_covered"]]
    extra.append(table()["measurement"]["answered_by"])
    return " ".join([fixed, model_id or "", image_format or "", *extra])


def guarded(answer: dict[str, Any], check: Any = None) -> dict[str, Any]:
    """``answer`` after the narrative guard ``check(text, report) -> violations``.

    ``guard`` says ``passed``, ``fallback`` (the text stated something its report does
    not support: it is replaced by a sentence that states nothing but where the
    numbers are) or ``not_checked`` (no guard given).
    """
    if check is None:
        return answer | {"guard": {"status": "not_checked", "violations": []}}
    violations = check(answer["text"], answer["report"])
    if not violations:
        return answer | {"guard": {"status": "passed", "violations": []}}
    lead = UNTRAINED_SENTENCE + " " if (answer.get("model") or {}).get("trained") is False else ""
    text = lead + "The answer could not be checked against the results; the numbers are in its sources."
    return answer | {"text": text, "guard": {"status": "fallback", "violations": violations}}
