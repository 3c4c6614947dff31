"""The workflow runner: executes a pipeline's steps and tools, and traces every call.

One :class:`AgentRun` drives one ``agent_runs`` row. Its state is JSON (tool outputs
by id, the plan, flags, answers, the cursor), saved after every step, so a run
paused by ``step_by_step`` (status ``in_progress``) or ``interactive`` (status
``need_input``) resumes in any process.

Per step: its ``when`` condition; in interactive mode its ``ask`` (a pending
``request_user_input`` record; the run waits until it is answered); then its tools,
in pipeline order, or in ``auto`` mode with a language model in the order the model
chooses among the step's eligible tools (one grammar-constrained choice at a time,
at most ``limits.max_llm_choices`` per run; a refused or invalid choice falls back to
the pipeline order and is traced). Each tool call may retry, then fall back to
another tool; a ``required`` tool that still fails ends the run ``failed``. After the
step named by ``quality_gate.after``, the gate's checks flag the run (never silently:
the flags go into the report's warnings and the result) or stop it.

Every tool call is one trace event. A tool's own store writes are atomic (each Engine
method commits its rows in one transaction) and the event is written right after; the
tool runs outside any transaction on purpose, so a seconds-long model call never holds
the database's write lock against the DICOM node or the desktop. Any exception of a
tool is caught at that boundary and a ``failed`` event names the exception's type and
message. The end of a run (status, report, result, final event, conversation turn) is
one transaction.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any

from engine.agent.conditions import Condition
from engine.agent.management import region_for
from engine.agent.memory import ConversationMemory
from engine.agent.pipeline import Pipeline, Step, ToolUse, select_pipeline
from engine.agent.report import models_untrained, validate_report
from engine.agent.toolkit import Tool, ToolCall, ToolRegistry, ToolResult
from engine.agent.tools import default_registry
from engine.agent.trace import AGENTS, TraceRecorder, step_summaries, summarize, totals
from engine.errors import ErrorCode, MedVisionError
from engine.store import new_id, now_iso
from engine.vocabulary import DISCLAIMER, qualified

if TYPE_CHECKING:
    from engine.services import Services

MODES = ("auto", "interactive", "step_by_step")
STATE_VERSION = 1
#: Roots whose facts are known when the orchestrator plans (others make a call conditional).
PLAN_TIME_FACTS = frozenset({"image", "patient", "mode", "context", "llm"})
#: Tokens the language model may spend on one tool choice. The answer is only the tool id:
#: a 270M base model's free-text "reason" is noise (measured: repeated phrases) and
#: costs most of the decode time, so the trace records the options and the choice.
CHOICE_MAX_TOKENS = 16


class RunFailed(Exception):
    """A run cannot go on: a required tool failed, the gate stopped it, a budget ran out."""

    def __init__(self, error_type: str, message: str, step_id: str | None = None, tool_id: str | None = None,
                 seq: int | None = None) -> None:
        super().__init__(message)
        self.error = {"type": error_type, "message": message, "step_id": step_id, "tool_id": tool_id, "seq": seq}


def build_facts(state: dict[str, Any]) -> dict[str, Any]:
    """The facts conditions, rules and the report read, from a run's state."""
    outputs = state.get("outputs") or {}
    info = outputs.get("image_info") or {}
    volume = outputs.get("volume_info") or {}
    quality = outputs.get("quality_check") or {}
    segmentation = outputs.get("segment_organs") or {}
    warnings = list(quality.get("warnings") or []) + list(segmentation.get("quality_warnings") or [])
    classification = outputs.get("classify") or {}
    regions = {r["label"]: r for r in (outputs.get("region_analysis") or {}).get("items", []) if r.get("annotation_id")}
    present = [f for f in classification.get("findings", []) if f.get("positive")]
    items = [{"label": f["label"], "probability": f["probability"], "side": regions.get(f["label"], {}).get("side"),
              "zone": regions.get(f["label"], {}).get("zone")} for f in present]
    limit = int(state.get("limits", {}).get("max_candidates", 3))
    chosen = (state.get("answers") or {}).get("candidates")
    candidates = []
    for finding in sorted(present, key=lambda f: (-f["probability"], f["label"])):
        if chosen is not None and finding["label"] not in chosen:
            continue
        candidates.append({"label": finding["label"], "probability": finding["probability"]} | region_for(finding["label"]))
    candidates = candidates[:limit]
    models = [m for m in (state.get("models") or {}).values() if m.get("task") != "llm"]
    trained_flags = [m.get("trained") for m in models if m.get("trained") is not None]
    ctr = (segmentation.get("ctr") or {}).get("ratio")
    image = dict(state.get("image") or {})
    image.update({k: info.get(k) for k in ("image_id", "type", "modality", "view", "laterality", "frontal",
                                           "body_part") if k in info})
    return {
        "image": image,
        "patient": info.get("patient") or {"age": None, "sex": None, "history": None},
        "quality": {"count": len({w["code"] for w in warnings}), "codes": sorted({w["code"] for w in warnings})},
        "models": {"trained": all(trained_flags) if trained_flags else None,
                   "ids": sorted(m["id"] for m in models),
                   "untrained": sorted(m["id"] for m in models if m.get("trained") is False)},
        "llm": {"available": bool(state.get("llm_available"))},
        "findings": {"present": [f["label"] for f in present], "count": len(present), "items": items,
                     "assessed": bool(classification),
                     "probabilities": {f["label"]: f["probability"] for f in classification.get("findings", [])}},
        "candidates": {"count": len(candidates), "labels": [c["label"] for c in candidates], "items": candidates},
        "measurements": {"ctr": round(float(ctr), 2) if isinstance(ctr, int | float) else None},
        "lesions": {"count": len(regions)},
        "volume": {"found": bool(volume.get("series_uid")), "modality": volume.get("modality"),
                   "warnings": int(volume.get("warning_count") or 0),
                   "codes": sorted({w["code"] for w in volume.get("warnings") or []})},
        "context": state.get("context") or {},
        "mode": state.get("mode"),
        "answers": state.get("answers") or {},
        "flags": {"codes": [f["code"] for f in state.get("flags", [])], "items": list(state.get("flags", []))},
        "outputs": {tool_id: True for tool_id in outputs},
        "run": {"id": state.get("run_id"), "now": now_iso()},
        "task": state.get("task"),
    }


