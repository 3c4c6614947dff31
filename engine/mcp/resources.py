"""Session resources and their live updates.

URIs: ``medvision://session/{session_id}/{image|annotations|segmentation|analysis|agent_message}``,
all JSON. A client subscribes to one (``resources/subscribe``); a follower task reads
the store's ``events`` outbox every ``poll_interval_s`` and sends
``notifications/resources/updated`` for each subscribed URI an event touches, whoever
wrote it: this server, the desktop, the DICOM node or the CLI.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

import anyio
import anyio.to_thread
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.session import ServerSession
from pydantic import AnyUrl

from engine.api import Engine
from engine.events import ANNOTATION_KINDS, EventKind
from engine.mcp.context import app_context, identify_client

log = logging.getLogger("engine.mcp")

URI = "medvision://session/{session_id}/{part}"
PARTS = ("image", "annotations", "segmentation", "analysis", "agent_message")
#: Which resources of the event's session each event kind changes (none for e.g. agent.trace or job.*).
EVENT_PARTS: dict[EventKind, tuple[str, ...]] = {
    **dict.fromkeys(ANNOTATION_KINDS, ("annotations",)),
    EventKind.IMAGE_ADDED: ("image",),
    EventKind.SESSION_CURRENT_IMAGE: ("image",),
    EventKind.SESSION_DELETED: PARTS,
    EventKind.MASKS_CREATED: ("segmentation",),
    EventKind.ANALYSIS_CREATED: ("analysis",),
    **dict.fromkeys((EventKind.AGENT_TURN, EventKind.AGENT_INPUT_REQUESTED, EventKind.AGENT_INPUT_ANSWERED,
                     EventKind.AGENT_INPUT_CANCELLED, EventKind.AGENT_RUN_CREATED, EventKind.AGENT_RUN_UPDATED),
                    ("agent_message",)),
    **dict.fromkeys((k for k in EventKind if k.aggregate == "canvas"), ("agent_message",)),
}


def parts_for(kind: EventKind) -> tuple[str, ...]:
    """The resource parts an event kind updates."""
    return EVENT_PARTS.get(kind, ())


class Subscriptions:
    """Which client sessions subscribed to which URIs."""

    def __init__(self) -> None:
        self.by_uri: dict[str, set[ServerSession]] = defaultdict(set)

    def add(self, uri: str, session: ServerSession) -> None:
        self.by_uri[uri].add(session)

    def remove(self, uri: str, session: ServerSession) -> None:
        self.by_uri.get(uri, set()).discard(session)

    async def notify(self, uri: str) -> None:
        """Send ``resources/updated`` to every subscriber; a closed session is dropped."""
        for session in list(self.by_uri.get(uri, ())):
            try:
                await session.send_resource_updated(AnyUrl(uri))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.remove(uri, session)


async def follow_events(engine: Engine, subscriptions: Subscriptions, poll_interval_s: float) -> None:
    """Forever: turn new events of the store into resource-updated notifications."""
    last_id = await anyio.to_thread.run_sync(engine.last_event_id)
    while True:
        await anyio.sleep(poll_interval_s)
        if not any(subscriptions.by_uri.values()):
            last_id = await anyio.to_thread.run_sync(engine.last_event_id)
            continue
        events = await anyio.to_thread.run_sync(engine.events_since, last_id)
        changed: dict[str, None] = {}  # ordered set: one notification per URI per poll
        for event in events:
            last_id = event.id
            for part in parts_for(event.kind) if event.session_id else ():
                changed[URI.format(session_id=event.session_id, part=part)] = None
        for uri in changed:
            await subscriptions.notify(uri)


def _latest_segmentation(engine: Engine, session_id: str) -> dict[str, Any]:
    session = engine.get_session_status(session_id)
    image_id = session["current_image"]
    latest = engine.latest_analysis(session_id, image_id, ("analyze_image", "rag")) if image_id else None
    segmentation = (latest or {}).get("segmentation")
    if latest and segmentation and segmentation.get("status") == "ok":
        return {"session_id": session_id, "image_id": image_id, "analysis_id": latest["analysis_id"],
                "segmentation": segmentation}
    return {"session_id": session_id, "image_id": image_id, "segmentation": None}


def _image(engine: Engine, session_id: str) -> dict[str, Any]:
    status = engine.get_session_status(session_id)
    current = next((i for i in status["images"] if i["image_id"] == status["current_image"]), None)
    return {"session_id": session_id, "current_image": current, "images": status["images"]}


def _agent_messages(engine: Engine, session_id: str) -> dict[str, Any]:
    return engine.agent_messages(session_id) | {"canvas": engine.get_canvas_state(session_id)}


READERS = {
    "image": _image,
    "annotations": lambda engine, session_id: engine.get_annotations(session_id),
    "segmentation": _latest_segmentation,
    "analysis": lambda engine, session_id: engine.get_analysis_summary(session_id),
    "agent_message": _agent_messages,
}
DESCRIPTIONS = {
    "image": "The session's images and the current one (type, size, pixel spacing).",
    "annotations": "Every annotation of the session (user, AI, system), coordinates in image pixels.",
    "segmentation": "The latest organ segmentation of the current image (organs, areas, mask ids).",
    "analysis": "The latest analysis of each image in short form (findings, model_trained).",
    "agent_message": "The agent conversation (last 20 turns), pending user-input requests and canvas state.",
}


def register(app: FastMCP, subscriptions: Subscriptions) -> None:
    """Add the resource templates and the subscribe handlers, and advertise ``subscribe``."""
    for part in PARTS:
        app.resource(URI.replace("{part}", part), name=f"session_{part}", mime_type="application/json",
                     description=DESCRIPTIONS[part] + " Subscribe for live updates.")(_reader(part))

    server = app._mcp_server  # noqa: SLF001 - FastMCP has no public hook for subscriptions

    @server.subscribe_resource()
    async def subscribe(uri: AnyUrl) -> None:
        subscriptions.add(str(uri), server.request_context.session)

    @server.unsubscribe_resource()
    async def unsubscribe(uri: AnyUrl) -> None:
        subscriptions.remove(str(uri), server.request_context.session)

    capabilities = server.get_capabilities

    def with_subscribe(*args: Any, **kwargs: Any):  # noqa: ANN202 - the SDK's ServerCapabilities
        result = capabilities(*args, **kwargs)
        if result.resources is not None:  # the SDK hard-codes subscribe=False
            result.resources.subscribe = True
        return result

    server.get_capabilities = with_subscribe  # type: ignore[method-assign]


def _reader(part: str) -> Any:
    """The resource function for one part (runs on the event loop: reads are short SQLite queries)."""
    def resource(session_id: str, ctx: Context) -> str:
        engine = app_context(ctx).engine
        identify_client(engine, ctx)
        return json.dumps(READERS[part](engine, session_id), default=str)

    resource.__name__ = f"session_{part}"
    return resource
