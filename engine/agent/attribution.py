"""Error attribution: walk a run's trace and say where things went wrong or got shaky.

Flags, each with the event it rests on (``seq``), step and tool:

- ``plan_mismatch``: the orchestrator's plan and the calls actually made disagree (a
  planned, unconditional call that never happened although its step ran; a call that
  was never planned). Fallback calls are reported as ``fallback_used`` instead.
- ``low_confidence_used``: an output with status ``low_confidence`` that a later call
  read (the later event's ``uses``).
- ``contradiction``: a grading or finding that contradicts the classifier: the
  cardiothoracic ratio against the Cardiomegaly call, a zone analysis that does not
  support a finding the whole-image classifier called present.
- ``tool_failed``, ``planner_failed``: failed calls, with the error type and message.
- ``narrative_guard``: the guard retried or replaced the language model's narrative.
- ``quality_gate``: the gate flagged or stopped the run.
- ``not_reached``: planned calls after the point where the run failed or stopped.

Works on an exported trace (:func:`engine.agent.trace.export_trace`) or any dict
with ``plan``, ``events`` and ``status``, so a constructed trace can be checked too.
"""

from __future__ import annotations

from typing import Any

#: Cardiothoracic ratio at or above which a PA film shows cardiomegaly (the convention).
CTR_CARDIOMEGALY = 0.5


def attribute_errors(trace: dict[str, Any]) -> dict[str, Any]:
    """The issues found in ``trace``: ``{"issues": [...], "counts": {kind: n}, "clean": bool}``."""
    events = list(trace.get("events") or [])
    issues: list[dict[str, Any]] = []
    issues += _plan_mismatch(trace.get("plan") or [], events, trace.get("status"))
    issues += _low_confidence_used(events)
    issues += _contradictions(events)
    issues += _failures(events)
    counts: dict[str, int] = {}
    for issue in issues:
        counts[issue["kind"]] = counts.get(issue["kind"], 0) + 1
    serious = {"plan_mismatch", "low_confidence_used", "contradiction", "tool_failed"}
    return {"issues": issues, "counts": counts, "clean": not any(i["kind"] in serious for i in issues)}


