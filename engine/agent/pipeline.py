"""Workflow as data: YAML pipelines, one per image type, validated on load.

A pipeline names its steps (orchestrator -> image analysis -> specialist -> follow-up
-> report) and, for each, the tools it may call with their arguments, conditions
(``when:``, see :mod:`engine.agent.conditions`), retries, fallback tool and whether
the run fails without them. Packaged pipelines live in ``engine/agent/pipelines/``;
a user directory named by ``MEDVISION_PIPELINES`` (several joined with ``os.pathsep``)
is searched first, so a site can override a pipeline by id or add one for another
image type. Example::

    format: 1
    id: cxr
    version: "1.0.0"
    image_types: [CXR]
    limits: {max_candidates: 3, min_confidence: 0.7}
    quality_gate:
      after: image_analysis
      checks:
        - {id: untrained_models, when: "models.trained == false", action: flag}
    steps:
      - {id: orchestrator, role: orchestrator, tools: [image_info]}
      - id: image_analysis
        role: image_analysis
        choose: llm                  # auto mode: the LLM orders these tools
        tools:
          - {tool: classify, args: {threshold: 0.5}, required: true, retries: 1}
          - {tool: segment_organs, fallback: {tool: quality_check}}
      - id: specialist
        role: specialist
        when: "candidates.count > 0"
        ask: {input_type: choose, prompt: "Analyse which findings?", options_from: candidates}
        tools:
          - zone_scan
          - {tool: region_analysis, foreach: candidates}

Any error is ``INVALID_ARGUMENT`` naming the file and the offending key
(``cxr.yaml: steps[1].tools[0].retry: unknown key``).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import yaml

from engine.agent.conditions import Condition, parse_condition
from engine.errors import ErrorCode, MedVisionError


class ToolLookup(Protocol):
    """What parsing a pipeline asks of the tool registry (:class:`engine.agent.toolkit.ToolRegistry` is one)."""

    def get(self, tool_id: str, *, missing_ok: bool = False) -> Any: ...
    def ids(self) -> list[str]: ...
    def check_args(self, tool_id: str, args: dict[str, Any], *, where: str = "args") -> None: ...


PIPELINES_PACKAGE = "engine.agent.pipelines"
PIPELINES_ENV = "MEDVISION_PIPELINES"
DEFAULT_PIPELINE = "default"
ROLES = ("orchestrator", "image_analysis", "specialist", "follow_up", "report")
#: Facts a step or tool condition may read (see engine.agent.workflow.build_facts).
FACT_ROOTS = ("image", "patient", "quality", "models", "llm", "findings", "candidates", "measurements",
              "context", "mode", "answers", "flags", "lesions", "outputs", "volume")
DEFAULT_LIMITS = {"max_candidates": 3, "max_tool_calls": 60, "max_llm_choices": 2, "min_confidence": 0.7}
DEFAULT_SUGGEST = {"enabled": True, "min_confidence": 0.7, "max_suggestions": 3}


@dataclass(frozen=True)
class ToolUse:
    """One tool entry of a step."""

    tool: str
    args: dict[str, Any] = field(default_factory=dict)
    when: Condition | None = None
    foreach: str | None = None
    retries: int = 0
    fallback: tuple[str, dict[str, Any]] | None = None
    required: bool = False
    min_confidence: float | None = None

    def describe(self) -> dict[str, Any]:
        """The JSON form (for plans and capabilities)."""
        return {"tool": self.tool, "args": self.args, "when": self.when.text if self.when else None,
                "foreach": self.foreach, "retries": self.retries, "required": self.required,
                "fallback": {"tool": self.fallback[0], "args": self.fallback[1]} if self.fallback else None}


@dataclass(frozen=True)
class Step:
    """One step of a pipeline."""

    id: str
    role: str
    tools: tuple[ToolUse, ...]
    when: Condition | None = None
    choose: str = "fixed"
    ask: dict[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True)
class GateCheck:
    """A quality-gate check: flag or stop the run when its condition holds."""

    id: str
    when: Condition
    action: str
    message: str


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline."""

    id: str
    version: str
    description: str
    image_types: tuple[str, ...]
    steps: tuple[Step, ...]
    limits: dict[str, Any]
    gate_after: str | None
    gate_checks: tuple[GateCheck, ...]
    auto_suggest: dict[str, Any]
    source: str
    sha256: str

    def step(self, step_id: str) -> Step:
        """A step by id."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def describe(self) -> dict[str, Any]:
        """Id, version, source and sha256 (what a trace cites)."""
        return {"id": self.id, "version": self.version, "source": self.source, "sha256": self.sha256,
                "image_types": list(self.image_types)}


@lru_cache(maxsize=1)
def pipeline_schema() -> dict:
    """The JSON schema every pipeline YAML is checked against."""
    return json.loads((importlib.resources.files(PIPELINES_PACKAGE) / "pipeline.schema.json").read_text())


def _bad(source: str, where: str, message: str) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_ARGUMENT, f"pipeline {source}: {where}: {message}",
                          pipeline=source, key=where)


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


def parse_pipeline(text: str, source: str, registry: ToolLookup) -> Pipeline:
    """Parse and validate one pipeline YAML text.

    Parameters
    ----------
    text:
        The YAML.
    source:
        Where it came from (file name, for messages and traces).
    registry:
        The tool registry: every tool named must exist, serve the step's role, and
        accept the given arguments (its input schema).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _bad(source, "(yaml)", f"not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise _bad(source, "(root)", "a pipeline must be a mapping")
    for index, step in enumerate(data.get("steps") or []):
        if isinstance(step, dict) and isinstance(step.get("tools"), list):
            step["tools"] = [{"tool": t} if isinstance(t, str) else t for t in step["tools"]]
        elif not isinstance(step, dict):
            raise _bad(source, f"steps[{index}]", "a step must be a mapping")
    validator = jsonschema.Draft202012Validator(pipeline_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = _path(error.absolute_path)
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            extra = sorted(set(error.instance) - set(allowed))
            key = f"{where}.{extra[0]}" if where != "(root)" else extra[0]
            raise _bad(source, key, f"unknown key (allowed: {', '.join(allowed)})")
        if error.validator == "required":
            raise _bad(source, where, error.message)
        raise _bad(source, where, error.message)

    steps, ids = [], set()
    for index, raw in enumerate(data["steps"]):
        where = f"steps[{index}]"
        if raw["id"] in ids:
            raise _bad(source, f"{where}.id", f"duplicate step id {raw['id']!r}")
        ids.add(raw["id"])
        when = _condition(raw.get("when"), source, f"{where}.when")
        tools = tuple(_tool_use(t, raw["role"], source, f"{where}.tools[{j}]", registry)
                      for j, t in enumerate(raw["tools"]))
        ask = raw.get("ask")
        if ask and ask["input_type"] == "choose" and "options_from" not in ask:
            raise _bad(source, f"{where}.ask.options_from", "a choose request needs options_from")
        steps.append(Step(raw["id"], raw["role"], tools, when, raw.get("choose", "fixed"), ask,
                          raw.get("description", "")))
    gate = data.get("quality_gate") or {}
    gate_after = gate.get("after")
    if gate_after is not None and gate_after not in ids:
        raise _bad(source, "quality_gate.after", f"no step {gate_after!r}")
    checks = tuple(
        GateCheck(c["id"], _condition(c["when"], source, f"quality_gate.checks[{i}].when"), c["action"],
                  c.get("message", c["id"].replace("_", " ")))
        for i, c in enumerate(gate.get("checks") or []))
    return Pipeline(
        id=data["id"], version=data["version"], description=data.get("description", ""),
        image_types=tuple(data["image_types"]), steps=tuple(steps),
        limits=DEFAULT_LIMITS | (data.get("limits") or {}), gate_after=gate_after, gate_checks=checks,
        auto_suggest=DEFAULT_SUGGEST | (data.get("auto_suggest") or {}), source=source,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def _condition(text: str | None, source: str, where: str, extra_roots: tuple[str, ...] = ()) -> Condition | None:
    if text is None:
        return None
    return parse_condition(text, allowed_roots=FACT_ROOTS + extra_roots, where=f"pipeline {source}: {where}")


def _tool_use(raw: dict, role: str, source: str, where: str, registry: ToolLookup) -> ToolUse:
    tool = _known_tool(raw["tool"], role, source, f"{where}.tool", registry)
    foreach = raw.get("foreach")
    if foreach and not tool.per_item:
        raise _bad(source, f"{where}.foreach", f"tool {tool.id!r} does not run per item")
    args = raw.get("args") or {}
    registry.check_args(tool.id, args, where=f"pipeline {source}: {where}.args")
    fallback = None
    if "fallback" in raw:
        fb = _known_tool(raw["fallback"]["tool"], role, source, f"{where}.fallback.tool", registry)
        fb_args = raw["fallback"].get("args") or {}
        registry.check_args(fb.id, fb_args, where=f"pipeline {source}: {where}.fallback.args")
        fallback = (fb.id, fb_args)
    roots = ("finding",) if foreach else ()
    return ToolUse(tool=tool.id, args=args, when=_condition(raw.get("when"), source, f"{where}.when", roots),
                   foreach=foreach, retries=raw.get("retries", 0), fallback=fallback,
                   required=raw.get("required", False), min_confidence=raw.get("min_confidence"))


def _known_tool(tool_id: str, role: str, source: str, where: str, registry: ToolLookup):  # noqa: ANN202
    tool = registry.get(tool_id, missing_ok=True)
    if tool is None:
        raise _bad(source, where, f"unknown tool {tool_id!r} (known: {', '.join(registry.ids())})")
    if role not in tool.roles:
        raise _bad(source, where, f"tool {tool_id!r} serves {', '.join(tool.roles)}, not the {role} step")
    return tool


# -- lookup ------------------------------------------------------------------------------
def user_dirs() -> list[Path]:
    """Directories named by ``MEDVISION_PIPELINES`` (checked before the packaged pipelines)."""
    value = os.environ.get(PIPELINES_ENV, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


def _candidates(extra_dirs: list[Path] | None) -> list[tuple[str, str]]:
    """``(source, text)`` of every pipeline file, user ones first."""
    found = []
    for directory in [*(extra_dirs or []), *user_dirs()]:
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
                found.append((f"{path.name} (user: {directory.name})", path.read_text()))
    package = importlib.resources.files(PIPELINES_PACKAGE)
    for entry in sorted(package.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            found.append((f"{entry.name} (packaged)", entry.read_text()))
    return found


def load_pipelines(registry: ToolLookup, extra_dirs: list[Path] | None = None) -> list[Pipeline]:
    """Every pipeline, validated; a user pipeline overrides a packaged one with its id."""
    chosen: dict[str, Pipeline] = {}
    for source, text in _candidates(extra_dirs):
        pipeline = parse_pipeline(text, source, registry)
        chosen.setdefault(pipeline.id, pipeline)
    return list(chosen.values())


def select_pipeline(registry: ToolLookup, image_type: str, name: str | None = None,
                    extra_dirs: list[Path] | None = None) -> Pipeline:
    """The pipeline named ``name``, else the first serving ``image_type``, else ``default``."""
    pipelines = load_pipelines(registry, extra_dirs)
    if name is not None:
        for pipeline in pipelines:
            if pipeline.id == name:
                return pipeline
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                             f"no pipeline {name!r} (known: {', '.join(p.id for p in pipelines)})")
    for pipeline in pipelines:
        if image_type in pipeline.image_types:
            return pipeline
    for pipeline in pipelines:
        if pipeline.id == DEFAULT_PIPELINE or "*" in pipeline.image_types:
            return pipeline
    raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no pipeline for {image_type} images and no default")
