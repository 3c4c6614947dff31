"""Small helpers every use-case result shares: JSON-ready values and 'unavailable' sections."""

from __future__ import annotations

from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """Numpy scalars/arrays to plain JSON types (results cross process boundaries)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def unavailable(reason: str) -> dict[str, str]:
    """A result section for an analysis the model pack cannot run."""
    return {"status": "unavailable", "reason": reason}
