"""List the tools of a stdio MCP server with the mcp SDK's client; prints one JSON line.

    python mcp_list_tools.py COMMAND [ARG...]

Run by the packaging tests with the interpreter of an installed or frozen MedVision, so
the client, the SDK and the server all come from what was installed offline.
"""

from __future__ import annotations

import json
import os
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def _list(command: str, args: list[str]) -> dict:
    with anyio.fail_after(120):
        return await _session(command, args)


async def _session(command: str, args: list[str]) -> dict:
    params = StdioServerParameters(command=command, args=args, env=dict(os.environ))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        tools = await session.list_tools()
        return {"server": init.serverInfo.name, "tools": sorted(t.name for t in tools.tools)}


def main() -> int:
    result = anyio.run(_list, sys.argv[1], sys.argv[2:])
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
