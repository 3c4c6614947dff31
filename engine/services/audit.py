"""Which Engine calls touch patient data, and the audit record each one leaves.

:data:`ACTIONS` maps a facade method to its ATNA event and action code; :func:`audited`
wraps those methods of the ``Engine`` class once, at import, so ``engine/api.py`` stays
one-line delegations. Every public facade method is either in :data:`ACTIONS` or in
:data:`NOT_AUDITED` with the reason (a test keeps it so). Reads that are only queries
(statuses, lists, summaries) are recorded when an MCP client asks: the desktop repeats
them on every refresh, and what it shows a person is recorded when the image is opened
(``decoded_image``). A call that succeeded but whose record cannot be written ends with
``DATABASE_ERROR`` (no access goes unrecorded silently); a failed call keeps its own error.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.store.audit import AuditEntry, AuditEvent, AuditLog
from engine.store.audit.codes import (
    FRONT_ENDS,
    MAJOR_FAILURE,
    MINOR_FAILURE,
    SERIOUS_FAILURE,
    SUCCESS,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    """The record a facade method leaves: event, action code, and when it is recorded."""

    event: AuditEvent
    code: str
    mcp_only: bool = False  # a query: recorded when an MCP client asks
    sessions_in: str | None = None  # a result key listing the sessions it touched (one record each)
    details: tuple[str, ...] = ()  # arguments worth recording (small values, never a path or free text)


_Q = Action(AuditEvent.QUERY, "E", mcp_only=True)
_RUN = Action(AuditEvent.INSTANCES_ACCESSED, "E")

ACTIONS: dict[str, Action] = {
    "create_study_session": Action(AuditEvent.PATIENT_RECORD, "C"),
    "delete_session": Action(AuditEvent.STUDY_DELETED, "D"),
    "purge_expired_sessions": Action(AuditEvent.STUDY_DELETED, "D", sessions_in="sessions"),
    "pin_session": Action(AuditEvent.PATIENT_RECORD, "U"),
    "add_image_to_session": Action(AuditEvent.IMPORT, "C"),
    "decoded_image": Action(AuditEvent.INSTANCES_ACCESSED, "R"),
    "analyze_image": _RUN,
    "analyze_selected_region": _RUN,
    "segment_interactive": _RUN,
    "analyze_with_rag": _RUN,
    "search_similar_cases": _RUN,
    "invoke_medical_agent": Action(AuditEvent.INSTANCES_ACCESSED, "E", details=("mode",)),
    "ask_about_image": _RUN,
    "organ_masks": Action(AuditEvent.INSTANCES_ACCESSED, "R", mcp_only=True),
    "add_annotation": Action(AuditEvent.INSTANCES_ACCESSED, "C"),
    "update_annotation": Action(AuditEvent.INSTANCES_ACCESSED, "U"),
    "delete_annotation": Action(AuditEvent.INSTANCES_ACCESSED, "D"),
    "accept_mask": Action(AuditEvent.INSTANCES_ACCESSED, "C"),
    "push_to_canvas": Action(AuditEvent.INSTANCES_ACCESSED, "U"),
    "get_volume": Action(AuditEvent.INSTANCES_ACCESSED, "R", details=("series_uid",)),
    "volume_source_headers": Action(AuditEvent.INSTANCES_ACCESSED, "R", details=("series_uid",)),  # for a SEG/SR
    "volume_slice": Action(AuditEvent.INSTANCES_ACCESSED, "R", mcp_only=True),  # each slice; get_volume opens
    "volume_roi": _RUN,
    "segment_volume": _RUN,
    "list_series": _Q,
    "list_priors": _Q,
    "study_facts": Action(AuditEvent.PATIENT_RECORD, "R"),
    "record_priors": Action(AuditEvent.PATIENT_RECORD, "U"),
    "compare_with_prior": _RUN,
    "compare_images": Action(AuditEvent.INSTANCES_ACCESSED, "R"),
    "export_study": Action(AuditEvent.EXPORT, "R", details=("format", "include_identifiers", "include_images")),
    "get_visualization": Action(AuditEvent.EXPORT, "R"),
    "export_trace": Action(AuditEvent.EXPORT, "R", details=("run_id",)),
    "send_results_to": Action(AuditEvent.EXPORT, "R", details=("formats",)),
    "list_sessions": _Q,
    "get_session_status": _Q,
    "get_analysis_summary": _Q,
    "latest_analysis": _Q,
    "get_annotations": _Q,
    "get_canvas_state": _Q,
    "agent_messages": _Q,
    "get_agent_run": _Q,
}

#: Public facade methods that leave no record, and why.
NOT_AUDITED: dict[str, str] = {
    "close": "no patient data", "settings": "configuration", "store": "an object, not a call",
    "models": "an object", "agent": "an object", "canvas": "an object", "segmenter": "an object",
    "library": "an object",
    "events_since": "ids and kinds only, polled by every front-end",
    "last_event_id": "an id", "claim_job": "queue bookkeeping", "finish_job": "queue bookkeeping",
    "requeue_stale_jobs": "queue bookkeeping", "switch_image": "focus only; the image opened is recorded",
    "check_image_file": "a file's size and kind, before anything is read",
    "build_rag_index": "reference cases, not a patient's data",
    "similar_case_thumbnails": "reference cases, not a patient's data",
    "get_agent_capabilities": "no patient data", "request_user_input": "a prompt to the user",
    "get_user_input": "the user's answer to a prompt", "answer_user_input": "the user's answer to a prompt",
    "sync_canvas_state": "view state (zoom, tool), polled", "model_status": "no patient data",
}


def outcome_of(exc: BaseException | None) -> tuple[int, str | None]:
    """RFC 3881 outcome of a call: success; minor (the caller's input); serious (the engine could
    not do it); major (an unforeseen failure). The detail is the error code or type, never a message."""
    if exc is None:
        return SUCCESS, None
    if isinstance(exc, MedVisionError):
        serious = exc.code in _SERIOUS
        return (SERIOUS_FAILURE if serious else MINOR_FAILURE), exc.code.value
    return MAJOR_FAILURE, type(exc).__name__


_SERIOUS = frozenset({ErrorCode.MODEL_LOAD_ERROR, ErrorCode.MODEL_INTEGRITY_ERROR, ErrorCode.INFERENCE_ERROR,
                      ErrorCode.GPU_OOM, ErrorCode.EXPORT_FAILED, ErrorCode.DATABASE_ERROR, ErrorCode.DISK_FULL})


class AuditTrail:
    """Records the facade's calls of one process: its front-end and (MCP) client, over the log."""

    def __init__(self, log: AuditLog, settings: Settings) -> None:
        self.log = log
        log.enabled = settings.audit_enabled
        log.identifiers = frozenset(settings.audit_identifiers)
        self.front_end = "api"
        self.client: str | None = None

    def identify(self, front_end: str, client: str | None = None) -> None:
        """Name the front-end (cli, desktop, mcp, node, agent) and, for MCP, the client."""
        if front_end not in FRONT_ENDS:
            raise ValueError(f'Argument "front_end" must be one of {", ".join(sorted(FRONT_ENDS))}')
        self.front_end = front_end
        if client is not None:
            self.client = client[:200]

    def record(self, event: AuditEvent, code: str, operation: str, *, outcome: int = SUCCESS,
               outcome_detail: str | None = None, session_id: str | None = None, image_id: str | None = None,
               **details: Any) -> None:
        """Append one record for this process's front-end and client."""
        self.log.record(AuditEntry(self.front_end, event, code, operation, outcome, outcome_detail, self.client,
                                   session_id=session_id, image_id=image_id, details=details))

    def call(self, name: str, action: Action, arguments: dict[str, Any], run: Callable[[], Any]) -> Any:
        """Run a facade call and record it (also when it fails)."""
        if not self.log.enabled or (action.mcp_only and self.front_end != "mcp"):
            return run()
        session_id, image_id = _ids(arguments, None)
        details = {name: arguments[name] for name in action.details if arguments.get(name) is not None}
        if action.code == "D":  # look the study up while the rows still exist
            self.log.identifiers_of(session_id, image_id)
        try:
            result = run()
        except BaseException as exc:
            outcome, detail = outcome_of(exc)
            try:
                self.record(action.event, action.code, name, outcome=outcome, outcome_detail=detail,
                            session_id=session_id, image_id=image_id, **details)
            except Exception:  # noqa: BLE001 - the call's own error is the one to report (a full disk: both)
                log.exception("the audit record of a failed %s could not be written", name)
            raise
        if action.sessions_in and isinstance(result, dict):  # one record per session (none for a dry run)
            for item in () if result.get("dry_run") else result.get(action.sessions_in) or ():
                self.record(action.event, action.code, name, session_id=_session_of(item))
            return result
        session_id, image_id = _ids(arguments, result)
        self.record(action.event, action.code, name, session_id=session_id, image_id=image_id, **details)
        return result