def _issue(kind: str, severity: str, message: str, event: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    event = event or {}
    return {"kind": kind, "severity": severity, "seq": event.get("seq"), "step_id": event.get("step_id"),
            "tool_id": event.get("tool_id"), "message": message} | extra


def _plan_mismatch(plan: list[dict[str, Any]], events: list[dict[str, Any]], status: str | None) -> list[dict]:
    if not plan:
        return []
    # Invoked: a tool that ran (even if it found nothing to do); a call skipped by its
    # condition or by the planner never ran (no attempt number).
    calls = [e for e in events if e.get("kind") == "tool_call"
             and (e.get("attempt") is not None or e.get("status") != "skipped")]
    started = {e.get("step_id") for e in events if e.get("kind") == "step_started"}
    finished = {e.get("step_id") for e in events if e.get("kind") == "step_finished"}
    made = {(e.get("step_id"), e.get("tool_id")) for e in calls if e.get("attempt") != "fallback"}
    planned = {(p.get("step_id"), p.get("tool")) for p in plan}
    unfinished_run = status in ("failed", "in_progress", "need_input", "running")
    issues = []
    for entry in plan:
        step_id, tool_id = entry.get("step_id"), entry.get("tool")
        if (step_id, tool_id) in made or entry.get("conditional"):
            continue
        where = {"step_id": step_id, "tool_id": tool_id}
        if unfinished_run and step_id not in finished:
            issues.append(_issue("not_reached", "info", f"planned call {tool_id} in {step_id} was not reached "
                                 f"(run {status})", where))
        elif step_id not in started:
            issues.append(_issue("plan_mismatch", "warning", f"the plan called for {tool_id} in {step_id}, "
                                 "but the step did not run", where))
        else:
            issues.append(_issue("plan_mismatch", "warning", f"the plan called for {tool_id} in {step_id}, "
                                 "but it was not called", where))
    for event in calls:
        key = (event.get("step_id"), event.get("tool_id"))
        if event.get("attempt") != "fallback" and key not in planned:
            issues.append(_issue("plan_mismatch", "warning",
                                 f"{key[1]} was called in {key[0]} but was not in the plan", event))
    return issues


def _low_confidence_used(events: list[dict[str, Any]]) -> list[dict]:
    by_seq = {e.get("seq"): e for e in events}
    issues = []
    for event in events:
        if event.get("kind") != "tool_call" or event.get("status") not in ("ok", "low_confidence"):
            continue
        for used in event.get("uses") or []:
            source = by_seq.get(used)
            if source is not None and source.get("status") == "low_confidence":
                issues.append(_issue(
                    "low_confidence_used", "warning",
                    f"{event.get('tool_id')} used the low-confidence output of {source.get('tool_id')} "
                    f"(event {used}: {source.get('reasoning') or 'low confidence'})", event, source_seq=used))
    return issues


def _latest_output(events: list[dict[str, Any]], tool_id: str) -> tuple[dict[str, Any] | None, dict | None]:
    for event in reversed(events):
        if event.get("kind") == "tool_call" and event.get("tool_id") == tool_id and \
                event.get("status") in ("ok", "low_confidence") and isinstance(event.get("output"), dict):
            return event["output"], event
    return None, None


def _contradictions(events: list[dict[str, Any]]) -> list[dict]:
    issues = []
    classification, classify_event = _latest_output(events, "classify")
    if classification is None:
        return issues
    positive = set(classification.get("positive") or [])
    threshold = classification.get("threshold") or 0.5
    measured, measure_event = _latest_output(events, "measurements")
    ctr = next((m.get("value") for m in (measured or {}).get("measurements", []) or []
                if isinstance(m, dict) and m.get("name") == "cardiothoracic_ratio"), None)
    if isinstance(ctr, int | float):
        cardiomegaly = "Cardiomegaly" in positive
        if cardiomegaly and ctr < CTR_CARDIOMEGALY:
            issues.append(_issue("contradiction", "warning",
                                 f"the classifier calls Cardiomegaly present, but the cardiothoracic ratio is "
                                 f"{ctr:.2f} (< {CTR_CARDIOMEGALY})", measure_event, against_seq=classify_event["seq"]))
        elif not cardiomegaly and ctr >= CTR_CARDIOMEGALY:
            issues.append(_issue("contradiction", "warning",
                                 f"the cardiothoracic ratio is {ctr:.2f} (>= {CTR_CARDIOMEGALY}), but the "
                                 "classifier does not call Cardiomegaly", measure_event,
                                 against_seq=classify_event["seq"]))
    for event in events:
        if event.get("kind") != "tool_call" or event.get("tool_id") != "region_analysis" or \
                event.get("status") not in ("ok", "low_confidence"):
            continue
        output = event.get("output") or {}
        label, probability = output.get("label"), output.get("region_probability")
        if label in positive and isinstance(probability, int | float) and probability < threshold:
            issues.append(_issue("contradiction", "warning",
                                 f"{label}: the whole-image classifier calls it present, but its best zone "
                                 f"({output.get('location')}) scores {probability:.2f} < {threshold:.2f}", event,
                                 against_seq=classify_event["seq"]))
    return issues


def _failures(events: list[dict[str, Any]]) -> list[dict]:
    issues = []
    for event in events:
        kind = event.get("kind")
        if kind == "tool_call" and event.get("status") == "failed":
            issues.append(_issue("tool_failed", "error", f"{event.get('tool_id')} failed "
                                 f"({event.get('error_type')}): {event.get('error')}", event))
        elif kind == "tool_call" and event.get("attempt") == "fallback":
            issues.append(_issue("fallback_used", "info", f"fallback {event.get('tool_id')} ran "
                                 f"({event.get('status')})", event))
        elif kind == "planner" and event.get("status") == "failed":
            issues.append(_issue("planner_failed", "warning", f"the language model's tool choice was refused "
                                 f"({event.get('error_type')}): {event.get('error')}; deterministic order used", event))
        elif kind == "llm_check" and event.get("status") == "failed":
            issues.append(_issue("llm_unavailable", "warning", f"language model unavailable "
                                 f"({event.get('error_type')}): {event.get('error')}", event))
        elif kind == "tool_call" and event.get("tool_id") == "write_narrative" and event.get("status") != "failed":
            output = event.get("output") or {}
            guard = output.get("guard") or {}
            violations = len(guard.get("violations") or [])
            if guard.get("status") == "retried":
                issues.append(_issue("narrative_guard", "info", f"the guard rejected the first narrative "
                                     f"({violations} violation(s)); the retry passed", event))
            elif guard.get("status") == "fallback" and output.get("attempts"):
                issues.append(_issue("narrative_guard", "warning", f"the guard rejected the language model's "
                                     f"narrative ({violations} violation(s) in the last attempt); the template "
                                     "was used", event))
        elif kind == "gate" and event.get("status") in ("low_confidence", "failed"):
            issues.append(_issue("quality_gate", "error" if event.get("status") == "failed" else "warning",
                                 event.get("reasoning") or "quality gate", event))
    return issues
