"""What every MCP tool and resource shares: the engine, the path policy, per-session locks, the time limit.

:mod:`engine.mcp.server` builds the :class:`AppContext` in its lifespan; tools and resources
reach it with :func:`app_context`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp import types
from mcp.server.fastmcp import Context

from engine.api import Engine
from engine.mcp import paths

log = logging.getLogger("engine.mcp")

DEFAULT_TIMEOUT_S = 300.0
ROOTS_TIMEOUT_S = 10.0


class ToolFailure(Exception):
    """A failure with a code outside the engine's ErrorCode (TIMEOUT, INTERNAL_ERROR)."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.payload = {"code": code, "message": message, "details": details}


@dataclass
class AppContext:
    """What the tools share: the engine, the path policy, per-session locks, the time limit."""

    engine: Engine
    roots: list[Path]
    timeout_s: float = DEFAULT_TIMEOUT_S
    _locks: dict[str, threading.Lock] = field(default_factory=dict)

    def _lock(self, key: str) -> threading.Lock:
        return self._locks.setdefault(key, threading.Lock())

    async def call(self, ctx: Context | None, key: str | None, fn: Callable[..., Any], *args: Any,
                   announce: bool = False, **kwargs: Any) -> Any:
        """Run ``fn`` in a worker thread, serialised on ``key`` (a session id), within the time limit.

        The lock is taken inside the thread, so a call that times out keeps its session
        locked until the engine really finishes; the client gets ``TIMEOUT`` at once.
        With ``announce``, the tool's progress token receives 0/1 and 1/1.
        """
        lock = self._lock(key) if key else None
        identify_client(self.engine, ctx)

        def work() -> Any:
            if lock is None:
                return fn(*args, **kwargs)
            with lock:
                return fn(*args, **kwargs)

        if announce and ctx is not None:
            await ctx.report_progress(0, 1, f"{getattr(fn, '__name__', 'call')} started")
        try:
            with anyio.fail_after(self.timeout_s):
                result = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError as exc:
            raise ToolFailure("TIMEOUT", f"the call did not finish within {self.timeout_s:g} s; "
                              "the engine completes it in the background", timeout_s=self.timeout_s) from exc
        if announce and ctx is not None:
            await ctx.report_progress(1, 1, "done")
        return result

    def progress_callback(self, ctx: Context) -> Callable[[int, int, str], None]:
        """An engine ``progress(done, total, message)`` callback that notifies the client from a worker thread."""
        def report(done: int, total: int, message: str = "") -> None:
            try:
                anyio.from_thread.run(ctx.report_progress, done, total or None, message)
            except RuntimeError:  # the event loop is gone (server shutting down): drop it
                pass
        return report

    async def allowed_roots(self, ctx: Context) -> list[Path]:
        """Configured roots plus the client's, when it declares the roots capability."""
        roots = list(self.roots)
        session = ctx.session
        if session.check_client_capability(types.ClientCapabilities(roots=types.RootsCapability())):
            try:
                with anyio.fail_after(ROOTS_TIMEOUT_S):
                    listed = await session.list_roots()
            except Exception:  # noqa: BLE001 - a client that fails to list roots keeps the configured ones
                log.warning("the client declared roots but list_roots failed or timed out")
            else:
                roots += [p for p in (paths.uri_to_path(str(r.uri)) for r in listed.roots) if p is not None]
        return roots


def identify_client(engine: Engine, ctx: Context | None) -> None:
    """Name the MCP client (its ``initialize`` clientInfo) in this engine's audit records."""
    try:
        info = ctx.session.client_params.clientInfo if ctx is not None else None
    except (AttributeError, LookupError, ValueError):  # no request in flight, or not initialised
        info = None
    if info is not None:
        engine.audit.identify("mcp", f"{info.name} {info.version or ''}".strip())


def app_context(ctx: Context) -> AppContext:
    """The :class:`AppContext` of the running server, from a tool's context."""
    return ctx.request_context.lifespan_context
