"""The report narrative: the language model writes it under a grammar, the guard checks it.

:func:`write_narrative` prompts the pack's language model with the structured facts
only (a short few-shot prompt: the default model is a *base* model that continues
text rather than follows instructions), decodes under :data:`NARRATIVE_SCHEMA`'s
grammar and checks the result with :func:`engine.agent.guard.check_narrative`. On a
violation (or output that does not parse) it retries once, naming the violations in
the prompt; on a second failure it falls back to :func:`template_narrative`, which is
deterministic and always passes the guard. Every attempt is returned for the trace.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from engine.agent.guard import check_narrative, display_name, named_labels, support_of
from engine.agent.report import models_untrained
from engine.errors import MedVisionError
from engine.vocabulary import UNTRAINED_OUTPUTS, qualified

if TYPE_CHECKING:
    from engine.inference.llm import LlmRuntime

log = logging.getLogger(__name__)

FINDINGS_MAX_CHARS = 600
IMPRESSION_MAX_CHARS = 300
#: The narrative's JSON schema. Kept small on purpose: the grammar is checked against
#: candidate tokens at every step, and ``maxLength`` bounds how long it can run.
NARRATIVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "findings": {"type": "string", "maxLength": FINDINGS_MAX_CHARS},
        "impression": {"type": "string", "maxLength": IMPRESSION_MAX_CHARS},
    },
    "required": ["findings", "impression"],
    "additionalProperties": False,
}
#: Generated tokens per attempt: a few-shot-sized narrative is 40-90 tokens; more only
#: lets a base model ramble into text the guard then rejects.
NARRATIVE_MAX_TOKENS = 160
#: Absent findings worth saying are absent (when the report assessed them).
PERTINENT_NEGATIVES = ("Pneumothorax", "Effusion", "Consolidation", "Edema", "Cardiomegaly")
#: Violations named in the retry prompt, at most.
MAX_NAMED_VIOLATIONS = 4

_INSTRUCTION = "Chest radiograph reports written only from their facts.\n\n"
#: Few-shot examples, chosen by the kind of report (a small base model imitates its
#: examples closely: a normal example in an abnormal report's prompt gets copied as
#: "No abnormality detected"). The facts are the template's sentences, so copying them
#: is already a correct report; the model chooses and summarises.
_EXAMPLES_ABNORMAL = (
    "Facts: Right upper zone lung opacity (probability 0.66). No pneumothorax or pleural effusion.\n"
    'Report: {"findings": "Right upper zone lung opacity (probability 0.66). No pneumothorax or pleural '
    'effusion.", "impression": "Right upper zone lung opacity."}\n\n'
    "Facts: Cardiomegaly (probability 0.72). Left lower zone pleural effusion (probability 0.61). "
    "No pneumothorax. Follow-up in 6 months.\n"
    'Report: {"findings": "Cardiomegaly (probability 0.72). Left lower zone pleural effusion (probability 0.61). '
    'No pneumothorax.", "impression": "Cardiomegaly and left pleural effusion. Follow-up in 6 months."}\n\n'
)
_EXAMPLES_NORMAL = (
    "Facts: No pneumothorax, pleural effusion or consolidation.\n"
    'Report: {"findings": "No pneumothorax, pleural effusion or consolidation.", '
    '"impression": "No abnormality detected."}\n\n'
    "Facts: No pneumothorax or cardiomegaly.\n"
    'Report: {"findings": "No pneumothorax or cardiomegaly.", "impression": "No abnormality detected."}\n\n'
)


def _probability(value: Any) -> str | None:
    return f"{value:.2f}" if isinstance(value, int | float) and not isinstance(value, bool) else None


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{round(value, 2):g}"
    return str(value)


def _unit(measurement: dict[str, Any]) -> str:
    """The unit to print after a value ("ratio" and empty units are not written)."""
    unit = str(measurement.get("unit") or "").strip()
    return "" if unit.lower() in ("ratio", "none", "1") else unit


def _where(side: str | None, zone: str | None) -> str:
    side_word = side if side in ("left", "right", "bilateral") else ""
    zone_words = f"{zone} zone" if zone in ("upper", "middle", "lower") else ""
    return " ".join(w for w in (side_word, zone_words) if w)


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""


def _list_words(words: list[str], conjunction: str = "and") -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def _present_findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report.get("findings") or [] if f.get("present")]


def _negatives(report: dict[str, Any]) -> list[str]:
    """Pertinent negatives: assessed absent, and not present through a lesion or diagnosis."""
    support = support_of(report)
    absent = {str(f.get("label")) for f in report.get("findings") or [] if not f.get("present")}
    return [label for label in PERTINENT_NEGATIVES if label in absent and label not in support.present]


def _follow_up(report: dict[str, Any]) -> str | None:
    months = (report.get("management") or {}).get("follow_up_months")
    if isinstance(months, int) and not isinstance(months, bool) and months > 0:
        return f"Follow-up in {months} months."
    return None


def narrative_sentences(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The template's sentences: ``(findings, impression)``, straight from the report's fields."""
    findings: list[str] = []
    impression: list[str] = []
    present = _present_findings(report)
    names = []
    for finding in present:
        label = display_name(str(finding.get("label")))
        probability = _probability(finding.get("probability"))
        findings.append(_sentence(f"{_where(finding.get('side'), finding.get('zone'))} {label}"
                                  + (f" (probability {probability})" if probability else "")))
        side = finding.get("side") if finding.get("side") in ("left", "right", "bilateral") else None
        names.append(f"{side} {label}" if side else label)
    for lesion in report.get("lesions") or []:
        text = display_name(str(lesion.get("label")))
        if lesion.get("location"):
            text += f" in the {lesion['location']}"
        elif _where(lesion.get("side"), lesion.get("zone")):
            text = f"{_where(lesion.get('side'), lesion.get('zone'))} {text}"
        measures = [f"{str(name).replace('_', ' ')} {_value(m.get('value'))} {_unit(m)}".strip()
                    for name, m in (lesion.get("measurements") or {}).items() if isinstance(m, dict)]
        findings.append(_sentence(text + (f" ({', '.join(measures)})" if measures else "")))
    for measurement in report.get("measurements") or []:
        name = str(measurement.get("name", "")).replace("_", " ")
        findings.append(_sentence(f"{name} {_value(measurement.get('value'))} {_unit(measurement)}"))
    negatives = [display_name(label) for label in _negatives(report)]
    if negatives:
        findings.append(_sentence("no " + _list_words(negatives, "or")))
    if names:
        impression.append(_sentence(_list_words(names)))
    for diagnosis in report.get("diagnoses") or []:
        confidence = _probability(diagnosis.get("confidence"))
        impression.append(_sentence(f"possible {diagnosis.get('disease')}"
                                    + (f" (confidence {confidence})" if confidence else "")))
    if not present and not report.get("lesions") and not report.get("diagnoses"):
        # "No abnormality" is a claim only when something was assessed and found absent.
        assessed = bool(report.get("findings")) or bool(report.get("measurements"))
        impression.append("No abnormality detected." if assessed else "No finding was assessed by the available models.")
    if _follow_up(report):
        impression.append(str(_follow_up(report)))
    return [s for s in findings if s], [s for s in impression if s]


