"""Follow-up rules and finding regions: the agent's tables, loaded from package data.

``rules/follow_up.yaml`` maps present findings (with age, history and measurements) to
a management suggestion naming its source; ``rules/finding_regions.yaml`` says where
the specialist step looks for each classifier finding. Both are validated on load; a
bad table is ``INVALID_ARGUMENT`` naming the file and the key.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import yaml

from engine.agent.conditions import Condition, parse_condition
from engine.errors import ErrorCode, MedVisionError

RULES_PACKAGE = "engine.agent.rules"
#: Facts a follow-up rule may read.
RULE_FACTS = ("finding", "findings", "patient", "measurements", "image", "lesions")
TARGETS = ("lung", "heart", "mediastinum", "diaphragm", "none")
LUNG_ZONES = ("upper", "middle", "lower")
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)\}")


@dataclass(frozen=True)
class Rule:
    """One follow-up rule of the table."""

    id: str
    labels: tuple[str, ...]
    when: Condition | None
    follow_up_months: int | None
    priority: int
    suggestion: str
    source: str


def _bad(file: str, where: str, message: str) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{file}: {where}: {message}", file=file, key=where)


def _read(name: str) -> dict:
    text = (importlib.resources.files(RULES_PACKAGE) / name).read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or data.get("format") != 1:
        raise _bad(name, "format", "expected a mapping with format: 1")
    return data


def parse_rules(data: dict, file: str = "follow_up.yaml") -> tuple[list[Rule], dict[str, Any]]:
    """Validate a follow-up table (already parsed YAML): the rules and the default."""
    known = {"id", "labels", "when", "follow_up_months", "priority", "suggestion", "source"}
    unknown_top = set(data) - {"format", "rules", "default"}
    if unknown_top:
        raise _bad(file, sorted(unknown_top)[0], "unknown key")
    rules, seen = [], set()
    for index, raw in enumerate(data.get("rules") or []):
        where = f"rules[{index}]"
        if not isinstance(raw, dict):
            raise _bad(file, where, "a rule must be a mapping")
        extra = sorted(set(raw) - known)
        if extra:
            raise _bad(file, f"{where}.{extra[0]}", f"unknown key (allowed: {', '.join(sorted(known))})")
        for key in ("id", "suggestion", "source"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise _bad(file, f"{where}.{key}", "required, a non-empty string")
        if raw["id"] in seen:
            raise _bad(file, f"{where}.id", f"duplicate rule id {raw['id']!r}")
        seen.add(raw["id"])
        months = raw.get("follow_up_months")
        if months is not None and (isinstance(months, bool) or not isinstance(months, int) or months < 0):
            raise _bad(file, f"{where}.follow_up_months", "must be a non-negative integer or null")
        labels = raw.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise _bad(file, f"{where}.labels", "must be a list of finding labels")
        if not labels and "when" not in raw:
            raise _bad(file, where, "a rule needs labels or a when condition")
        when = parse_condition(raw["when"], allowed_roots=RULE_FACTS, where=f"{file}: {where}.when") \
            if "when" in raw else None
        for placeholder in _PLACEHOLDER.findall(raw["suggestion"]):
            if placeholder.split(".")[0] not in RULE_FACTS:
                raise _bad(file, f"{where}.suggestion", f"unknown placeholder {{{placeholder}}}")
        priority = raw.get("priority", 50)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise _bad(file, f"{where}.priority", "must be an integer")
        rules.append(Rule(raw["id"], tuple(labels), when, months, priority, " ".join(raw["suggestion"].split()),
                          " ".join(raw["source"].split())))
    default = data.get("default") or {}
    if not isinstance(default.get("suggestion"), str) or not isinstance(default.get("source"), str):
        raise _bad(file, "default", "needs suggestion and source")
    return rules, {"follow_up_months": default.get("follow_up_months"), "suggestion": default["suggestion"],
                   "source": default["source"]}


@lru_cache(maxsize=1)
def follow_up_rules() -> tuple[tuple[Rule, ...], dict[str, Any]]:
    """The packaged follow-up table (validated, cached)."""
    rules, default = parse_rules(_read("follow_up.yaml"))
    return tuple(rules), default


@lru_cache(maxsize=1)
def finding_regions() -> dict[str, dict[str, Any]]:
    """Finding label -> ``{"target", "zones"}``; the ``default`` entry covers other labels."""
    file = "finding_regions.yaml"
    data = _read(file)
    table = data.get("findings")
    if not isinstance(table, dict) or "default" not in table:
        raise _bad(file, "findings", "a mapping with a default entry is required")
    out = {}
    for label, entry in table.items():
        if not isinstance(entry, dict) or entry.get("target") not in TARGETS:
            raise _bad(file, f"findings.{label}.target", f"must be one of {', '.join(TARGETS)}")
        extra = sorted(set(entry) - {"target", "zones"})
        if extra:
            raise _bad(file, f"findings.{label}.{extra[0]}", "unknown key (allowed: target, zones)")
        zones = entry.get("zones") or (list(LUNG_ZONES) if entry["target"] == "lung" else [])
        if any(z not in LUNG_ZONES for z in zones):
            raise _bad(file, f"findings.{label}.zones", f"zones must be among {', '.join(LUNG_ZONES)}")
        out[label.casefold()] = {"target": entry["target"], "zones": list(zones)}
    return out


def region_for(label: str) -> dict[str, Any]:
    """Where to look for ``label`` (a copy of its table entry)."""
    table = finding_regions()
    return dict(table.get(label.casefold(), table["default"]))


def fill(template: str, facts: dict[str, Any]) -> str:
    """Replace ``{dotted.name}`` placeholders with facts (unknown ones become "unknown")."""
    def value(match: re.Match) -> str:
        current: Any = facts
        for part in match.group(1).split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if current is None:
            return "location not determined" if match.group(1).endswith("where") else "unknown"
        return f"{current:.2f}" if isinstance(current, float) else str(current)
    return _PLACEHOLDER.sub(value, template)


def evaluate(facts: dict[str, Any], present: list[dict[str, Any]],
             rules: tuple[tuple[Rule, ...], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Try every rule on the facts and the present findings.

    Parameters
    ----------
    facts:
        ``patient``, ``measurements``, ``image``, ``findings`` (``present`` labels,
        ``count``), ``lesions``.
    present:
        The present findings: ``{"label", "probability", "side", "zone"}``.

    Returns
    -------
    dict
        ``matched`` (every match: rule id, finding, months, suggestion, source,
        priority; most urgent first) and ``management`` (the most urgent match, or the
        table's default) with its ``rule_id``.
    """
    table, default = rules or follow_up_rules()
    matched = []
    for rule in table:
        if rule.labels:
            wanted = {label.casefold() for label in rule.labels}
            tries = [f for f in present if f["label"].casefold() in wanted]
        else:
            tries = [None]
        for finding in tries:
            local = dict(facts)
            if finding is not None:
                local["finding"] = finding | {"label_lower": finding["label"].replace("_", " ").lower(),
                                              "where": _where(finding)}
            if rule.when is not None and not rule.when(local):
                continue
            matched.append({"rule_id": rule.id, "finding": finding["label"] if finding else None,
                            "follow_up_months": rule.follow_up_months, "priority": rule.priority,
                            "suggestion": fill(rule.suggestion, local), "source": rule.source})
    matched.sort(key=lambda m: (m["priority"], m["rule_id"], m["finding"] or ""))
    if matched:
        top = matched[0]
        management = {"follow_up_months": top["follow_up_months"], "suggestion": top["suggestion"],
                      "source": top["source"], "rule_id": top["rule_id"]}
    else:
        management = dict(default) | {"rule_id": None}
    return {"matched": matched, "management": management}


def _where(finding: dict[str, Any]) -> str | None:
    side, zone = finding.get("side"), finding.get("zone")
    if side and zone:
        return f"{side} {zone} zone" if side != "bilateral" else f"both {zone} zones"
    return side or None
