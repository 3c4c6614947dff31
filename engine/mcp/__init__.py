"""Local stdio MCP server: a thin adapter over :class:`engine.api.Engine`.

Run it with ``medvision mcp --root DIR`` or ``python -m engine.mcp --root DIR``.
"""