def report_facts(report: dict[str, Any]) -> list[str]:
    """The fact sentences the prompt shows: the report's fields, nothing else reaches the model."""
    findings, _ = narrative_sentences(report)
    extra = [f"Possible {d.get('disease')}." for d in report.get("diagnoses") or []]
    follow_up = _follow_up(report)
    return [s for s in findings if not check_narrative(s, report)] + extra + ([follow_up] if follow_up else [])


def narrative_prompt(report: dict[str, Any], violations: list[dict] | None = None,
                     parse_error: str | None = None) -> str:
    """The few-shot prompt; on a retry it names what the first attempt got wrong."""
    normal = not support_of(report).present
    examples = _EXAMPLES_NORMAL if normal else _EXAMPLES_ABNORMAL
    prompt = _INSTRUCTION + examples + "Facts: " + " ".join(report_facts(report)) + "\n"
    if violations:
        named = ", ".join(f'"{v["text"]}"' for v in violations[:MAX_NAMED_VIOLATIONS])
        prompt += f"Not in the facts, never written: {named}.\n"
    elif parse_error:
        prompt += "The report is short.\n"
    return prompt + "Report: "


def _fit(sentences: list[str], limit: int) -> str:
    kept: list[str] = []
    for sentence in sentences:
        if len(" ".join([*kept, sentence])) <= limit:
            kept.append(sentence)
    return " ".join(kept)


