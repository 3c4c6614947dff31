"""What every export writer returns: named bytes that the caller writes atomically."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Artifact:
    """One output file: ``name`` is built from ids (never from patient names)."""

    name: str
    data: bytes
    media_type: str
