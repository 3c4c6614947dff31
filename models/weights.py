"""Reading a site's upstream checkpoints: every failure is a coded error naming the file.

The builders load each checkpoint the way its upstream library does; what those loaders
raise on a truncated, mismatched or wrong-architecture file varies (``RuntimeError``,
``UnpicklingError``, ``AttributeError``, ``SafetensorError``, ``EOFError``...). Here it
becomes one :class:`~engine.errors.MedVisionError` that names the file (relative to the
weights directory, never an absolute path) and says what was expected, so the pack build
stops before anything reaches the pack directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import ErrorCode, MedVisionError

#: The longest upstream error text quoted in a refusal (size-mismatch reports run to pages).
CAUSE_CHARS = 300


def require_file(weights_dir: Path, relative: str, what: str) -> Path:
    """``weights_dir / relative``, or ``FILE_NOT_FOUND`` naming it and what it should hold."""
    path = weights_dir / relative
    if not path.is_file():
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"{relative} not found in the weights directory ({what})",
                             file=relative)
    return path


def _cause(exc: BaseException, weights_dir: Path) -> str:
    text = " ".join(str(exc).split()).replace(str(weights_dir.resolve()), "").replace(str(weights_dir), "")
    text = text if len(text) <= CAUSE_CHARS else text[:CAUSE_CHARS] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def loading(weights_dir: Path, relative: str, expected: str) -> Iterator[None]:
    """Turn any failure inside the block into ``MODEL_LOAD_ERROR`` naming ``relative``.

    ``expected`` says what the file should be (architecture and format), so the message
    tells a wrong file from a damaged one. A :class:`MedVisionError` raised inside passes
    through unchanged.
    """
    try:
        yield
    except MedVisionError:
        raise
    except Exception as exc:  # noqa: BLE001 - upstream loaders raise anything; each becomes one coded error
        raise MedVisionError(
            ErrorCode.MODEL_LOAD_ERROR,
            f"{relative} is not a usable checkpoint: expected {expected} ({_cause(exc, weights_dir)})",
            file=relative,
        ) from exc
