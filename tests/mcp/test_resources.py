"""Session resources and live updates: a change made by another process reaches the subscriber."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import types
from pydantic import AnyUrl

from tests.mcp import connect, ok

WRITER = """
import sys, time
from engine.api import Engine
home, pack, session_id = sys.argv[1:4]
with Engine(home=home, model_pack=pack) as engine:
    engine.add_annotation(session_id, annotation_type="bbox", coordinates=[10, 10, 50, 50], label="from the desktop")
    print(time.time())
"""


class Inbox:
    """Resource-updated notifications as they arrive, with their arrival time."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, float]] = []
        self.arrived = anyio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, types.ServerNotification) and isinstance(message.root,
                                                                       types.ResourceUpdatedNotification):
            self.updates.append((str(message.root.params.uri), time.time()))
            self.arrived.set()

    async def wait_for(self, uri: str, timeout_s: float = 5.0) -> float:
        """The arrival time of the first update of ``uri``."""
        with anyio.fail_after(timeout_s):
            while not any(u == uri for u, _ in self.updates):
                self.arrived = anyio.Event()
                await self.arrived.wait()
        return next(t for u, t in self.updates if u == uri)


def test_another_process_adding_an_annotation_notifies_the_subscriber_within_1s(
        home: Path, model_pack: Path, rg1_path: Path) -> None:
    async def scenario() -> None:
        inbox = Inbox()
        async with connect(home, model_pack, [rg1_path.parent], message_handler=inbox) as client:
            session_id = (await ok(client, "create_study_session"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(rg1_path),
                     auto_analyze=False)
            uri = f"medvision://session/{session_id}/annotations"
            await client.subscribe_resource(AnyUrl(uri))
            await anyio.sleep(0.5)  # nothing pending: the image's own events are not annotations
            assert inbox.updates == []
            writer = await anyio.run_process([sys.executable, "-c", WRITER, str(home), str(model_pack), session_id])
            committed = float(writer.stdout.decode().strip().splitlines()[-1])
            latency = await inbox.wait_for(uri) - committed
            assert latency < 1.0, f"notification after {latency:.3f} s"
            contents = (await client.read_resource(AnyUrl(uri))).contents[0]
            annotations = json.loads(contents.text)["annotations"]
            assert [a["label"] for a in annotations] == ["from the desktop"]

    anyio.run(scenario)


def test_push_to_canvas_and_user_input_update_the_agent_message_resource(
        home: Path, model_pack: Path, rg1_path: Path) -> None:
    async def scenario() -> None:
        inbox = Inbox()
        async with connect(home, model_pack, [rg1_path.parent], message_handler=inbox) as client:
            session_id = (await ok(client, "create_study_session"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(rg1_path),
                     auto_analyze=False)
            messages = f"medvision://session/{session_id}/agent_message"
            image = f"medvision://session/{session_id}/image"
            for uri in (messages, image):
                await client.subscribe_resource(AnyUrl(uri))
            await ok(client, "push_to_canvas", session_id=session_id, action="add_annotations", payload={
                "annotations": [{"type": "point", "coordinates": [300, 300], "label": "see"}],
                "message": "Please look at the left apex."})
            await inbox.wait_for(messages)
            state = json.loads((await client.read_resource(AnyUrl(messages))).contents[0].text)
            assert any("left apex" in turn.get("content", "") for turn in state["turns"])
            request = await ok(client, "request_user_input", session_id=session_id, input_type="confirm",
                               prompt="Agree?")
            inbox.updates.clear()
            await inbox.wait_for(messages)
            state = json.loads((await client.read_resource(AnyUrl(messages))).contents[0].text)
            assert [r["id"] for r in state["pending_input_requests"]] == [request["request_id"]]
            await client.unsubscribe_resource(AnyUrl(messages))
            inbox.updates.clear()
            await ok(client, "request_user_input", session_id=session_id, input_type="confirm", prompt="Sure?")
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(rg1_path),
                     auto_analyze=False)
            await inbox.wait_for(image)
            assert messages not in {u for u, _ in inbox.updates}
            for part in ("image", "annotations", "segmentation", "analysis", "agent_message"):
                contents = await client.read_resource(AnyUrl(f"medvision://session/{session_id}/{part}"))
                assert json.loads(contents.contents[0].text)["session_id"] == session_id

    anyio.run(scenario)
