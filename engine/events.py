"""The store's event catalogue: every kind of event, declared once, with its payload type.

Writers append an event in the same transaction as the change it announces
(:meth:`engine.store.events.EventLog.append`); readers (the desktop's sync timer, the
MCP server's resource notifications, ``dicom-node status``) follow the ``events``
table from the last id they saw and match on these members, never on string
literals. ``EventKind`` is a :class:`~enum.StrEnum`, so a member equals the text
stored in the ``kind`` column and rows written by older versions read back as the
same member.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict


class EventKind(StrEnum):
    """Every event kind the store writes. The value is the stored text; its prefix is the aggregate."""

    SESSION_CREATED = "session.created"
    SESSION_DELETED = "session.deleted"
    SESSION_CURRENT_IMAGE = "session.current_image"
    SESSION_PRIORS = "session.priors"
    SESSION_PINNED = "session.pinned"
    IMAGE_ADDED = "image.added"
    ANALYSIS_CREATED = "analysis.created"
    ANNOTATION_CREATED = "annotation.created"
    ANNOTATION_UPDATED = "annotation.updated"
    ANNOTATION_DELETED = "annotation.deleted"
    MASKS_CREATED = "masks.created"
    JOB_QUEUED = "job.queued"
    JOB_RUNNING = "job.running"
    JOB_DONE = "job.done"
    JOB_FAILED = "job.failed"
    DICOM_ASSOCIATION = "dicom.association"
    DICOM_DUPLICATE = "dicom.duplicate"
    DICOM_OUTBOX_QUEUED = "dicom.outbox_queued"
    DICOM_OUTBOX_SENT = "dicom.outbox_sent"
    DICOM_OUTBOX_PENDING = "dicom.outbox_pending"
    DICOM_OUTBOX_FAILED = "dicom.outbox_failed"
    EXPORT_CREATED = "export.created"
    AGENT_RUN_CREATED = "agent.run_created"
    AGENT_RUN_UPDATED = "agent.run_updated"
    AGENT_TRACE = "agent.trace"
    AGENT_TURN = "agent.turn"
    AGENT_INPUT_REQUESTED = "agent.input_requested"
    AGENT_INPUT_ANSWERED = "agent.input_answered"
    AGENT_INPUT_CANCELLED = "agent.input_cancelled"
    CANVAS_STATE_SYNCED = "canvas.state_synced"
    CANVAS_LAYER_ADDED = "canvas.layer_added"
    CANVAS_LAYER_UPDATED = "canvas.layer_updated"
    CANVAS_LAYER_REMOVED = "canvas.layer_removed"
    CANVAS_HIGHLIGHT = "canvas.highlight"
    CANVAS_ANIMATE = "canvas.animate"
    CANVAS_MESSAGE = "canvas.message"
    CANVAS_ANNOTATIONS_ADDED = "canvas.annotations_added"

    @property
    def aggregate(self) -> str:
        """The part before the dot: session, image, annotation, job, dicom, agent, canvas, ..."""
        return self.value.split(".", 1)[0]

    @classmethod
    def job(cls, status: str) -> EventKind:
        """The event for a job reaching ``status`` (queued, running, done, failed)."""
        return cls(f"job.{status}")

    @classmethod
    def outbox(cls, state: str) -> EventKind:
        """The event for an outbox item reaching ``state`` (queued, sent, pending, failed)."""
        return cls(f"dicom.outbox_{state}")


#: Events that change what a session's worklist entry shows.
WORKLIST_KINDS = frozenset({EventKind.SESSION_CREATED, EventKind.SESSION_DELETED, EventKind.SESSION_PINNED,
                            EventKind.SESSION_PRIORS,
                            EventKind.IMAGE_ADDED,
                            EventKind.ANALYSIS_CREATED, EventKind.JOB_QUEUED, EventKind.JOB_RUNNING,
                            EventKind.JOB_DONE, EventKind.JOB_FAILED})
ANNOTATION_KINDS = frozenset({EventKind.ANNOTATION_CREATED, EventKind.ANNOTATION_UPDATED,
                              EventKind.ANNOTATION_DELETED})
JOB_KINDS = frozenset({EventKind.JOB_QUEUED, EventKind.JOB_RUNNING, EventKind.JOB_DONE, EventKind.JOB_FAILED})


# -- payloads (what each kind's ``payload`` holds) -------------------------------------
class SessionPayload(TypedDict):
    session_id: str
    source: NotRequired[str]
    #: ``session.deleted``: ``deleted`` (asked for) or ``expired`` (purged by the retention policy).
    reason: NotRequired[str]
    #: ``session.pinned``: whether the session is now pinned.
    pinned: NotRequired[bool]


class PriorsPayload(TypedDict):
    """The session's relevant priors were found (and those in the store are ready to compare)."""

    session_id: str
    count: int
    prior_session_ids: list[str]


class CurrentImagePayload(TypedDict):
    image_id: str


class ImageAddedPayload(TypedDict):
    image_id: str
    type: str | None
    source: NotRequired[str]
    sop_instance_uid: NotRequired[str]


class AnalysisPayload(TypedDict):
    analysis_id: str
    image_id: str
    kind: str


class AnnotationPayload(TypedDict):
    annotation_id: str
    image_id: NotRequired[str]
    source: NotRequired[str]
    type: NotRequired[str]


class MasksPayload(TypedDict):
    image_id: str
    mask_ids: list[str]
    source: str


class JobPayload(TypedDict):
    job_id: int
    kind: NotRequired[str]
    image_id: NotRequired[str | None]
    error: NotRequired[str | None]


class DicomAssociationPayload(TypedDict):
    """An association ended (released, aborted) or was refused (rejected, with the reason)."""

    association_id: str
    state: str
    reason: str | None


class DicomDuplicatePayload(TypedDict):
    """A resend of a stored SOP Instance UID with other content, and what the node's
    ``duplicate_policy`` made of it. Ids and the outcome only (no UIDs, no PHI).

    ``image_id`` is the image the instance now stands for: the one kept (``kept_first``,
    ``refused``) or the new version (``stored_as_version``, with ``supersedes`` the one
    it replaces, which is kept)."""

    image_id: str
    association_id: str | None
    policy: str  # keep_first | keep_newest | refuse
    outcome: str  # kept_first | stored_as_version | refused
    supersedes: NotRequired[str]


class CanvasLayerPayload(TypedDict):
    layer_id: str
    layer: NotRequired[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the events table, read back."""

    id: int
    session_id: str | None
    kind: EventKind
    payload: dict[str, Any]
    created_at: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Event:
        return cls(id=int(row["id"]), session_id=row.get("session_id"), kind=EventKind(row["kind"]),
                   payload=row.get("payload") or {}, created_at=row.get("created_at", ""))
