"""The agent's tool contract: what a tool sees (:class:`ToolCall`), returns (:class:`ToolResult`),
declares (:class:`Tool`), and the registry that validates its arguments (:class:`ToolRegistry`).

The tools themselves live in :mod:`engine.agent.tools` (radiographs) and
:mod:`engine.agent.volume_tools` (CT and MR series); both build on these types only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jsonschema

from engine.errors import ErrorCode, MedVisionError

if TYPE_CHECKING:
    from engine.agent.pipeline import Pipeline
    from engine.services import Services


@dataclass
class ToolCall:
    """What a tool sees: the services, the run's ids, earlier outputs, the foreach item."""

    services: Services
    session_id: str
    image_id: str
    run_id: str
    outputs: dict[str, Any]
    facts: dict[str, Any]
    context: dict[str, Any]
    pipeline: Pipeline
    item: dict[str, Any] | None = None
    llm: Any = None
    seed: int | None = None


@dataclass
class ToolResult:
    """A tool's output (JSON, no pixels), confidence, models used and a one-line reasoning."""

    output: dict[str, Any]
    confidence: float | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    reasoning: str = ""
    skipped: bool = False
    #: Extra trace events the tool produced (each narrative attempt, for instance).
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Tool:
    """One registered tool."""

    id: str
    version: str
    roles: tuple[str, ...]
    description: str
    run: Callable[[ToolCall, dict[str, Any]], ToolResult]
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object", "additionalProperties": False})
    image_types: tuple[str, ...] = ("*",)
    #: Engine methods (the MCP tool names) the tool calls.
    mcp_tools: tuple[str, ...] = ()
    #: Tools whose outputs this one reads (for the trace's data lineage).
    consumes: tuple[str, ...] = ()
    #: Writes to the store (through Engine methods, each atomic on its own).
    writes: bool = False
    #: Runs once per item of a ``foreach`` list.
    per_item: bool = False

    def describe(self) -> dict[str, Any]:
        """The registry entry in JSON (capabilities, prompts)."""
        return {"id": self.id, "version": self.version, "roles": list(self.roles), "description": self.description,
                "image_types": list(self.image_types), "mcp_tools": list(self.mcp_tools),
                "input_schema": self.input_schema, "consumes": list(self.consumes), "writes": self.writes,
                "per_item": self.per_item}


class ToolRegistry:
    """Tools by id, filterable by role and image type."""

    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools or []:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        """Add a tool (its id must be new)."""
        if tool.id in self._tools:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"tool {tool.id!r} is already registered")
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)
        self._tools[tool.id] = tool

    def get(self, tool_id: str, *, missing_ok: bool = False) -> Tool | None:
        """A tool by id (``INVALID_ARGUMENT`` when unknown, unless ``missing_ok``)."""
        tool = self._tools.get(tool_id)
        if tool is None and not missing_ok:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"unknown tool {tool_id!r}")
        return tool

    def ids(self) -> list[str]:
        """Registered tool ids."""
        return list(self._tools)

    def for_role(self, role: str, image_type: str | None = None) -> list[Tool]:
        """Tools serving ``role`` (and accepting ``image_type``)."""
        return [t for t in self._tools.values() if role in t.roles
                and (image_type is None or "*" in t.image_types or image_type in t.image_types)]

    def check_args(self, tool_id: str, args: dict[str, Any], *, where: str = "args") -> None:
        """Validate arguments against the tool's input schema; the error names the key."""
        tool = self.get(tool_id)
        assert tool is not None
        errors = sorted(jsonschema.Draft202012Validator(tool.input_schema).iter_errors(args),
                        key=lambda e: list(e.absolute_path))
        if errors:
            error = errors[0]
            key = ".".join(str(p) for p in error.absolute_path)
            if error.validator == "additionalProperties":
                extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
                key = ".".join(filter(None, [key, extra[0] if extra else ""]))
                allowed = ", ".join(sorted(error.schema.get("properties", {}))) or "none"
                message = f"unknown argument (allowed: {allowed})"
            else:
                message = error.message
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"{where}{'.' + key if key else ''}: {message} (tool {tool_id})",
                                 tool=tool_id, key=key)

    def describe(self) -> list[dict[str, Any]]:
        """Every tool's registry entry."""
        return [t.describe() for t in self._tools.values()]
