"""The medical agent behind the Engine's agent methods (A2A and MCP front door).

:class:`MedicalAgent` is what ``Engine.invoke_medical_agent``, ``ask_about_image``,
``get_agent_capabilities``, ``request_user_input`` / ``get_user_input`` /
``answer_user_input`` and ``export_trace`` delegate to.

Resuming: a call with ``context={"run_id": ...}`` continues that run; a
``step_by_step`` or ``interactive`` call on a session whose latest run of the same
mode is paused (``in_progress`` / ``need_input``) continues it too. ``auto`` always
starts a new run. A paused ``need_input`` run whose request is still pending answers
``need_input`` again with the same request, without running anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.agent.conversation import ask_about_image
from engine.agent.memory import ConversationMemory
from engine.agent.pipeline import load_pipelines
from engine.agent.toolkit import ToolRegistry
from engine.agent.tools import default_registry
from engine.agent.trace import export_trace
from engine.agent.workflow import MODES, AgentRun
from engine.errors import ErrorCode, MedVisionError

if TYPE_CHECKING:
    from engine.services import Services

TASK_MAX_CHARS = 2000
#: What a caller may ask for; every task runs the image type's pipeline, these say which parts matter.
TASKS = (
    {"id": "full_analysis", "description": "Diagnose an image: quality, findings, zones, measurements, follow-up, "
                                           "guarded report (the image type's pipeline)"},
    {"id": "region_analysis", "description": "Analyse the region the user selected (context.user_selection) "
                                             "within the same run, with related-region suggestions"},
    {"id": "question", "description": "Answer a question about an image from its structured results "
                                      "(ask_about_image), citing the tool outputs"},
    {"id": "report", "description": "A structured report (report.schema.json) with a guarded narrative"},
)
INPUT_TYPES = ("select_region", "confirm", "choose", "draw")


class MedicalAgent:
    """The agent over one Engine."""

    def __init__(self, services: Services, registry: ToolRegistry | None = None) -> None:
        self.services = services
        self.registry = registry or default_registry()

    # -- runs ------------------------------------------------------------------------------------
    def invoke(self, session_id: str, task: str, context: dict[str, Any] | None = None, mode: str = "auto",
               handoff: dict[str, Any] | None = None) -> dict[str, Any]:
        """Delegate an analysis task to the built-in medical agent (A2A).

        Parameters
        ----------
        task:
            What to do, in words (recorded in the conversation memory and the trace).
        context:
            ``user_selection`` (a region dict), ``clinical_history`` (free text, names and
            ids scrubbed), ``image_id`` (default: the session's current image),
            ``pipeline`` (a pipeline id), ``run_id`` (resume that run), ``seed``,
            ``auto_suggest`` (bool, or ``{"min_confidence", "max_suggestions"}``).
        mode:
            ``auto`` (the whole pipeline; the language model may order a step's tools),
            ``interactive`` (pauses with ``need_input`` and a user-input request where the
            pipeline asks), ``step_by_step`` (returns ``in_progress`` after each step; the
            next call resumes).
        handoff:
            ``{"return_on": ["user_confirmation", "analysis_complete"], "max_turns": n,
            "preserve_context": bool}``.

        Returns
        -------
        dict
            ``status`` (completed / need_input / in_progress / failed), ``run_id``,
            ``result`` (``summary``, ``findings``, ``annotations``, ``report``),
            ``actions_taken``, ``follow_up_suggestions``, ``trace_summary``, ``flags``
            and, by status, ``request``, ``next_step`` or ``error``.
        """
        if not isinstance(task, str) or not task.strip():
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "task must be a non-empty string")
        if len(task) > TASK_MAX_CHARS:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"task longer than {TASK_MAX_CHARS} characters")
        if mode not in MODES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if context is not None and not isinstance(context, dict):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "context must be an object")
        if handoff is not None and not isinstance(handoff, dict):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "handoff must be an object")
        context = dict(context or {})
        self.services.store.get_session(session_id)
        run_id = context.get("run_id") or self._paused_run(session_id, mode)
        memory = ConversationMemory(self.services.store)
        if run_id is not None:
            run = AgentRun.load(self.services, run_id, session_id, self.registry)
            if run.state["mode"] != mode and context.get("run_id") is None:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"run {run_id} runs in {run.state['mode']} mode")
            status = self.services.store.get_agent_run(run_id)["status"]
            if status not in ("in_progress", "need_input"):
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"run {run_id} is {status}: it cannot be resumed",
                                     run_id=run_id)
            pending = run.state.get("pending_request")
            if status == "need_input" and pending and \
                    self.services.store.get_input_request(pending["request_id"])["status"] == "pending":
                return run.response("need_input")
            memory.add(session_id, "user", "task", task, run_id=run_id, image_id=run.state["image"]["image_id"])
            self.services.store.update_agent_run(run_id, status="running")
            return self._advance(run, resumed=True)
        image_id = context.get("image_id")
        run = AgentRun.create(self.services, session_id, task, mode=mode, context=context, handoff=handoff,
                              image_id=image_id, registry=self.registry)
        memory.add(session_id, "user", "task", task, run_id=run.run_id, image_id=run.state["image"]["image_id"])
        return self._advance(run, resumed=False)

    def _advance(self, run: AgentRun, *, resumed: bool) -> dict[str, Any]:
        try:
            return run.advance(resumed=resumed)
        except MedVisionError as exc:
            # Outside any tool (the store, a pipeline that changed): close the run as failed.
            error = {"type": exc.code.value, "message": exc.message, "step_id": None, "tool_id": None, "seq": None}
            self.services.store.update_agent_run(run.run_id, status="failed", error=error)
            raise

    def _paused_run(self, session_id: str, mode: str) -> str | None:
        if mode == "auto":
            return None
        paused = [r for r in self.services.store.list_agent_runs(session_id)
                  if r["status"] in ("in_progress", "need_input") and r["mode"] == mode]
        return paused[-1]["id"] if paused else None

    def get_run(self, session_id: str, run_id: str) -> dict[str, Any]:
        """A run's status, result and report."""
        run = self.services.store.get_agent_run(run_id, session_id=session_id)
        return {"run_id": run_id, "session_id": session_id, "status": run["status"], "mode": run["mode"],
                "task": run["task"], "pipeline": run["pipeline"], "result": run["result"], "report": run["report"],
                "error": run["error"], "created_at": run["created_at"], "updated_at": run["updated_at"]}

    # -- trace -----------------------------------------------------------------------------------
    def export_trace(self, run_id: str, path: str | Path | None = None, session_id: str | None = None) -> dict:
        """The run's trace (``trace.schema.json``); also written to ``path`` when given."""
        trace = export_trace(self.services.store, run_id, session_id)
        if path is not None:
            target = Path(path)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary = target.with_name(target.name + ".tmp")
                temporary.write_text(json.dumps(trace, indent=2, ensure_ascii=False))
                temporary.replace(target)
            except OSError as exc:
                raise MedVisionError(ErrorCode.EXPORT_FAILED, f"cannot write the trace to {target.name}: "
                                                              f"{exc.strerror}") from exc
            trace = trace | {"path": str(target)}
        return trace

    # -- user input ------------------------------------------------------------------------------
    def request_user_input(self, session_id: str, input_type: str, prompt: str,
                           options: list[dict] | None = None) -> dict[str, Any]:
        """A pending request the canvas shows (an external agent's, not tied to a run)."""
        request = self.services.store.create_input_request(session_id, input_type, prompt, options=options)
        return _request(request)

    def get_user_input(self, request_id: str) -> dict[str, Any]:
        """A request and, once answered, its ``user_input``."""
        return _request(self.services.store.get_input_request(request_id))

    def answer_user_input(self, request_id: str, answer: Any) -> dict[str, Any]:
        """Answer a pending request; a run waiting on it resumes at its next invoke."""
        request = self.services.store.get_input_request(request_id)
        if request["input_type"] == "choose" and request["options"]:
            values = {str(o.get("value")).casefold() for o in request["options"] if isinstance(o, dict)}
            picked = answer if isinstance(answer, list) else [answer]
            unknown = [p for p in picked if str(p).casefold() not in values]
            if unknown:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                     f"answer {unknown[0]!r} is not one of the options "
                                     f"({', '.join(sorted(values))})")
        try:
            json.dumps(answer)
        except (TypeError, ValueError) as exc:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"the answer must be plain JSON ({exc})") from exc
        answered = self.services.store.answer_input_request(request_id, answer)
        out = _request(answered)
        if answered["run_id"]:
            out["resume"] = {"run_id": answered["run_id"],
                             "how": "call invoke_medical_agent with context.run_id (or the same mode) to continue"}
        return out

    # -- questions ----------------------------------------------------------------------------------
    def ask(self, session_id: str, question: str, image_id: str | None = None,
            include_context: bool = True) -> dict[str, Any]:
        """See :func:`engine.agent.conversation.ask_about_image`."""
        return ask_about_image(self.services, session_id, question, image_id, include_context)

    def memory(self, session_id: str) -> dict[str, Any]:
        """The session's conversation memory (summary + newest turns)."""
        self.services.store.get_session(session_id)
        return ConversationMemory(self.services.store).context(session_id)

    def messages(self, session_id: str, last: int = 20) -> dict[str, Any]:
        """The newest conversation turns and the pending user-input requests of a session."""
        self.services.store.get_session(session_id)
        return {"session_id": session_id, "turns": self.services.store.list_agent_turns(session_id)[-last:],
                "pending_input_requests": self.services.store.list_input_requests(session_id, status="pending")}

    # -- capabilities --------------------------------------------------------------------------------
    def capabilities(self) -> dict[str, Any]:
        """Tasks, image types, tools (with versions), pipelines and models."""
        pipelines = load_pipelines(self.registry)
        image_types = sorted({t for p in pipelines for t in p.image_types if t != "*"})
        pack = self.services.models.pack
        models = [e.describe() for e in pack.entries]
        llm_entry = self.services.models.entry("llm")
        agent_model = None
        if llm_entry is not None:
            agent_model = llm_entry.describe() | {"loaded": llm_entry.id in self.services.models.loaded(),
                                                  "use": "tool choice in auto mode, narrative, answers"}
        from engine.vocabulary import IMAGE_TYPES

        return {
            "capabilities": list(TASKS),
            "modes": list(MODES),
            "supported_modalities": image_types,
            "image_types": {t: next((p.id for p in pipelines if t in p.image_types),
                                    next((p.id for p in pipelines if "*" in p.image_types), None))
                            for t in IMAGE_TYPES},
            "available_tools": self.registry.describe(),
            "pipelines": [p.describe() | {"steps": [{"id": s.id, "role": s.role, "tools": [u.tool for u in s.tools]}
                                                    for s in p.steps]} for p in pipelines],
            "agent_model": agent_model,
            "models": models,
            "loaded_models": self.services.models.loaded(),
            "model_trained": pack.trained,
            "input_types": list(INPUT_TYPES),
        }


def _request(row: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": row["id"], "session_id": row["session_id"], "run_id": row["run_id"],
            "step_id": row["step_id"], "input_type": row["input_type"], "prompt": row["prompt"],
            "options": row["options"], "status": row["status"], "user_input": row["answer"],
            "created_at": row["created_at"], "answered_at": row["answered_at"]}
