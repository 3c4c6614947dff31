"""The MedVision MCP server on the SDK's FastMCP, over stdio.

Tools live in :mod:`engine.mcp.tools`, resources and their live updates in
:mod:`engine.mcp.resources`. The :class:`engine.api.Engine` is built in the lifespan and
reaches the tools through :class:`~engine.mcp.context.AppContext`; every engine call goes
through :meth:`~engine.mcp.context.AppContext.call`: one at a time per study session, in a worker thread, bounded in
time, with progress notifications at start and end. Failures come back as ``isError``
results whose text is the JSON ``{"code", "message", "details"}``. stdout carries nothing
but JSON-RPC; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from mcp import types
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import ValidationError

from engine.api import Engine
from engine.config import Settings
from engine.errors import MedVisionError
from engine.mcp import paths, resources, tools, transport
from engine.mcp.context import DEFAULT_TIMEOUT_S, AppContext, ToolFailure

log = logging.getLogger("engine.mcp")

POLL_INTERVAL_S = 0.2
INSTRUCTIONS = (
    "MedVision radiology workstation (research and education, not for diagnostic use). "
    "Create a study session, add an image (image_path under an allowed root), analyse it, "
    "annotate, export; or delegate with invoke_medical_agent. Resources: "
    "medvision://session/{session_id}/image|annotations|segmentation|analysis|agent_message, "
    "subscribable for live updates. Errors are isError results with JSON {code, message, details}."
)


def error_result(error: BaseException) -> types.CallToolResult:
    """An ``isError`` result for any failure: engine code, message, details; never a path or PHI."""
    if isinstance(error, MedVisionError):
        payload = error.to_dict()
    elif isinstance(error, ToolFailure):
        payload = error.payload
    elif isinstance(error, ValidationError):
        problems = [{"field": ".".join(map(str, e["loc"])), "problem": e["msg"]} for e in error.errors()]
        payload = {"code": "INVALID_ARGUMENT", "message": "invalid arguments", "details": {"errors": problems}}
    else:
        log.error("unexpected %s in a tool call", type(error).__name__, exc_info=error)
        payload = {"code": "INTERNAL_ERROR", "message": f"unexpected {type(error).__name__}", "details": {}}
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(payload))], isError=True)


class MedVisionMCP(FastMCP):
    """FastMCP whose tool failures become ``isError`` results carrying the engine's error code."""

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        try:
            result = await super().call_tool(name, arguments)
        except ToolError as exc:  # FastMCP wraps whatever the tool raised
            cause = exc.__cause__
            if cause is None:  # unknown tool
                return error_result(ToolFailure("INVALID_ARGUMENT", str(exc)))
            return error_result(cause)
        if isinstance(result, tuple):  # (content, structured), already validated by the pydantic result model:
            content, structured = result  # a CallToolResult skips the SDK's second, jsonschema validation (~5 ms)
            return types.CallToolResult(content=list(content), structuredContent=structured)
        return result

    async def run_stdio_async(self) -> None:
        """Serve over stdio through :func:`engine.mcp.transport.stdio_transport` (a reply to every line)."""
        async with transport.stdio_transport() as (read_stream, write_stream):
            await self._mcp_server.run(read_stream, write_stream, self._mcp_server.create_initialization_options())


def create_server(settings: Settings | None = None, *, home: str | Path | None = None,
                  model_pack: str | Path | None = None, roots: Sequence[str | Path] = (),
                  timeout_s: float = DEFAULT_TIMEOUT_S, poll_interval_s: float = POLL_INTERVAL_S) -> FastMCP:
    """The MCP app. The engine is opened when a client connects (lifespan) and closed after."""
    subscriptions = resources.Subscriptions()
    allowed = [Path(r).expanduser() for r in (*paths.env_roots(), *roots)]

    @asynccontextmanager
    async def lifespan(_app: FastMCP) -> AsyncIterator[AppContext]:
        engine = await anyio.to_thread.run_sync(
            lambda: Engine(settings, front_end="mcp") if settings
            else Engine(home=home, model_pack=model_pack, front_end="mcp"))
        context = AppContext(engine, allowed, timeout_s)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(resources.follow_events, engine, subscriptions, poll_interval_s)
                yield context
                tasks.cancel_scope.cancel()
        finally:
            await anyio.to_thread.run_sync(engine.close)

    app = MedVisionMCP("medvision", instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING")
    tools.register(app)
    resources.register(app, subscriptions)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``medvision mcp``: serve MCP over stdio until the client closes the pipe."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    transport.withhold_sdk_message_text()  # stderr never quotes a client's message (the SDK's validation logs)
    parser = argparse.ArgumentParser(prog="medvision mcp", description="MedVision MCP server (stdio)")
    parser.add_argument("--root", action="append", default=[], metavar="DIR",
                        help="a folder whose images clients may add (repeatable; also MEDVISION_MCP_ROOTS)")
    parser.add_argument("--home", help="data directory (default: MEDVISION_HOME)")
    parser.add_argument("--model-pack", help="model pack directory (default: MEDVISION_MODEL_PACK)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds a tool call may take")
    args = parser.parse_args(argv)
    app = create_server(home=args.home, model_pack=args.model_pack, roots=args.root, timeout_s=args.timeout)
    app.run("stdio")
    return 0
