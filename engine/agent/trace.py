"""The reasoning trace: one event per step and tool call, in the store and exported as JSON.

Every event has the same keys (:data:`EVENT_FIELDS`): agent, role, tool_id, tool
version, the models used (id + sha256 + trained), arguments, an output summary (ids
and numbers, never pixels), confidence, latency_ms, status (ok / failed /
low_confidence / skipped), error_type, error and reasoning, plus ``uses``: the
``seq`` of the earlier tool calls whose outputs this call read, so the error
attribution can follow a low-confidence output to where it was used.

:class:`TraceRecorder` writes each event with its events-outbox row in one
transaction (joining the caller's, so a tool's writes and its event commit
together). :func:`export_trace` assembles the exported document
(``engine/schemas/trace.schema.json``).
"""

from __future__ import annotations

import importlib.resources
import json
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jsonschema

from engine.errors import ErrorCode, MedVisionError
from engine.store import now_iso

if TYPE_CHECKING:
    from engine.store import Store

TRACE_SCHEMA_VERSION = "1.0.0"
EVENT_KINDS = ("run_started", "run_resumed", "llm_check", "plan", "step_started", "step_skipped", "planner",
               "tool_call", "narrative_attempt", "gate", "need_input", "input_answered", "step_finished",
               "run_finished")
STATUSES = ("ok", "failed", "low_confidence", "skipped", "need_input", "in_progress", "completed")
EVENT_FIELDS = ("seq", "kind", "timestamp", "run_id", "step_id", "agent", "role", "tool_id", "tool_version",
                "mcp_tools", "models", "arguments", "output", "confidence", "latency_ms", "status", "error_type",
                "error", "reasoning", "attempt", "item", "uses")
AGENTS = {"orchestrator": "OrchestratorAgent", "image_analysis": "ImageAnalysisAgent",
          "specialist": "SpecialistAgent", "follow_up": "FollowUpAgent", "report": "ReportAgent"}
#: Lists longer than this are cut in trace outputs (with a count of what was left out).
MAX_LIST_ITEMS = 24
#: Strings longer than this are cut in trace outputs.
MAX_STRING_CHARS = 2000


def summarize(value: Any, depth: int = 0) -> Any:
    """A bounded copy of a tool output for the trace (long lists and strings cut)."""
    if isinstance(value, dict):
        if depth > 6:
            return "{...}"
        return {str(k): summarize(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [summarize(v, depth + 1) for v in list(value)[:MAX_LIST_ITEMS]]
        if len(value) > MAX_LIST_ITEMS:
            items.append(f"... {len(value) - MAX_LIST_ITEMS} more")
        return items
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        return value[:MAX_STRING_CHARS] + "..."
    return value


class TraceRecorder:
    """Appends a run's events to the store, numbering them."""

    def __init__(self, store: Store, run_id: str, session_id: str, next_seq: int = 1) -> None:
        self.store = store
        self.run_id = run_id
        self.session_id = session_id
        self.next_seq = next_seq

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one event (all :data:`EVENT_FIELDS`, absent ones None) and return it."""
        if kind not in EVENT_KINDS:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"unknown trace event kind {kind!r}")
        unknown = set(fields) - set(EVENT_FIELDS)
        if unknown:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"unknown trace field(s) {', '.join(sorted(unknown))}")
        event = {name: None for name in EVENT_FIELDS}
        event.update(fields)
        role = event.get("role")
        if role and not event.get("agent"):
            event["agent"] = AGENTS.get(role, "MedVisionAgent")
        event.update(seq=self.next_seq, kind=kind, timestamp=now_iso(), run_id=self.run_id)
        event["models"] = event["models"] or []
        event["uses"] = event["uses"] or []
        self.store.add_agent_trace(self.run_id, self.session_id, self.next_seq, event)
        self.next_seq += 1
        return event

    def mark(self) -> int:
        """The next sequence number (to :meth:`rewind` to after a rolled-back transaction)."""
        return self.next_seq

    def rewind(self, mark: int) -> None:
        """Forget events numbered from ``mark`` on (their transaction was rolled back)."""
        self.next_seq = mark


@lru_cache(maxsize=1)
def trace_schema() -> dict:
    """``engine/schemas/trace.schema.json``."""
    return json.loads((importlib.resources.files("engine.schemas") / "trace.schema.json").read_text())


def validate_trace(trace: dict[str, Any]) -> None:
    """Check an exported trace against the schema; ``INVALID_ARGUMENT`` naming the field."""
    validator = jsonschema.Draft202012Validator(trace_schema())
    errors = sorted(validator.iter_errors(trace), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                             f"trace does not follow trace.schema.json at {where}: {errors[0].message}", key=where)


def step_summaries(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step, in order: agent, role, status, latency and its tool calls (the spec's agent blocks)."""
    steps: dict[str, dict[str, Any]] = {}
    for event in events:
        step_id = event.get("step_id")
        if not step_id:
            continue
        step = steps.setdefault(step_id, {"step_id": step_id, "agent": event.get("agent"), "role": event.get("role"),
                                          "status": None, "latency_ms": None, "reasoning": None, "tool_calls": []})
        if event["kind"] == "tool_call":
            step["tool_calls"].append({"seq": event["seq"], "tool_id": event["tool_id"], "status": event["status"],
                                       "latency_ms": event["latency_ms"], "confidence": event["confidence"],
                                       "item": event.get("item")})
        elif event["kind"] in ("step_finished", "step_skipped"):
            step["status"] = event["status"]
            step["latency_ms"] = event["latency_ms"]
            step["reasoning"] = event["reasoning"]
        elif event["kind"] == "need_input" and step["status"] is None:
            step["status"] = "need_input"
    return list(steps.values())


def totals(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and time over a run's events."""
    calls = [e for e in events if e["kind"] == "tool_call"]
    steps = [e for e in events if e["kind"] == "step_finished"]
    return {
        "events": len(events),
        "tool_calls": len(calls),
        "failed": sum(e["status"] == "failed" for e in calls),
        "low_confidence": sum(e["status"] == "low_confidence" for e in calls),
        "skipped": sum(e["status"] == "skipped" for e in calls),
        "planner_calls": sum(e["kind"] == "planner" for e in events),
        "tool_ms": round(sum(e["latency_ms"] or 0 for e in calls), 2),
        "steps_ms": round(sum(e["latency_ms"] or 0 for e in steps), 2),
    }


def export_trace(store: Store, run_id: str, session_id: str | None = None) -> dict[str, Any]:
    """The exported trace of a run (validated against ``trace.schema.json``)."""
    from engine.agent.attribution import attribute_errors

    run = store.get_agent_run(run_id, session_id=session_id)
    state = run["state"] or {}
    events = store.list_agent_trace(run_id)
    trace = {
        "schema_version": TRACE_SCHEMA_VERSION,
        "run_id": run_id,
        "session_id": run["session_id"],
        "image_id": run["image_id"],
        "task": run["task"],
        "mode": run["mode"],
        "status": run["status"],
        "pipeline": state.get("pipeline") or {"id": run["pipeline"]},
        "created_at": run["created_at"],
        "updated_at": run["updated_at"],
        "plan": state.get("plan") or [],
        "flags": state.get("flags") or [],
        "models": sorted((state.get("models") or {}).values(), key=lambda m: m["id"]),
        "error": run["error"],
        "events": events,
        "steps": step_summaries(events),
        "totals": totals(events),
    }
    trace["attribution"] = attribute_errors(trace)
    validate_trace(trace)
    return trace
