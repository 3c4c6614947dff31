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
