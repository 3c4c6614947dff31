"""A tiny, safe expression language for the ``when:`` conditions of pipelines and rules.

Conditions are read from YAML written by users, so they are never given to ``eval``.
The text is parsed with :func:`ast.parse` in ``eval`` mode and only a whitelist of
node types is accepted; evaluation walks that tree over a dict of plain facts.

Grammar (Python syntax, a small subset of it):

- literals: numbers, strings, ``true``/``false``/``null`` (also ``True``/``False``/``None``),
  lists ``[a, b]``;
- names and dotted names: ``image.type``, ``finding.label``, ``patient.age``; a name
  that is absent from the facts evaluates to ``null`` (so ``patient.age >= 35`` is
  simply false when the age is unknown);
- comparisons ``== != < <= > >= in not in`` (chains allowed: ``0.5 <= x < 1``); an
  ordering comparison with a ``null`` or mismatched type is false, never an error;
- ``and``, ``or``, ``not``, parentheses.

Anything else (calls, subscripts, arithmetic, lambdas, comprehensions...) is refused
at parse time with a message naming the construct.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from engine.errors import ErrorCode, MedVisionError

#: Literal names accepted besides Python's constants, for YAML authors.
_LITERAL_NAMES = {"true": True, "false": False, "null": None, "none": None}
_ORDERING: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}
#: Longest condition accepted (characters): conditions are short facts, not programs.
MAX_CONDITION_CHARS = 500


@dataclass(frozen=True)
class Condition:
    """A parsed condition: its source text, its tree and the root names it reads."""

    text: str
    tree: ast.Expression
    names: frozenset[str]

    def __call__(self, facts: Mapping[str, Any]) -> bool:
        """Evaluate over ``facts`` (nested dicts); the result is coerced to bool."""
        return bool(_evaluate(self.tree.body, facts))

    def value(self, facts: Mapping[str, Any]) -> Any:
        """The raw value of the expression (for a bare name, its fact)."""
        return _evaluate(self.tree.body, facts)


def parse_condition(text: str, *, allowed_roots: Iterable[str] | None = None, where: str = "condition") -> Condition:
    """Parse and check one condition.

    Parameters
    ----------
    text:
        The expression.
    allowed_roots:
        When given, every name the expression reads must start with one of these
        roots (``image``, ``finding``...); an unknown root is refused, naming it.
    where:
        Where the condition comes from, for the error message (``steps[2].when``).

    Raises
    ------
    MedVisionError
        ``INVALID_ARGUMENT`` naming ``where`` and the problem.
    """
    if not isinstance(text, str) or not text.strip():
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{where}: a condition must be a non-empty string")
    if len(text) > MAX_CONDITION_CHARS:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                             f"{where}: condition longer than {MAX_CONDITION_CHARS} characters")
    tree = _parse_cached(text.strip())
    if isinstance(tree, str):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{where}: {tree} in {text!r}")
    names = frozenset(_roots(tree.body))
    if allowed_roots is not None:
        unknown = sorted(names - set(allowed_roots))
        if unknown:
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT,
                f"{where}: unknown fact {unknown[0]!r} in {text!r}; known facts: {', '.join(sorted(allowed_roots))}",
                unknown=unknown,
            )
    return Condition(text.strip(), tree, names)


@lru_cache(maxsize=512)
def _parse_cached(text: str) -> ast.Expression | str:
    """The checked tree, or an error message (cached: rules are evaluated per finding)."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        return f"syntax error ({exc.msg})"
    for node in ast.walk(tree):
        problem = _refuse(node)
        if problem:
            return problem
    return tree


def _refuse(node: ast.AST) -> str | None:
    allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare,
               ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Name,
               ast.Load, ast.Attribute, ast.Constant, ast.List, ast.Tuple, ast.USub)
    if not isinstance(node, allowed):
        return f"{type(node).__name__} is not allowed in a condition"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and not (
            isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, int | float)):
        return "unary minus is only allowed before a number"
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
        return f"attribute {node.attr!r} is not allowed"
    if isinstance(node, ast.Name) and node.id.startswith("_"):
        return f"name {node.id!r} is not allowed"
    return None


def _roots(node: ast.AST) -> Iterable[str]:
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and child.id.lower() not in _LITERAL_NAMES:
            yield child.id


def _evaluate(node: ast.AST, facts: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id.lower() in _LITERAL_NAMES and node.id not in facts:
            return _LITERAL_NAMES[node.id.lower()]
        return facts.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _evaluate(node.value, facts)
        return base.get(node.attr) if isinstance(base, Mapping) else None
    if isinstance(node, ast.List | ast.Tuple):
        return [_evaluate(item, facts) for item in node.elts]
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, facts)
        if isinstance(node.op, ast.Not):
            return not operand
        return -operand  # USub, checked to precede a number
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_evaluate(v, facts) for v in node.values)
        return any(_evaluate(v, facts) for v in node.values)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, facts)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, facts)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{type(node).__name__} is not allowed in a condition")


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    if isinstance(op, ast.Eq):
        return _norm(left) == _norm(right)
    if isinstance(op, ast.NotEq):
        return _norm(left) != _norm(right)
    if isinstance(op, ast.In | ast.NotIn):
        inside = _contains(right, left)
        return inside if isinstance(op, ast.In) else not inside
    if left is None or right is None or isinstance(left, bool) != isinstance(right, bool):
        return False
    try:
        return bool(_ORDERING[type(op)](left, right))
    except TypeError:
        return False


def _norm(value: Any) -> Any:
    """Strings compare case-insensitively (labels come in many spellings)."""
    return value.casefold() if isinstance(value, str) else value


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return isinstance(item, str) and item.casefold() in container.casefold()
    if isinstance(container, Mapping):
        container = list(container)
    if isinstance(container, list | tuple | set | frozenset):
        return _norm(item) in {_norm(v) for v in container if not isinstance(v, dict | list)}
    return False
