"""Helpers shared by the MCP tests: an in-memory client and result unpacking."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import ClientSession, types
from mcp.shared.memory import create_connected_server_and_client_session

from engine.mcp.server import create_server

#: The tools of the product spec that the server must list.
SPEC_TOOLS = {
    "create_study_session", "add_image_to_session", "get_session_status", "switch_image", "analyze_image",
    "ask_about_image", "analyze_selected_region", "add_annotation", "update_annotation", "delete_annotation",
    "get_annotations", "get_analysis_summary", "export_study", "get_visualization", "invoke_medical_agent",
    "get_agent_capabilities", "sync_canvas_state", "push_to_canvas", "request_user_input", "get_user_input",
    "search_similar_cases", "analyze_with_rag", "build_rag_index",
}


@asynccontextmanager
async def connect(home: Path, model_pack: Path, roots: Sequence[Path], **options: Any) -> AsyncIterator[ClientSession]:
    """A client session connected in memory to a fresh server over ``home``."""
    client_options = {k: options.pop(k) for k in ("message_handler", "list_roots_callback") if k in options}
    server = create_server(home=home, model_pack=model_pack, roots=roots, **options)
    async with create_connected_server_and_client_session(server, **client_options) as client:
        yield client


async def ok(client: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.isError, f"{tool} failed: {result.content[0].text}"
    assert result.structuredContent is not None
    return result.structuredContent


async def failed(client: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must fail; the ``{"code", "message", "details"}`` it returned."""
    result = await client.call_tool(tool, arguments)
    assert result.isError, f"{tool} succeeded: {result.content}"
    assert len(result.content) == 1 and isinstance(result.content[0], types.TextContent)
    return json.loads(result.content[0].text)