def template_narrative(report: dict[str, Any]) -> dict[str, str]:
    """A deterministic narrative that always passes the guard.

    :func:`narrative_sentences` plus the management suggestion and, for untrained
    models, a warning. Each sentence is checked on its own and dropped if the guard
    objects (e.g. a suggestion naming something the report does not have), long
    reports are cut at whole sentences to the schema's lengths, and the whole is
    checked again (falling back to a sentence that names nothing). With untrained models
    each field is led by :data:`engine.vocabulary.UNTRAINED_OUTPUTS`.
    """
    findings, impression = narrative_sentences(report)
    management = report.get("management") or {}
    if management.get("suggestion"):
        impression.append(_sentence(str(management["suggestion"])))
    findings = [s for s in findings if not check_narrative(s, report)]
    impression = [s for s in impression if not check_narrative(s, report)]
    lead = len(UNTRAINED_OUTPUTS) + 1 if models_untrained(report) else 0  # room for the untrained-models sentence
    narrative = {"findings": _fit(findings, FINDINGS_MAX_CHARS - lead) or "See the structured findings.",
                 "impression": _fit(impression, IMPRESSION_MAX_CHARS - lead) or "See the structured report."}
    if check_narrative(narrative, report):  # a sentence that only fails next to another
        narrative = {"findings": "See the structured findings.", "impression": "See the structured report."}
    return qualified_narrative(narrative, report)


def qualified_narrative(narrative: dict[str, str], report: dict[str, Any]) -> dict[str, str]:
    """Each field led by the untrained-models sentence when the report's models are untrained.

    Applied to every narrative, the language model's too, so that neither field read on
    its own (a copied paragraph) can pass for a reading.
    """
    untrained = models_untrained(report)
    return {key: qualified(value, False) if untrained else value for key, value in narrative.items()}


_PARTIAL_FIELD = {key: re.compile(rf'"{key}"\s*:\s*"((?:[^"\\]|\\.)*)') for key in ("findings", "impression")}


def early_violations(partial: str, report: dict) -> list[dict]:
    """Guard violations in the finished sentences of a narrative JSON still being written.

    A sentence the guard rejects now is rejected in the whole narrative too (the guard
    judges each mention on its own), so decoding can stop at the first one.
    """
    found: list[dict] = []
    for pattern in _PARTIAL_FIELD.values():
        match = pattern.search(partial)
        if match:
            body = match.group(1)
            closed = partial[match.end():match.end() + 1] == '"'
            # A sentence is finished at ". " (a "." alone may be a decimal point) or at the closing quote.
            done = body if closed else body[: body.rfind(". ") + 1]
            if done.strip():
                found += check_narrative(done.replace('\\"', '"'), report)
    return found


def _unusable(result: dict[str, Any]) -> str | None:
    """Why a parsed completion cannot be used as a narrative (None when it can)."""
    parsed = result.get("parsed")
    if parsed is None:
        return result.get("parse_error") or "the output is not the narrative JSON"
    empty = [key for key in ("findings", "impression") if not str(parsed.get(key, "")).strip()]
    return f"empty {' and '.join(empty)}" if empty else None