def _session_of(item: Any) -> str | None:
    return item.get("session_id") if isinstance(item, dict) else str(item)


def _ids(arguments: dict[str, Any], result: Any) -> tuple[str | None, str | None]:
    """The session and image a call names, from its arguments, else its result."""
    found = result if isinstance(result, dict) else {}
    if isinstance(result, tuple) and result and isinstance(result[0], dict):  # decoded_image: (row, pixels)
        found = {"session_id": result[0].get("session_id"), "image_id": result[0].get("id")}
    session_id = arguments.get("session_id") or found.get("session_id")
    image_id = arguments.get("image_id") or found.get("image_id")
    return (str(session_id) if session_id else None), (str(image_id) if image_id else None)


def audited(cls: type) -> type:
    """Wrap each method of ``cls`` named in :data:`ACTIONS` (absent ones are skipped) so that a call
    is recorded through the instance's ``audit`` (an :class:`AuditTrail`)."""
    for name, action in ACTIONS.items():
        method = cls.__dict__.get(name)
        if method is not None:
            setattr(cls, name, _wrap(name, action, method))
    return cls


def _wrap(name: str, action: Action, method: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(self, *args, **kwargs).arguments
        return self.audit.call(name, action, bound, lambda: method(self, *args, **kwargs))

    return wrapper
