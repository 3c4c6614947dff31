"""The volume tools over stdio (a real server subprocess and the SDK's client): a CT series added
file by file, listed one entry per stack, measured and segmented from the encrypted store."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from engine.analysis.volume.roi import roi_box_stats
from engine.imaging.volume import load_volume
from tests.conftest import REPO
from tests.mcp import failed, ok
from tests.mcp.test_stdio import server_command
from tests.volumes.ctseries import sub_volume, write_ct_series
from tests.volumes.tinyunet import write_tiny_unet_pack


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


def test_plane_tools_and_the_unet_over_stdio(home: Path, model_pack: Path, series: Path, tmp_path: Path) -> None:
    """Shapes drawn on coronal and sagittal planes, a distance across planes, and segment_volume with the
    pack's U-Net (a real, tiny ONNX segment3d model) next to the classical method."""
    pack = write_tiny_unet_pack(tmp_path / "tiny-pack", model_pack)
    command, env = server_command(home, pack, series)
    parameters = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(REPO))
    expected = load_volume(series)
    depth = expected.voxels.shape[0]

    async def scenario() -> None:
        async with stdio_client(parameters) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            session_id = (await ok(client, "create_study_session", name="ct"))["session_id"]
            for path in sorted(series.iterdir()):
                await ok(client, "add_image_to_session", session_id=session_id, image_path=str(path),
                         auto_analyze=False)
            # a rectangle on coronal row y=50: plane rows 2..9 are z depth-10..depth-3, columns 10..30 are x
            roi = await ok(client, "plane_roi", session_id=session_id, plane="coronal", index=50, shape="rectangle",
                           geometry=[10, 2, 30, 9], label="coronal box")
            block = expected.voxels[depth - 10: depth - 2, 50, 10:31]
            assert roi["statistics"]["voxel_count"] == block.size
            assert roi["statistics"]["mean_hu"] == pytest.approx(float(block.mean(dtype=np.float64)))
            assert roi["statistics"]["volume_ml"] == pytest.approx(block.size * 27 / 1000)
            assert roi["statistics"]["area_mm2"] == pytest.approx(block.size * 9)
            assert roi["statistics"]["z_range"] == [depth - 10, depth - 3]
            (stored,) = [a for a in (await ok(client, "get_annotations", session_id=session_id))["annotations"]
                         if a["annotation_id"] == roi["annotation_id"]]
            assert stored["coordinates"]["geometry"]["plane"] == "coronal"
            assert stored["coordinates"]["stats"]["voxel_count"] == block.size
            # get_visualization draws it where it crosses a plane: coronal 50 and sagittal 20, not coronal 40
            for plane, index, drawn in (("coronal", 50, True), ("sagittal", 20, True), ("coronal", 40, False)):
                view = await ok(client, "get_visualization", session_id=session_id, plane=plane, index=index)
                counts = {layer["id"]: layer["count"] for layer in view["layers"]}
                assert counts.get("volume_roi_user") == (1 if drawn else None), (plane, index, counts)
            polygon = await ok(client, "plane_roi", session_id=session_id, plane="sagittal", index=60,
                               shape="polygon", geometry=[[20, 1], [80, 1], [50, 14]], annotate=False)
            assert polygon["statistics"]["voxel_count"] > 0 and "annotation_id" not in polygon
            error = await failed(client, "plane_roi", session_id=session_id, plane="sagittal", index=122,
                                 shape="rectangle", geometry=[0, 0, 1, 1])
            assert error["code"] == "INVALID_REGION"
            # voxel (60, 50, 8) picked on the axial plane and on the sagittal plane: 0 mm apart; 5 slices: 15 mm
            same = await ok(client, "measure_distance", session_id=session_id, points=[
                {"plane": "axial", "index": 8, "point": [60, 50]},
                {"plane": "sagittal", "index": 60, "point": [50, depth - 1 - 8]}])
            assert same["length_mm"] == 0.0 and same["points_xyz"][0] == [60, 50, 8]
            apart = await ok(client, "measure_distance", session_id=session_id, points=[
                {"plane": "coronal", "index": 50, "point": [60, depth - 1 - 8]}, {"voxel": [60, 50, 13]}])
            assert apart["length_mm"] == pytest.approx(15.0)
            in_mm = await ok(client, "measure_distance", session_id=session_id, points=[
                {"patient_mm": expected.voxel_to_patient([60, 50, 8]).tolist()}, {"voxel": [60, 50, 13]}])
            assert in_mm["length_mm"] == pytest.approx(15.0) and in_mm["points_xyz"][0] == pytest.approx([60, 50, 8])
            unet = await ok(client, "segment_volume", session_id=session_id, method="unet")
            assert unet["method"] == "unet" and unet["model_trained"] is False
            assert unet["model"]["id"] == "tiny-unet-fp32" and unet["segmentation"]["backend"].startswith("onnxruntime")
            assert unet["note"] == "These are outputs of untrained development models, not findings."
            assert unet["banner"].startswith("Development models")
            names = {s["name"]: s for s in unet["segmentation"]["structures"]}
            assert set(names) <= {"lung_like", "soft_tissue", "bone_like"} and "soft_tissue" in names
            assert unet["segmentation"]["labels"]["soft_tissue"] == 2  # the pack's label map numbering
            assert names["soft_tissue"]["volume_ml"] == pytest.approx(names["soft_tissue"]["voxel_count"] * 27 / 1000,
                                                                      abs=1e-3)
            assert -200 < names["soft_tissue"]["mean_hu"] < 200
            classical = await ok(client, "segment_volume", session_id=session_id, structures=["body"])
            assert classical["method"] == "classical" and classical["model"] is None
            assert classical["segmentation"]["structures"][0]["mean_hu"] is not None
            error = await failed(client, "segment_volume", session_id=session_id, method="unet", structures=["body"])
            assert error["code"] == "INVALID_ARGUMENT"

    anyio.run(scenario)