def write_narrative(report: dict, llm: LlmRuntime | None, *, seed: int | None = None, temperature: float = 0.0,
                    max_tokens: int = NARRATIVE_MAX_TOKENS) -> dict:
    """The report narrative: the language model's if it passes the guard, else the template's.

    Parameters
    ----------
    report:
        The structured report (see :func:`engine.agent.guard.check_narrative`).
    llm:
        The pack's language model, or None (then the template, status ``fallback``).
    seed, temperature:
        Sampling (temperature 0, the default, decodes greedily: the seed then changes
        nothing). The retry uses ``seed + 1``.
    max_tokens:
        Generated tokens per attempt.

    Returns
    -------
    dict
        ``narrative`` (``{"findings", "impression"}``), ``source`` (``llm`` /
        ``template``), ``guard`` (``status``: ``passed`` / ``retried`` / ``fallback``,
        ``violations`` of the last rejected attempt, ``reason``, ``final_violations``
        of the returned narrative: always empty), ``attempts`` (one record per
        language-model call: ``attempt``, ``prompt``, ``prompt_tokens``, ``text``,
        ``parsed``, ``parse_error``, ``violations``, ``latency_ms``, ``tokens``,
        ``tokens_per_s``, ``finish_reason``, ``seed``, ``error``), ``omitted`` (present
        labels the narrative does not name; informational) and ``model``.
    """
    if llm is None:
        narrative = template_narrative(report)
        return {"narrative": narrative, "source": "template",
                "guard": {"status": "fallback", "reason": "no language model", "violations": [],
                          "final_violations": check_narrative(narrative, report)},
                "attempts": [], "omitted": [], "model": None}
    attempts: list[dict[str, Any]] = []
    violations: list[dict] = []
    reason = None
    for number in (1, 2):
        previous = attempts[-1] if attempts else None
        prompt = narrative_prompt(report, violations if previous else None,
                                  previous.get("parse_error") if previous else None)
        attempt_seed = None if seed is None else seed + number - 1
        record: dict[str, Any] = {"attempt": number, "prompt": prompt, "seed": attempt_seed}
        early: list[dict] = []

        def rejected_so_far(partial: str, early: list[dict] = early) -> bool:
            early[:] = early_violations(partial, report)
            return bool(early)

        try:
            result = llm.complete(prompt, json_schema=NARRATIVE_SCHEMA, max_tokens=max_tokens,
                                  temperature=temperature, seed=attempt_seed, abort_at_sentence=rejected_so_far)
        except MedVisionError as exc:
            log.warning("narrative attempt %d failed: %s", number, exc)
            record |= {"error": exc.to_dict(), "text": None, "parsed": None, "violations": []}
            attempts.append(record)
            reason = f"the language model failed: {exc.code.value}"
            break
        record |= {key: result.get(key) for key in ("prompt_tokens", "text", "parsed", "parse_error", "latency_ms",
                                                     "tokens", "tokens_per_s", "finish_reason", "grammar_masks")}
        if result.get("finish_reason") == "aborted":  # the guard rejected a finished sentence
            violations = list(early)
            record |= {"violations": violations, "parse_error": None}
            attempts.append(record)
            reason = f"attempt {number}: {len(violations)} guard violation(s), decoding stopped there"
            continue
        problem = _unusable(result)
        if problem:
            record |= {"parse_error": problem, "violations": []}
            attempts.append(record)
            violations, reason = [], f"attempt {number}: unusable output ({problem})"
            continue
        violations = check_narrative(result["parsed"], report)
        record["violations"] = violations
        attempts.append(record)
        if not violations:
            narrative = qualified_narrative({"findings": result["parsed"]["findings"].strip(),
                                             "impression": result["parsed"]["impression"].strip()}, report)
            rejected = attempts[0]["violations"] if number == 2 else []
            return {"narrative": narrative, "source": "llm",
                    "guard": {"status": "passed" if number == 1 else "retried", "violations": rejected,
                              "reason": reason, "final_violations": []},
                    "attempts": attempts, "omitted": _omitted(narrative, report), "model": llm.describe()}
        reason = f"attempt {number}: {len(violations)} guard violation(s)"
    narrative = template_narrative(report)
    return {"narrative": narrative, "source": "template",
            "guard": {"status": "fallback", "violations": violations, "reason": reason,
                      "final_violations": check_narrative(narrative, report)},
            "attempts": attempts, "omitted": [], "model": llm.describe()}


def _omitted(narrative: dict[str, str], report: dict[str, Any]) -> list[str]:
    """Present labels a narrative never names (the guard checks what is said, not what is missing)."""
    named = named_labels(" ".join(narrative.values()))
    return sorted(label for label in support_of(report).present
                  if not label.startswith("other:") and label not in named)