def _call_label(tool_id: str, args: dict[str, Any], item: str | None) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    if item:
        shown = ", ".join(filter(None, [f"finding={item!r}", shown]))
    return f"{tool_id}({shown})"


class AgentRun:
    """Executes (or resumes) one run of a pipeline over one image."""

    def __init__(self, services: Services, run: dict[str, Any], pipeline: Pipeline,
                 registry: ToolRegistry | None = None) -> None:
        self.services = services
        self.store = services.store
        self.registry = registry or default_registry()
        self.pipeline = pipeline
        self.run_id = run["id"]
        self.session_id = run["session_id"]
        self.state: dict[str, Any] = run["state"]
        self.mode = self.state["mode"]
        self.recorder = TraceRecorder(self.store, self.run_id, self.session_id, self.state.get("next_seq", 1))
        self.llm: Any = None

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create(cls, services: Services, session_id: str, task: str, *, mode: str, context: dict[str, Any],
               handoff: dict[str, Any] | None, image_id: str | None, registry: ToolRegistry | None = None,
               pipeline_dirs: list | None = None) -> AgentRun:
        """A new run row (status running) for the session's image, with its pipeline chosen."""
        if mode not in MODES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        registry = registry or default_registry()
        session = services.store.get_session(session_id)
        image_id = image_id or session["current_image_id"]
        if image_id is None:
            raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, "the session has no images yet")
        image = services.store.get_image(image_id, session_id=session_id)
        pipeline = select_pipeline(registry, image["type"], context.get("pipeline"), pipeline_dirs)
        run_id = new_id()
        seed = context.get("seed", 0)
        state = {
            "version": STATE_VERSION, "run_id": run_id, "session_id": session_id, "task": task, "mode": mode,
            "context": {k: v for k, v in context.items() if k not in ("run_id", "pipeline", "seed")},
            "handoff": handoff or {}, "pipeline": pipeline.describe(), "limits": pipeline.limits,
            "image": {"image_id": image_id, "type": image["type"]}, "seed": seed if isinstance(seed, int) else 0,
            "cursor": 0, "outputs": {}, "last_ok": {}, "models": {}, "flags": [], "plan": [], "answers": {},
            "pending_request": None, "tool_calls": 0, "llm_choices": 0, "llm_available": False,
            "llm_disabled": None, "invocations": 0, "next_seq": 1, "actions": [], "started_at": now_iso(),
        }
        run = services.store.create_agent_run(session_id, run_id=run_id, task=task, mode=mode, pipeline=pipeline.id,
                                            image_id=image_id, state=state, owner=_owner())
        return cls(services, run, pipeline, registry)

    @classmethod
    def load(cls, services: Services, run_id: str, session_id: str, registry: ToolRegistry | None = None,
             pipeline_dirs: list | None = None) -> AgentRun:
        """A paused run, with the pipeline it started with (refused if that pipeline changed)."""
        registry = registry or default_registry()
        run = services.store.get_agent_run(run_id, session_id=session_id)
        recorded = run["state"]["pipeline"]
        pipeline = select_pipeline(registry, run["state"]["image"]["type"], recorded["id"], pipeline_dirs)
        if pipeline.sha256 != recorded.get("sha256"):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"pipeline {recorded['id']} changed since run {run_id} started; start a new run",
                                 run_id=run_id)
        return cls(services, run, pipeline, registry)

    # -- driving ------------------------------------------------------------------------------
    def advance(self, *, resumed: bool = False) -> dict[str, Any]:
        """Run steps until the run completes, fails, pauses for input, or (step_by_step) one step ran."""
        self.state["invocations"] = self.state.get("invocations", 0) + 1
        max_turns = (self.state.get("handoff") or {}).get("max_turns")
        started = time.perf_counter()
        try:
            if isinstance(max_turns, int) and self.state["invocations"] > max_turns:
                raise RunFailed("handoff_limit", f"the handoff allows {max_turns} turn(s); the run used them")
            self.recorder.record("run_resumed" if resumed else "run_started", status=None,
                                 arguments={"task": self.state["task"], "mode": self.mode,
                                            "pipeline": self.pipeline.id},
                                 reasoning=f"pipeline {self.pipeline.id} {self.pipeline.version} "
                                           f"({self.pipeline.source})")
            self._check_llm()
            steps = self.pipeline.steps
            while self.state["cursor"] < len(steps):
                index = self.state["cursor"]
                outcome = self._step(steps[index])
                if outcome == "need_input":
                    return self._pause("need_input")
                self.state["cursor"] = index + 1
                if outcome == "ran" and self.mode == "step_by_step" and self.state["cursor"] < len(steps):
                    return self._pause("in_progress")
            return self._finish()
        except RunFailed as failure:
            return self._fail(failure.error)
        finally:
            self.state["last_invocation_ms"] = round((time.perf_counter() - started) * 1000, 2)

    # -- the language model ---------------------------------------------------------------------
    def _check_llm(self) -> None:
        """Get the pack's language model, loading it now so a broken file is found (and traced) here."""
        if self.state.get("llm_disabled"):
            self.llm = None
            return
        started = time.perf_counter()
        if (self.state.get("context") or {}).get("use_llm") is False:
            self.llm = None
            self.state["llm_disabled"] = {"code": "disabled", "message": "the caller turned the language model off"}
            self.recorder.record("llm_check", status="skipped", latency_ms=0.0,
                                 reasoning="language model turned off (context.use_llm = false): pipeline order "
                                           "and template narrative")
            return
        try:
            llm = self.services.models.llm()
            if llm is not None:
                llm.load()
        except MedVisionError as exc:
            self.llm = None
            self.state["llm_available"] = False
            self.state["llm_disabled"] = {"code": exc.code.value, "message": exc.message}
            self._flag("llm_unavailable", f"Language model unavailable ({exc.code.value}): template narrative and "
                                          "pipeline order used.")
            self.recorder.record("llm_check", status="failed", error_type=exc.code.value, error=exc.message,
                                 latency_ms=_ms(started), reasoning="the language model could not be loaded")
            return
        self.llm = llm
        self.state["llm_available"] = llm is not None
        if llm is not None:
            described = llm.describe()
            self._note_models([{"id": described["id"], "sha256": described.get("sha256"),
                                "trained": described.get("trained"), "task": "llm"}])
        if not self.state.get("llm_checked"):
            self.state["llm_checked"] = True
            self.recorder.record("llm_check", status="ok" if llm is not None else "skipped", latency_ms=_ms(started),
                                 models=[{"id": described["id"], "sha256": described.get("sha256"),
                                          "trained": described.get("trained"), "task": "llm"}] if llm else [],
                                 reasoning="language model ready" if llm is not None else
                                 "the model pack has no language model: pipeline order and template narrative")

    # -- steps ------------------------------------------------------------------------------------
    def _step(self, step: Step) -> str:
        """Run one step: "ran", "skipped" or "need_input"."""
        facts = build_facts(self.state)
        if step.when is not None and not step.when(facts):
            self.recorder.record("step_skipped", step_id=step.id, role=step.role, status="skipped", latency_ms=0.0,
                                 reasoning=f"condition false: {step.when.text}")
            self._save()
            return "skipped"
        if step.ask and self._asks():
            waiting = self._ask(step, facts)
            if waiting:
                return "need_input"
            facts = build_facts(self.state)
            if step.ask["input_type"] == "confirm" and self.state["answers"].get(step.id) is False:
                self.recorder.record("step_skipped", step_id=step.id, role=step.role, status="skipped",
                                     latency_ms=0.0, reasoning="the user declined this step")
                self._save()
                return "skipped"
        started = time.perf_counter()
        self.recorder.record("step_started", step_id=step.id, role=step.role, status=None,
                             reasoning=step.description or None)
        statuses = self._tools(step)
        status = "failed" if "failed" in statuses else "low_confidence" if "low_confidence" in statuses else "ok"
        self.state.setdefault("step_ms", {})[step.id] = _ms(started)
        stop = None
        with self.store.db.transaction():
            self.recorder.record("step_finished", step_id=step.id, role=step.role, status=status,
                                 latency_ms=_ms(started), reasoning=self._step_reasoning(step))
            if step.role == "orchestrator" and not self.state["plan"]:
                self._plan()
            if self.pipeline.gate_after == step.id:
                stop = self._gate()
            self._save()
        if stop is not None:
            raise RunFailed("quality_gate", stop[0], step.id, None, stop[1])
        return "ran"

    def _asks(self) -> bool:
        handoff = self.state.get("handoff") or {}
        return self.mode == "interactive" or "user_confirmation" in (handoff.get("return_on") or [])

    def _ask(self, step: Step, facts: dict[str, Any]) -> bool:
        """Create or check the step's user-input request; True while the run must wait."""
        if step.id in self.state["answers"]:
            return False
        pending = self.state.get("pending_request")
        if pending and pending.get("step_id") == step.id:
            request = self.store.get_input_request(pending["request_id"])
            if request["status"] == "pending":
                return True
            answer = request["answer"] if request["status"] == "answered" else None
            self._take_answer(step, answer, request)
            return False
        options = []
        if step.ask.get("options_from") == "candidates":
            options = [{"value": c["label"], "label": f"{c['label'].replace('_', ' ')} "
                                                      f"(probability {c['probability']:.2f})"}
                       for c in facts["candidates"]["items"]]
            if not options:
                return False
            options += [{"value": "all", "label": "All of them"}, {"value": "none", "label": "None"}]
        request = self.store.create_input_request(self.session_id, step.ask["input_type"], step.ask["prompt"],
                                                  options=options, run_id=self.run_id, step_id=step.id)
        self.state["pending_request"] = {"request_id": request["id"], "step_id": step.id}
        self.recorder.record("need_input", step_id=step.id, role=step.role, status="need_input",
                             arguments={"request_id": request["id"], "input_type": step.ask["input_type"]},
                             output={"prompt": step.ask["prompt"], "options": options},
                             reasoning="waiting for the user before this step")
        return True

    def _take_answer(self, step: Step, answer: Any, request: dict[str, Any]) -> None:
        if step.ask["input_type"] == "confirm":
            value = answer if isinstance(answer, bool) else str(answer).strip().lower() in ("yes", "y", "true", "1")
            self.state["answers"][step.id] = value
        else:
            labels = [o["value"] for o in request["options"] if o["value"] not in ("all", "none")]
            picked = answer if isinstance(answer, list) else [answer]
            if "all" in picked or answer is None:
                chosen = labels
            elif "none" in picked:
                chosen = []
            else:
                wanted = {str(p).casefold() for p in picked}
                chosen = [label for label in labels if label.casefold() in wanted]
            self.state["answers"][step.id] = chosen
            self.state["answers"]["candidates"] = chosen
        self.state["pending_request"] = None
        self.recorder.record("input_answered", step_id=step.id, role=step.role, status="ok",
                             arguments={"request_id": request["id"]},
                             output={"answer": self.state["answers"][step.id]},
                             reasoning="the user answered" if answer is not None else "request cancelled: all")

    def _tools(self, step: Step) -> list[str]:
        """Run a step's tools (pipeline order, or the language model's in auto mode)."""
        pending = list(step.tools)
        statuses: list[str] = []
        while pending:
            facts = build_facts(self.state)
            for use in list(pending):
                if use.when is not None and not use.foreach and not use.when(facts):
                    pending.remove(use)
                    self._skip(step, use, f"condition false: {use.when.text}")
            ready = [u for u in pending if self._ready(u, pending)]
            if not ready:
                break
            use = self._choose(step, ready, pending, facts)
            if use is None:  # the language model said the step is done
                for left in [u for u in pending if not u.required]:
                    pending.remove(left)
                    self._skip(step, left, "not called: the planner ended the step")
                continue
            pending.remove(use)
            statuses += self._run_use(step, use)
        return statuses

    def _ready(self, use: ToolUse, pending: list[ToolUse]) -> bool:
        """A tool waits for tools of the same step whose outputs it reads."""
        tool = self.registry.get(use.tool)
        waiting = {u.tool for u in pending if u is not use}
        return not (set(tool.consumes) & waiting)

    def _skip(self, step: Step, use: ToolUse, why: str) -> None:
        tool = self.registry.get(use.tool)
        self.recorder.record("tool_call", step_id=step.id, role=step.role, tool_id=tool.id, tool_version=tool.version,
                             mcp_tools=list(tool.mcp_tools), arguments=use.args, status="skipped", latency_ms=0.0,
                             reasoning=why)

    def _choose(self, step: Step, ready: list[ToolUse], pending: list[ToolUse],
                facts: dict[str, Any]) -> ToolUse | None:
        """The next tool: pipeline order, or the language model's choice (auto mode, bounded)."""
        limit = int(self.pipeline.limits.get("max_llm_choices", 0))
        if (self.mode != "auto" or self.llm is None or step.choose != "llm" or len(ready) < 2
                or self.state["llm_choices"] >= limit):
            return ready[0]
        self.state["llm_choices"] += 1
        can_stop = not any(u.required for u in pending)
        options = [u.tool for u in ready] + (["done"] if can_stop else [])
        schema = {"type": "object", "additionalProperties": False, "required": ["tool"],
                  "properties": {"tool": {"enum": options}}}
        prompt = self._choice_prompt(step, ready, facts, can_stop)
        started = time.perf_counter()
        fields = {"step_id": step.id, "role": step.role, "arguments": {"options": options},
                  "models": self._llm_models()}
        try:
            answer = self.llm.complete(prompt, json_schema=schema, max_tokens=CHOICE_MAX_TOKENS, temperature=0.0,
                                       seed=self.state["seed"])
        except MedVisionError as exc:
            self.recorder.record("planner", status="failed", error_type=exc.code.value, error=exc.message,
                                 latency_ms=_ms(started), reasoning="the language model failed; pipeline order used",
                                 **fields)
            self.llm = None
            self.state["llm_disabled"] = {"code": exc.code.value, "message": exc.message}
            return ready[0]
        parsed = answer.get("parsed")
        choice = parsed.get("tool") if isinstance(parsed, dict) else None
        output = {"text": (answer.get("text") or "")[:300], "choice": choice, "tokens": answer.get("tokens"),
                  "finish_reason": answer.get("finish_reason")}
        if choice not in options:
            why = answer.get("parse_error") or f"choice {choice!r} is not one of the allowed tools"
            self.recorder.record("planner", status="failed", error_type="invalid_choice", error=why, output=output,
                                 latency_ms=_ms(started), reasoning=f"refused; pipeline order used ({ready[0].tool})",
                                 **fields)
            return ready[0]
        self.recorder.record("planner", status="ok", output=output, latency_ms=_ms(started),
                             reasoning=f"the language model chose {choice} among {', '.join(options)}", **fields)
        if choice == "done":
            return None
        return next(u for u in ready if u.tool == choice)

    def _choice_prompt(self, step: Step, ready: list[ToolUse], facts: dict[str, Any], can_stop: bool) -> str:
        done = [t for t in self.state["outputs"] if t in {u.tool for u in step.tools}]
        lines = [
            f"You are the {AGENTS.get(step.role, step.role)} of a radiology workstation reading a "
            f"{facts['image'].get('type')} image (view {facts['image'].get('view') or 'unknown'}).",
            f"Task: {str(self.state['task'])[:200]}",
            f"Already done in this step: {', '.join(done) or 'nothing'}.",
            "Tools you may call next:",
        ]
        lines += [f"- {u.tool}: {self.registry.get(u.tool).description}" for u in ready]
        if can_stop:
            lines.append("- done: the step is complete")
        lines.append('Answer with JSON {"tool": <one of the tools>}.')
        return "\n".join(lines) + "\n"

    def _llm_models(self) -> list[dict[str, Any]]:
        return [m for m in self.state["models"].values() if m.get("task") == "llm"]

    # -- tool calls -----------------------------------------------------------------------------
    def _run_use(self, step: Step, use: ToolUse) -> list[str]:
        """One tool entry: per item when ``foreach``; retries, fallback, required."""
        facts = build_facts(self.state)
        items: list[dict[str, Any] | None] = list(facts["candidates"]["items"]) if use.foreach else [None]
        statuses = []
        for item in items:
            if use.foreach and use.when is not None and not use.when(facts | {"finding": item}):
                self._skip(step, use, f"condition false for {item['label']}: {use.when.text}")
                continue
            event = None
            for attempt in range(1, use.retries + 2):
                event = self._call(step, use.tool, use.args, item, attempt, use.min_confidence)
                if event["status"] != "failed":
                    break
            if event["status"] == "failed" and use.fallback is not None:
                fallback_tool, fallback_args = use.fallback
                failed = event
                event = self._call(step, fallback_tool, fallback_args, item, "fallback", use.min_confidence,
                                   replaces=use.tool, reason=f"fallback after {use.tool} failed ({failed['error_type']})")
            statuses.append(event["status"])
            if event["status"] == "failed" and use.required:
                raise RunFailed("tool_failed", f"required tool {use.tool} failed: {event['error']}",
                                step.id, use.tool, event["seq"])
        return statuses

    def _call(self, step: Step, tool_id: str, args: dict[str, Any], item: dict[str, Any] | None,
              attempt: int | str, min_confidence: float | None, *, replaces: str | None = None,
              reason: str | None = None) -> dict[str, Any]:
        """Call one tool at the tool-call boundary and trace it (atomically with the tool's writes)."""
        tool = self.registry.get(tool_id)
        self.state["tool_calls"] += 1
        if self.state["tool_calls"] > int(self.pipeline.limits.get("max_tool_calls", 60)):
            raise RunFailed("budget", f"more than {self.pipeline.limits['max_tool_calls']} tool calls", step.id, tool_id)
        uses = sorted({self.state["last_ok"][t] for t in tool.consumes if t in self.state["last_ok"]})
        base = {"step_id": step.id, "role": step.role, "tool_id": tool.id, "tool_version": tool.version,
                "mcp_tools": list(tool.mcp_tools), "arguments": dict(args), "attempt": attempt,
                "item": item["label"] if item else None, "uses": uses}
        call = ToolCall(self.services, self.session_id, self.state["image"]["image_id"], self.run_id,
                        self.state["outputs"], build_facts(self.state), self.state.get("context") or {},
                        self.pipeline, item=item, llm=self.llm, seed=self.state["seed"])
        self.state["actions"].append(_call_label(tool.id, args, base["item"]))
        mark = self.recorder.mark()
        started = time.perf_counter()
        try:
            result = tool.run(call, dict(args))
            event = self._record_result(tool, base, result, started, min_confidence, reason)
        # The tool-call boundary: whatever a tool raises (engine errors, numpy, I/O, a bug)
        # becomes a traced, failed call; the run then retries, falls back or stops.
        except Exception as exc:  # noqa: BLE001
            self.recorder.rewind(mark)
            error_type = exc.code.value if isinstance(exc, MedVisionError) else type(exc).__name__
            message = exc.message if isinstance(exc, MedVisionError) else _safe_message(exc, self.services.settings.home)
            return self.recorder.record("tool_call", status="failed", error_type=error_type, error=message[:1000],
                                        latency_ms=_ms(started),
                                        reasoning=f"{tool.id} raised {error_type}", **base)
        self._store_output(tool, event, result, item, replaces)
        return event

    def _record_result(self, tool: Tool, base: dict[str, Any], result: ToolResult, started: float,
                       min_confidence: float | None, reason: str | None) -> dict[str, Any]:
        threshold = min_confidence if min_confidence is not None else float(self.pipeline.limits["min_confidence"])
        untrained = [m["id"] for m in result.models if m.get("trained") is False]
        notes = [result.reasoning] if result.reasoning else []
        if reason:
            notes.insert(0, reason)
        if result.skipped:
            status = "skipped"
        elif untrained or (result.confidence is not None and result.confidence < threshold):
            status = "low_confidence"
            if untrained:
                notes.append(f"untrained model {', '.join(untrained)}")
            if result.confidence is not None and result.confidence < threshold:
                notes.append(f"confidence {result.confidence:.2f} < {threshold:.2f}")
        else:
            status = "ok"
        output = result.output.get("summary") if tool.id == "build_report" else result.output
        event = self.recorder.record("tool_call", status=status, output=summarize(output), models=result.models,
                                     confidence=result.confidence, latency_ms=_ms(started),
                                     reasoning="; ".join(notes) or None, **base)
        for extra in result.events:
            self.recorder.record(extra.get("kind", "narrative_attempt"), **(
                {k: v for k, v in base.items() if k not in ("uses",)} | {"status": "ok", "models": result.models}
                | {k: v for k, v in extra.items() if k != "kind"}))
        return event

    def _store_output(self, tool: Tool, event: dict[str, Any], result: ToolResult, item: dict[str, Any] | None,
                      replaces: str | None) -> None:
        if event["status"] in ("failed",):
            return
        self._note_models(result.models)
        for slot in dict.fromkeys(filter(None, [tool.id, replaces])):
            if item is not None:
                bucket = self.state["outputs"].setdefault(slot, {"items": []})
                bucket["items"] = [i for i in bucket["items"] if i.get("label") != item["label"]]
                bucket["items"].append(result.output | {"label": item["label"]})
            elif event["status"] != "skipped" or slot not in self.state["outputs"]:
                self.state["outputs"][slot] = result.output
            if event["status"] != "skipped":
                self.state["last_ok"][slot] = event["seq"]

    def _note_models(self, models: list[dict[str, Any]]) -> None:
        for model in models:
            if model.get("id"):
                self.state["models"][model["id"]] = {"id": model["id"], "sha256": model.get("sha256"),
                                                     "trained": model.get("trained"), "task": model.get("task")}

    # -- plan and gate ----------------------------------------------------------------------------
    def _plan(self) -> None:
        """The orchestrator's plan: the calls it expects, conditional where facts are not known yet."""
        facts = build_facts(self.state)
        plan = []
        for step in self.pipeline.steps:
            step_known = _known(step.when)
            if step_known and step.when is not None and not step.when(facts):
                continue
            for use in step.tools:
                known = _known(use.when) and not use.foreach
                if known and use.when is not None and not use.when(facts):
                    continue
                plan.append({"step_id": step.id, "role": step.role, "tool": use.tool, "required": use.required,
                             "foreach": use.foreach,
                             "conditional": not (step_known and known) or use.foreach is not None
                             or step.choose == "llm" and self.mode == "auto" and self.llm is not None
                             and not use.required})
        self.state["plan"] = plan
        route = " -> ".join(dict.fromkeys(p["step_id"] for p in plan))
        self.recorder.record("plan", step_id="orchestrator", role="orchestrator", status="ok",
                             output={"plan": plan},
                             reasoning=f"{facts['image'].get('type')} image, view {facts['image'].get('view') or 'unknown'}"
                                       f": pipeline {self.pipeline.id}: {route}")

    def _gate(self) -> tuple[str, int] | None:
        """Apply the quality gate's checks; ``(message, seq)`` when one of them stops the run."""
        facts = build_facts(self.state)
        hits = [check for check in self.pipeline.gate_checks if check.when(facts)]
        for check in hits:
            self._flag(check.id, check.message, check.action)
        stop = next((c for c in hits if c.action == "stop"), None)
        status = "failed" if stop else "low_confidence" if hits else "ok"
        reasoning = "; ".join(f"{c.id} ({c.action})" for c in hits) or "all checks passed"
        event = self.recorder.record("gate", step_id=self.pipeline.gate_after, status=status,
                                     output={"flags": [{"code": c.id, "action": c.action} for c in hits]},
                                     reasoning=f"quality gate: {reasoning}")
        return (stop.message, event["seq"]) if stop is not None else None

    def _flag(self, code: str, message: str, action: str = "flag") -> None:
        if code not in {f["code"] for f in self.state["flags"]}:
            self.state["flags"].append({"code": code, "message": message, "action": action})

    def _step_reasoning(self, step: Step) -> str:
        events = [e for e in self.store.list_agent_trace(self.run_id) if e.get("step_id") == step.id
                  and e["kind"] == "tool_call" and e["status"] != "skipped"]
        return "; ".join(f"{e['tool_id']}: {e['reasoning']}" for e in events if e.get("reasoning"))[:2000] or \
            "no tool ran"

    # -- the end of an invocation --------------------------------------------------------------------
    def _save(self) -> None:
        self.state["next_seq"] = self.recorder.next_seq
        self.store.update_agent_run(self.run_id, state=self.state)

    def _pause(self, status: str) -> dict[str, Any]:
        with self.store.db.transaction():
            self.state["next_seq"] = self.recorder.next_seq + 1
            self.recorder.record("run_finished", status=status, latency_ms=None,
                                 reasoning="waiting for the user" if status == "need_input" else
                                 f"paused after step {self.pipeline.steps[self.state['cursor'] - 1].id}")
            self.store.update_agent_run(self.run_id, status=status, state=self.state)
            response = self.response(status)
            ConversationMemory(self.store).add(self.session_id, "agent", "run_" + status, response["result"]["summary"],
                                      sources=[{"run_id": self.run_id}], run_id=self.run_id,
                                      image_id=self.state["image"]["image_id"])
        return response

    def _finish(self) -> dict[str, Any]:
        report = self._final_report()
        with self.store.db.transaction():
            self.state["next_seq"] = self.recorder.next_seq + 1
            self.recorder.record("run_finished", status="completed", latency_ms=self._total_ms(),
                                 reasoning=f"{self.state['tool_calls']} tool calls; flags: "
                                           f"{', '.join(f['code'] for f in self.state['flags']) or 'none'}")
            response = self.response("completed", report)
            self.store.update_agent_run(self.run_id, status="completed", state=self.state, report=report,
                                        result=response)
            self.store.cancel_input_requests(self.run_id)
            ConversationMemory(self.store).add(self.session_id, "agent", "run_completed", response["result"]["summary"],
                                      sources=[{"run_id": self.run_id, "tool_id": "build_report"}],
                                      run_id=self.run_id, image_id=self.state["image"]["image_id"])
        return response

    def _fail(self, error: dict[str, Any]) -> dict[str, Any]:
        with self.store.db.transaction():
            self.state["next_seq"] = self.recorder.next_seq + 1
            self.recorder.record("run_finished", status="failed", step_id=error.get("step_id"),
                                 tool_id=error.get("tool_id"), error_type=error["type"], error=error["message"],
                                 latency_ms=self._total_ms(), reasoning="the run stopped")
            response = self.response("failed", error=error)
            self.store.update_agent_run(self.run_id, status="failed", state=self.state, error=error, result=response)
            self.store.cancel_input_requests(self.run_id)
            ConversationMemory(self.store).add(self.session_id, "agent", "run_failed", response["result"]["summary"],
                                      sources=[{"run_id": self.run_id}], run_id=self.run_id,
                                      image_id=self.state["image"]["image_id"])
        return response

    def _total_ms(self) -> float:
        return round(sum(self.state.get("step_ms", {}).values()), 2)

    def _final_report(self) -> dict[str, Any] | None:
        built = self.state["outputs"].get("build_report")
        if not built:
            return None
        report = dict(built["report"])
        written = self.state["outputs"].get("write_narrative")
        if written:
            report["narrative"] = {"findings": written["narrative"].get("findings", ""),
                                   "impression": written["narrative"].get("impression", ""),
                                   "source": written.get("source", "template"),
                                   "guard": {"status": (written.get("guard") or {}).get("status") or "fallback",
                                             "violations": (written.get("guard") or {}).get("violations") or []}}
        validate_report(report)
        return report

    def response(self, status: str, report: dict[str, Any] | None = None,
                  error: dict[str, Any] | None = None) -> dict[str, Any]:
        events = self.store.list_agent_trace(self.run_id)
        outputs = self.state["outputs"]
        facts = build_facts(self.state)
        annotations = []
        for region in (outputs.get("region_analysis") or {}).get("items", []):
            if region.get("annotation_id"):
                annotations.append({"annotation_id": region["annotation_id"], "label": region["label"],
                                    "kind": "finding", "bbox": region.get("bbox"), "side": region.get("side"),
                                    "zone": region.get("zone"), "location": region.get("location")})
        if (outputs.get("user_region") or {}).get("annotation_id"):
            user = outputs["user_region"]
            annotations.append({"annotation_id": user["annotation_id"], "label": "user selection",
                                "kind": "user_region", "bbox": user.get("bbox"), "side": user.get("side"),
                                "zone": None, "location": user.get("location")})
        suggestions = (outputs.get("suggest_regions") or {}).get("suggestions", [])
        for suggestion in suggestions:
            annotations.append({"annotation_id": suggestion["annotation_id"], "label": suggestion["label"],
                                "kind": "suggestion", "bbox": suggestion["bbox"], "side": suggestion["side"],
                                "zone": suggestion["zone"], "location": suggestion["note"]})
        follow_up = [m["suggestion"] + f" (source: {m['source']})"
                     for m in (outputs.get("management_rules") or {}).get("matched", [])]
        follow_up += [s["note"] for s in suggestions]
        response = {
            "status": status,
            "run_id": self.run_id,
            "session_id": self.session_id,
            "image_id": self.state["image"]["image_id"],
            "pipeline": self.pipeline.describe(),
            "result": {"summary": self._summary(status, facts, report, error),
                       "findings": [f for f in (report or {}).get("findings", []) if f["present"]]
                       or facts["findings"]["items"],
                       "annotations": annotations, "report": report},
            "actions_taken": list(self.state["actions"]),
            "follow_up_suggestions": follow_up,
            "trace_summary": {"run_id": self.run_id, **totals(events), "total_ms": self._total_ms(),
                              "steps": [{k: s[k] for k in ("step_id", "agent", "status", "latency_ms")}
                                        | {"tools": [c["tool_id"] + (" (skipped)" if c["status"] == "skipped" else "")
                                                     for c in s["tool_calls"]]}
                                        for s in step_summaries(events)],
                              "flags": list(self.state["flags"])},
            "flags": list(self.state["flags"]),
            "model_trained": facts["models"]["trained"],
            "disclaimer": DISCLAIMER,
        }
        if status == "in_progress":
            next_step = self.pipeline.steps[self.state["cursor"]]
            response["next_step"] = {"step_id": next_step.id, "role": next_step.role,
                                     "tools": [u.tool for u in next_step.tools]}
        if status == "need_input":
            request = self.store.get_input_request(self.state["pending_request"]["request_id"])
            response["request"] = {"request_id": request["id"], "input_type": request["input_type"],
                                   "prompt": request["prompt"], "options": request["options"],
                                   "step_id": request["step_id"]}
        if error is not None:
            response["error"] = error
        return response

    def _summary(self, status: str, facts: dict[str, Any], report: dict[str, Any] | None,
                 error: dict[str, Any] | None) -> str:
        if status == "failed":
            where = " at " + "/".join(filter(None, [error.get("step_id"), error.get("tool_id")])) \
                if error and (error.get("step_id") or error.get("tool_id")) else ""
            return f"The run failed{where}: {error['message'] if error else 'unknown error'}"
        if status == "need_input":
            return "Waiting for the user: " + self.store.get_input_request(
                self.state["pending_request"]["request_id"])["prompt"]
        if status == "in_progress":
            return f"Step {self.pipeline.steps[self.state['cursor'] - 1].id} done; next: " \
                   f"{self.pipeline.steps[self.state['cursor']].id}."
        # Deterministic from the structured report (the narrative is in the report, guarded).
        parts = []
        if report is not None:
            present = []
            for diagnosis in report["diagnoses"]:
                finding = next((f for f in report["findings"] if f["label"] == diagnosis["disease"]), {})
                where = " ".join(filter(None, [finding.get("side"), f"{finding['zone']} zone"
                                               if finding.get("zone") else None]))
                present.append(f"{diagnosis['disease'].replace('_', ' ')} {diagnosis['confidence']:.2f}"
                               + (f" ({where})" if where else ""))
            if not report["findings"]:
                parts.append("No finding was assessed: no image analysis model ran on this image.")
            else:
                parts.append("Findings above threshold: " + ", ".join(present) + "." if present else
                             "No finding above threshold.")
            parts.append(f"Follow-up: {report['management']['suggestion']}")
        if self.state["flags"]:
            parts.append("Flags: " + "; ".join(f["message"] for f in self.state["flags"]))
        summary = " ".join(parts) or "Run completed."
        return qualified(summary, False) if report is not None and models_untrained(report) else summary


_ABSOLUTE_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/](?:[^\s'\"\\/:]+[\\/])+[^\s'\":]*")


def _safe_message(exc: BaseException, home: Path) -> str:
    """An unexpected exception's message with absolute paths outside the data dir cut to their names."""
    text = str(exc) or type(exc).__name__
    home_text = str(home)

    def shorten(match: re.Match) -> str:
        path = match.group(0)
        return path if path.startswith(home_text) else PureWindowsPath(path).name or path
    return _ABSOLUTE_PATH.sub(shorten, text)


def _known(condition: Condition | None) -> bool:
    return condition is None or condition.names <= PLAN_TIME_FACTS


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
