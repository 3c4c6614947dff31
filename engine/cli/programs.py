"""``medvision desktop | dicom-node | mcp``: the programs that parse their own arguments."""

from __future__ import annotations

import argparse
import sys

#: The option prefix of the sub-parsers that pass every word on (``desktop``, ``dicom-node``): NUL,
#: which no command-line word can hold, so every word is passed on, in order.
PASS_ON = "\0"


def cmd_desktop(args: argparse.Namespace) -> int:
    """Open the desktop app as its own program (``python -m desktop``): the engine never imports Qt."""
    import os
    import subprocess

    env = dict(os.environ)
    if args.home:
        env["MEDVISION_HOME"] = args.home
    if args.pack:
        env["MEDVISION_MODEL_PACK"] = args.pack
    return subprocess.call([sys.executable, "-m", "desktop", *args.desktop_args], env=env)


def cmd_dicom_node(args: argparse.Namespace) -> int:
    """``medvision dicom-node [serve|status] ...`` (dicom_node.scp.main parses the rest)."""
    from dicom_node.scp import main as node_main

    argv = list(args.desktop_args)
    if not argv or argv[0] not in ("serve", "status", "-h", "--help"):
        argv = ["serve", *argv]
    argv += [f"--home={args.home}"] * bool(args.home) + [f"--model-pack={args.pack}"] * bool(args.pack)
    if argv[0] in ("serve", "status"):
        argv += ["-v"] * args.verbose  # `medvision -v dicom-node ...`: the node sets its own logging
    return node_main(argv)


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve MCP over stdio (engine.mcp.server.main does the work)."""
    from engine.mcp.server import main as mcp_main

    argv = [f"--root={root}" for root in args.root] + [f"--timeout={args.timeout}"]
    argv += [f"--home={args.home}"] * bool(args.home) + [f"--model-pack={args.pack}"] * bool(args.pack)
    return mcp_main(argv)


def register(sub: argparse._SubParsersAction) -> None:
    """``mcp`` (``[--root DIR]... [--timeout S]``: the local stdio MCP server), ``desktop`` and ``dicom-node``."""
    mcp = sub.add_parser("mcp", help="serve the local MCP server over stdio (for Claude Desktop and other hosts)")
    mcp.add_argument("--root", action="append", default=[], metavar="DIR",
                     help="a folder whose images MCP clients may add (repeatable; also MEDVISION_MCP_ROOTS)")
    mcp.add_argument("--timeout", type=float, default=300.0, help="seconds one tool call may take (default 300)")
    mcp.set_defaults(func=cmd_mcp)
    # The desktop and the node parse their own arguments: these two take everything after their name
    # verbatim and in order. With no option prefix of their own (PASS_ON), a leading "--port 1"
    # is not an unknown option (argparse would set it aside and hand the rest over without it) but the
    # first of the passed-on words, so `medvision dicom-node --port 1` is `dicom-node serve --port 1`.
    desktop = sub.add_parser("desktop", help="open the desktop workstation (PySide6)", add_help=False,
                             prefix_chars=PASS_ON)
    desktop.add_argument("desktop_args", nargs=argparse.REMAINDER, help="files or folders to open")
    desktop.set_defaults(func=cmd_desktop, pass_on=True)
    node = sub.add_parser("dicom-node", help="the DICOM C-STORE node: serve (default) or status", add_help=False,
                          prefix_chars=PASS_ON)
    node.add_argument("desktop_args", nargs=argparse.REMAINDER, help="serve|status and their options (--help)")
    node.set_defaults(func=cmd_dicom_node, pass_on=True, own_logging=True)
