"""The volume tools over stdio (a real server subprocess and the SDK's client): a CT series added
file by file, listed one entry per stack, measured and segmented from the encrypted store."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from engine.analysis.volume.roi import roi_box_stats
from engine.imaging.volume import load_volume
from tests.conftest import REPO
from tests.mcp import failed, ok
from tests.mcp.test_stdio import server_command
from tests.volumes.ctseries import sub_volume, write_ct_series


@pytest.fixture
def series(tmp_path: Path, shared_ct_dir: Path) -> Path:
    folder = tmp_path / "ct"
    folder.mkdir()
    write_ct_series(folder, volume=sub_volume(40, 56), seed=3)
    return folder


def test_volume_tools_over_stdio(home: Path, model_pack: Path, series: Path) -> None:
    command, env = server_command(home, model_pack, series)
    parameters = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(REPO))
    expected = load_volume(series)
    box = [20, 30, 1, 90, 70, 14]

    async def scenario() -> None:
        async with stdio_client(parameters) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            session_id = (await ok(client, "create_study_session", name="ct"))["session_id"]
            assert (await ok(client, "list_series", session_id=session_id))["series"] == []
            for path in sorted(series.iterdir()):
                await ok(client, "add_image_to_session", session_id=session_id, image_path=str(path),
                         auto_analyze=False)
            listed = await ok(client, "list_series", session_id=session_id)
            (entry,) = listed["series"]
            (stack,) = entry["stacks"]
            assert entry["series_uid"] == expected.series_uid and stack["shape_zyx"] == [16, 101, 122]
            assert stack["orientation"] == expected.orientation and stack["warnings"] == []
            status = await ok(client, "get_session_status", session_id=session_id)
            assert len(status["series"]) == 1 and {i["stack"] for i in status["images"]} == {stack["stack"]}
            roi = await ok(client, "volume_roi", session_id=session_id, box=box)
            assert roi["statistics"] == roi_box_stats(expected.voxels, expected.spacing_zyx, box).to_dict()
            centre = expected.voxel_to_patient([60, 50, 8]).tolist()
            sphere = await ok(client, "volume_roi", session_id=session_id, center_mm=centre, radius_mm=6.0,
                              series_uid=expected.series_uid)
            assert sphere["statistics"]["voxel_count"] == 33  # lattice points within 2 steps of the centre
            segmented = await ok(client, "segment_volume", session_id=session_id, structures=["body"])
            assert segmented["model_trained"] is False
            assert segmented["segmentation"]["structures"][0]["name"] == "body"
            error = await failed(client, "volume_roi", session_id=session_id, box=[0, 0, 0, 500, 10, 10])
            assert error["code"] == "INVALID_REGION"
            error = await failed(client, "volume_roi", session_id=session_id, series_uid="1.2.3", box=box)
            assert error["code"] == "INVALID_ARGUMENT"

    anyio.run(scenario)
