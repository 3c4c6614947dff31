"""The stdio transport of the MCP server, and what the SDK may log about a client's messages.

The SDK's own stdio transport (``mcp.server.stdio``, SDK 1.30) hands a line that is not a
JSON-RPC message to the session as an exception: the client gets no reply, and the
low-level server logs the pydantic error, whose text quotes the start and the end of the
raw line (tool arguments included). :func:`stdio_transport` answers such a line itself,
as JSON-RPC 2.0 asks: ``-32700 Parse error`` (``id: null``) for a line that is not UTF-8
JSON (an invalid byte, a lone surrogate, ``NaN``), ``-32600 Invalid Request`` (with the
request's id when it has one) for JSON that is not a message; nothing reaches the session
or the log. A line longer than :data:`MAX_LINE_BYTES` is never held whole: it is read in
bounded steps, dropped, and answered with ``-32700`` (``details: too_large``).
:class:`WithholdMessageText` keeps what the SDK logs to its first words.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import TextIOWrapper
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import mcp
import pydantic_core
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

#: Where the SDK's modules live: a log record whose code sits here is the SDK's.
SDK_DIR = str(Path(mcp.__file__).parent)
#: The longest message line read (16 MiB, newline included): far above any tool call (metadata is
#: capped at 64 kB; a full-size mask pushed to the canvas as RLE is a few hundred kB), and a
#: bound on what one client line can cost the server.
MAX_LINE_BYTES = 16 * 1024 * 1024
TOO_LARGE = object()  # what :func:`bounded_lines` yields for a line over the limit


async def bounded_lines(stdin: anyio.AsyncFile[bytes], limit: int = MAX_LINE_BYTES) -> AsyncIterator[bytes | object]:
    """The lines of ``stdin``, each at most ``limit`` bytes; a longer one is read in steps of
    ``limit``, dropped, and yielded as :data:`TOO_LARGE`."""
    readline = stdin.wrapped.readline
    while True:
        line = await anyio.to_thread.run_sync(readline, limit + 1)
        if not line:
            return
        if len(line) <= limit:
            yield line
            continue
        while line and not line.endswith(b"\n"):  # drop the rest of the line, a bounded step at a time
            line = await anyio.to_thread.run_sync(readline, limit)
        yield TOO_LARGE


def _error(request_id: Any, code: int, message: str) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


def parse_line(line: bytes) -> tuple[types.JSONRPCMessage | None, str | None]:
    """One stdin line as a JSON-RPC message, or the error reply (JSON text) the client gets instead."""
    try:
        text = line.decode("utf-8")  # strict: an invalid byte or an encoded surrogate is a parse error
        parsed = pydantic_core.from_json(text, allow_inf_nan=False)  # a "\ud800" escape is one too
    except ValueError:  # UnicodeDecodeError included
        return None, _error(None, types.PARSE_ERROR, "Parse error")
    try:
        return types.JSONRPCMessage.model_validate_json(text), None
    except ValidationError:
        request_id = parsed.get("id") if isinstance(parsed, dict) else None
        if isinstance(request_id, bool) or not isinstance(request_id, str | int):
            request_id = None
        return None, _error(request_id, types.INVALID_REQUEST, "Invalid Request")


@asynccontextmanager
async def stdio_transport(
    stdin: anyio.AsyncFile[bytes] | None = None, stdout: anyio.AsyncFile[str] | None = None,
) -> AsyncIterator[tuple[MemoryObjectReceiveStream[SessionMessage | Exception],
                         MemoryObjectSendStream[SessionMessage]]]:
    """``mcp.server.stdio.stdio_server`` with a reply for every line that is not a message (see the module)."""
    stdin = stdin or anyio.wrap_file(sys.stdin.buffer)
    stdout = stdout or anyio.wrap_file(TextIOWrapper(sys.stdout.buffer, encoding="utf-8"))
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    stdout_lock = anyio.Lock()

    async def emit(text: str) -> None:
        async with stdout_lock:  # one JSON-RPC message per line, whoever writes it
            await stdout.write(text + "\n")
            await stdout.flush()

    async def stdin_reader() -> None:
        try:
            async with read_writer:
                async for line in bounded_lines(stdin):
                    if line is TOO_LARGE:
                        await emit(_error(None, types.PARSE_ERROR, f"Parse error: a line over {MAX_LINE_BYTES} bytes"))
                        continue
                    if not line.strip():
                        continue
                    message, error = parse_line(line)
                    if error is not None:
                        await emit(error)
                        continue
                    await read_writer.send(SessionMessage(message))
        except anyio.ClosedResourceError:
            await anyio.lowlevel.checkpoint()

    async def stdout_writer() -> None:
        try:
            async with write_reader:
                async for session_message in write_reader:
                    await emit(session_message.message.model_dump_json(by_alias=True, exclude_none=True))
        except anyio.ClosedResourceError:
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stdin_reader)
        tasks.start_soon(stdout_writer)
        yield read_stream, write_stream


class WithholdMessageText(logging.Filter):
    """On a handler: records the MCP SDK logs (through its loggers or the root logger) lose what
    could quote a client's message. Below WARNING they are dropped ("Received message: ...");
    from WARNING up they keep their first words ("Failed to validate request") and the
    exception's type, not its text (a pydantic error quotes the input's start and end)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(SDK_DIR):
            return True
        if record.levelno < logging.WARNING:
            return False
        head = str(record.msg).split(":", 1)[0].splitlines()[0][:120] if record.msg else "MCP SDK message"
        kind = record.exc_info[1] if record.exc_info else None
        record.msg = f"{head} ({type(kind).__name__}; message text withheld)" if kind else \
            f"{head} (message text withheld)"
        record.args, record.exc_info, record.exc_text, record.stack_info = None, None, None, None
        return True


def withhold_sdk_message_text(logger: logging.Logger | None = None) -> None:
    """Add :class:`WithholdMessageText` to every handler of ``logger`` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, WithholdMessageText) for f in handler.filters):
            handler.addFilter(WithholdMessageText())
