"""The server as a real subprocess over stdio: the SDK's client, and raw JSON-RPC on stdout."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.conftest import REPO
from tests.mcp import SPEC_TOOLS, failed, ok


def server_command(home: Path, model_pack: Path, root: Path) -> tuple[list[str], dict[str, str]]:
    """``python -m engine.mcp`` with its environment (no keyring, its own data dir)."""
    env = {**os.environ, "MEDVISION_HOME": str(home), "MEDVISION_MODEL_PACK": str(model_pack),
           "MEDVISION_KEYRING": "0", "PYTHONPATH": str(REPO)}
    return [sys.executable, "-m", "engine.mcp", "--root", str(root), "--timeout", "120"], env


def test_workflow_over_stdio(home: Path, model_pack: Path, rg1_path: Path) -> None:
    command, env = server_command(home, model_pack, rg1_path.parent)
    parameters = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(REPO))

    async def scenario() -> None:
        async with stdio_client(parameters) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            assert SPEC_TOOLS <= {t.name for t in (await client.list_tools()).tools}
            session_id = (await ok(client, "create_study_session", name="stdio"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(rg1_path),
                     auto_analyze=False)
            analysis = await ok(client, "analyze_image", session_id=session_id, preset="full")
            assert analysis["segmentation"]["status"] == "ok"
            await ok(client, "analyze_selected_region", session_id=session_id,
                     region={"type": "bbox", "coordinates": [0.2, 0.2, 0.5, 0.5], "format": "relative"},
                     actions=["describe"])
            await ok(client, "add_annotation", session_id=session_id, annotation_type="bbox",
                     coordinates=[100, 100, 200, 200], label="check")
            assert (await failed(client, "add_image_to_session", session_id=session_id,
                                 image_path="/etc/passwd"))["code"] == "INVALID_ARGUMENT"
            for export_format in ("json", "pdf", "dicom_sr"):
                exported = await ok(client, "export_study", session_id=session_id, format=export_format)
                assert Path(exported["export_path"]).exists()
            assert (await ok(client, "get_annotations", session_id=session_id))["count"] == 2

    anyio.run(scenario)


def test_stdout_carries_only_json_rpc(home: Path, model_pack: Path, rg1_path: Path) -> None:
    """Requests one at a time, bad ones included; every stdout line is a JSON-RPC 2.0 message."""
    command, env = server_command(home, model_pack, rg1_path.parent)
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, cwd=REPO, text=True)
    lines: list[str] = []

    def send(message: dict[str, Any]) -> dict[str, Any] | None:
        server.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        server.stdin.flush()
        while "id" in message:  # a request: read until its response
            line = server.stdout.readline()
            assert line, f"the server exited: {server.stderr.read()[-2000:]}"
            lines.append(line)
            reply = json.loads(line)
            if reply.get("id") == message["id"]:
                return reply
        return None

    def call(request_id: int, tool: str, **arguments: Any) -> dict[str, Any]:
        return send({"id": request_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})

    try:
        send({"id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
        send({"method": "notifications/initialized"})
        assert len(send({"id": 2, "method": "tools/list"})["result"]["tools"]) >= len(SPEC_TOOLS)
        session_id = call(3, "create_study_session")["result"]["structuredContent"]["session_id"]
        assert call(4, "get_session_status", session_id="missing")["result"]["isError"] is True
        assert call(5, "add_image_to_session", session_id=session_id, image_path="/dev/zero")["result"]["isError"]
        assert call(6, "add_image_to_session", session_id=session_id, image_path=str(rg1_path),
                    auto_analyze=True)["result"]["isError"] is False
        assert "error" in send({"id": 7, "method": "no/such/method"})
        assert call(8, "get_annotations", session_id=session_id)["result"]["structuredContent"]["count"] == 0
    finally:
        rest, errors = server.communicate(timeout=60)  # closes stdin: the server ends
    lines += rest.splitlines(keepends=True)
    assert server.returncode == 0, errors[-2000:]
    for line in lines:
        message = json.loads(line)
        assert message["jsonrpc"] == "2.0" and ("id" in message or "method" in message), line


def test_a_line_that_is_not_a_message_gets_a_json_rpc_error_and_stderr_never_quotes_arguments(
        home: Path, model_pack: Path, rg1_path: Path) -> None:
    """Invalid JSON or a lone surrogate got no reply, and stderr logged the start and end of the raw line
    (issue 14, item 10): now -32700 / -32600 replies, and the SDK's validation logs keep their first words."""
    command, env = server_command(home, model_pack, rg1_path.parent)
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, cwd=REPO, bufsize=0)  # unbuffered: select() sees every reply line

    def send(line: bytes) -> dict[str, Any]:
        server.stdin.write(line + b"\n")
        server.stdin.flush()
        ready, _, _ = select.select([server.stdout], [], [], 60)
        assert ready, f"no reply within 60 s to {line[:40]!r}"
        reply = server.stdout.readline()
        assert reply, f"the server exited: {server.stderr.read()[-2000:]}"
        return json.loads(reply)

    secret = "SECRET-START" + "x" * 400 + "SECRET-END"
    try:
        send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}}).encode())
        server.stdin.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        parse_errors = [
            f"not json {secret}".encode(),
            b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "create_study_session", '
            b'"arguments": {"name": "\\ud800 ' + secret.encode() + b'"}}}',  # a lone surrogate, escaped
            b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "create_study_session", '
            b'"arguments": {"name": "\xed\xa0\x80 ' + secret.encode() + b'"}}}',  # ... and encoded
            b'{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"n": NaN}}',
        ]
        for line in parse_errors:
            assert send(line) == {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
        reply = send(json.dumps({"jsonrpc": "2.0", "id": 5, "params": secret}).encode())
        assert reply == {"jsonrpc": "2.0", "id": 5, "error": {"code": -32600, "message": "Invalid Request"}}
        reply = send(json.dumps({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                                 "params": {"name": 5, "arguments": secret}}).encode())
        assert reply["id"] == 6 and reply["error"]["code"] == -32602
        server.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                                       "params": {"progressToken": secret}}).encode() + b"\n")
        reply = send(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}).encode())
        assert len(reply["result"]["tools"]) >= len(SPEC_TOOLS)
    finally:
        _, errors = server.communicate(timeout=60)
    assert server.returncode == 0
    stderr = errors.decode("utf-8", "replace")
    assert "SECRET" not in stderr and "xxxxxxxx" not in stderr, stderr[-2000:]


