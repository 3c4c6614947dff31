"""What every command of the ``medvision`` command line shares: the engine, exit codes, JSON output."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
IMAGE_TYPES = ["CXR", "KUB", "CT", "MRI", "US", "EKG", "Other"]


def open_engine(args: argparse.Namespace):  # noqa: ANN201 - engine.api imported lazily for start-up time
    """The ``Engine`` for ``--home`` and ``--pack`` (use it as a context manager)."""
    from engine.api import Engine

    return Engine(home=args.home, model_pack=args.pack, front_end="cli")


def load_image(engine, path: str, image_type: str | None) -> tuple[str, str]:  # noqa: ANN001
    """A new session holding the image file ``path``: (session id, image id)."""
    engine.check_image_file(path)  # a file that cannot be read makes no session
    session = engine.create_study_session(f"cli {Path(path).name}")["session_id"]
    try:
        image = engine.add_image_to_session(session, path, image_type=image_type, auto_analyze=False)
    except BaseException:  # a coded refusal, an unexpected error or Ctrl-C: no empty session left behind
        engine.delete_session(session)
        raise
    return session, image["image_id"]


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None, so that any JSON parser reads it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_text(payload: object) -> str:
    """Strict JSON text (RFC 8259: no NaN or Infinity) of a result."""
    return json.dumps(finite(payload), indent=2, allow_nan=False)


def write_json(target: str | None, payload: object) -> None:
    """Write ``payload`` as strict JSON to ``target`` when one was given (``--json OUT``)."""
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json_text(payload) + "\n")
        print(f"JSON written to {target}")


def disclaimer() -> str:
    """The product's disclaimer line."""
    from engine.vocabulary import DISCLAIMER

    return DISCLAIMER
