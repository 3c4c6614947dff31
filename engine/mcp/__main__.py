"""``python -m engine.mcp``: the stdio MCP server."""

import sys

from engine.mcp.server import main

if __name__ == "__main__":  # guarded: tools that import every module (pkgutil.walk_packages) must not start it
    sys.exit(main())