def test_a_line_too_long_is_dropped_in_bounded_steps_and_answered(home: Path, model_pack: Path, rg1_path: Path,
                                                                   tmp_path: Path) -> None:
    """A 256 MiB line (no newline for a long while) costs the server a bounded step, not the line:
    it gets -32700 and the next request is answered (on dcb70c6 the whole line was held, then decoded)."""
    from engine.mcp.transport import MAX_LINE_BYTES
    from tests import bombs

    command, env = server_command(home, model_pack, rg1_path.parent)
    report = tmp_path / "server.rss"
    server = bombs.capped_popen(command, report=report, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, cwd=REPO)

    def send(text: bytes) -> None:
        server.stdin.write(text)
        server.stdin.flush()

    def reply() -> dict[str, Any]:
        line = server.stdout.readline()
        assert line, "the server exited"
        return json.loads(line)

    try:
        send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "long", "version": "0"}}}).encode() + b"\n")
        assert reply()["id"] == 1
        send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode() + b"\n")
        chunk = b"x" * (1 << 20)
        for _ in range(256):
            send(chunk)
        send(b"\n")
        refused = reply()
        assert refused["id"] is None and refused["error"]["code"] == -32700
        assert str(MAX_LINE_BYTES) in refused["error"]["message"]
        send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode() + b"\n")
        assert len(reply()["result"]["tools"]) >= len(SPEC_TOOLS)
    finally:
        server.stdin.close()
        server.stdout.read()
        server.wait(60)
    assert server.returncode == 0
    peak_mb = bombs.reported_peak_mb(report)
    assert peak_mb < 330, f"the server peaked at {peak_mb:.0f} MB for one long line"
