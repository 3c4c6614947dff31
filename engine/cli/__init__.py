"""The ``medvision`` command line.

Bad input ends with exit code 2 and one line on stderr that starts with the error
code (``INVALID_IMAGE_TYPE: ...``). Output for people goes to stdout; ``--json``
writes the full machine-readable result.

Each module of this package holds one family of commands and a ``register(sub)`` that
adds its sub-parsers; a command's function is the parser's ``func`` default. A sub-parser
that passes its words on to its own program (``desktop``, ``dicom-node``) sets
``pass_on``; one whose program sets up its own logging sets ``own_logging``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from engine.cli import (
    agent,
    audit,
    compare,
    data,
    images,
    library,
    packs,
    pacs,
    programs,
    sessions,
    volumes,
)
from engine.cli.common import EXIT_BAD_INPUT
from engine.errors import MedVisionError

#: The command families, in the order ``medvision --help`` lists them.
FAMILIES = (images, volumes, library, sessions, audit, packs, agent, pacs, compare, data, programs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="medvision", description="MedVision offline radiology workstation")
    parser.add_argument("--home", help="data directory (default: MEDVISION_HOME or the user data dir)")
    parser.add_argument("--pack", help="model pack directory (default: MEDVISION_MODEL_PACK or HOME/models/default)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medvision`` console script."""
    args, extra = build_parser().parse_known_args(argv)
    if extra and not getattr(args, "pass_on", False):
        build_parser().parse_args(argv)  # the usual error for unknown arguments
    if extra:
        args.desktop_args = [*args.desktop_args, *extra]
    if not getattr(args, "own_logging", False):  # the node sets its own (--log-level, or -v passed on)
        level = {0: logging.ERROR, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        logging.captureWarnings(True)  # library RuntimeWarnings are log records (shown with -v), not stray stderr lines
    try:
        return args.func(args)
    except MedVisionError as exc:
        print(f"{exc.code.value}: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
