"""A decompression bomb over MCP (issue 14, item 1): an isError result with IMAGE_TOO_LARGE, no traceback."""

from __future__ import annotations

from pathlib import Path

import anyio

from tests import bombs
from tests.mcp import connect, failed, ok


def test_add_image_refuses_bombs_with_a_coded_error(home: Path, model_pack: Path, tmp_path: Path) -> None:
    png = bombs.png_zeros(tmp_path / "wide.png", 9400, 9400, rgb=True)
    cr = bombs.deflated_cr(tmp_path / "cr.dcm", 12000, 12000)

    async def scenario() -> None:
        async with connect(home, model_pack, [tmp_path]) as client:
            session_id = (await ok(client, "create_study_session", name="bombs"))["session_id"]
            for path in (cr, png):
                error = await failed(client, "add_image_to_session", session_id=session_id, image_path=str(path))
                assert error["code"] == "IMAGE_TOO_LARGE" and error["details"]["file"] == path.name, error
            status = await ok(client, "get_session_status", session_id=session_id)
            assert status["images"] == [], status

    anyio.run(scenario)


def test_the_server_process_stays_small_while_refusing_bombs(home: Path, model_pack: Path, tmp_path: Path) -> None:
    """The real stdio server, under an address-space cap: its own peak RSS after both bombs stays small
    (on dcb70c6 the CR left 1,083 MB resident and the PNG next failed with MemoryError at 2.3 GB)."""
    import json
    import subprocess

    from tests.mcp.test_stdio import server_command

    png = bombs.png_zeros(tmp_path / "wide.png", 9400, 9400, rgb=True)
    cr = bombs.deflated_cr(tmp_path / "cr.dcm", 12000, 12000)
    command, env = server_command(home, model_pack, tmp_path)
    report = tmp_path / "server.rss"
    server = bombs.capped_popen(command, report=report, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, cwd=tmp_path, text=True)

    def request(request_id: int, method: str, params: dict) -> dict:
        server.stdin.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}) + "\n")
        server.stdin.flush()
        while True:
            line = server.stdout.readline()
            assert line, "the server exited"
            reply = json.loads(line)
            if reply.get("id") == request_id:
                return reply

    def tool(request_id: int, tool_name: str, **arguments: object) -> dict:
        return request(request_id, "tools/call", {"name": tool_name, "arguments": arguments})["result"]

    try:
        request(1, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                  "clientInfo": {"name": "bombs", "version": "0"}})
        server.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        session_id = tool(2, "create_study_session", name="bombs")["structuredContent"]["session_id"]
        for request_id, path in enumerate((cr, png), start=3):
            result = tool(request_id, "add_image_to_session", session_id=session_id, image_path=str(path),
                          auto_analyze=False)
            assert result["isError"] is True and "IMAGE_TOO_LARGE" in result["content"][0]["text"], result
        assert tool(9, "get_session_status", session_id=session_id)["structuredContent"]["images"] == []
    finally:
        server.stdin.close()
        server.stdout.read()
        server.wait(60)
    peak_mb = bombs.reported_peak_mb(report)
    assert server.returncode == 0
    assert peak_mb < 600, f"the MCP server peaked at {peak_mb:.0f} MB"
