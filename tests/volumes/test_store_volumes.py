"""Volumes from a session's encrypted store: listed from headers, assembled in memory, cached in
bounded memory, equal to the volume read from the same files, never written out in plaintext."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.analysis.volume.roi import roi_box_stats, roi_plane_stats
from engine.api import Engine
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume import load_volume
from tests.volumes.ctseries import sub_volume, write_ct_series

#: 24 slices of the example CT (101 x 122 each): 1.2 MB of float32 voxels per series.
SLICES = (40, 64)


@pytest.fixture(scope="module")
def two_series(tmp_path_factory: pytest.TempPathFactory, shared_ct_dir: Path) -> tuple[Path, Path]:
    """The same 24 slices written as two CT series (two series UIDs)."""
    first, second = tmp_path_factory.mktemp("series-a"), tmp_path_factory.mktemp("series-b")
    write_ct_series(first, volume=sub_volume(*SLICES), seed=1)
    write_ct_series(second, volume=sub_volume(*SLICES), seed=2)
    return first, second


def add_series(engine: Engine, session_id: str, folder: Path) -> list[str]:
    """Every file of a series through the ordinary intake road (one image per file)."""
    return [engine.add_image_to_session(session_id, path, auto_analyze=False)["image_id"]
            for path in sorted(folder.iterdir())]


@pytest.fixture
def stored(tmp_path: Path, model_pack: Path, two_series: tuple[Path, Path]):  # noqa: ANN201
    """An engine whose one session holds series A; the volume cache holds one such volume, not two."""
    settings = Settings(home=tmp_path / "home", model_pack=model_pack, use_keyring=False, volume_cache_mb=2)
    with Engine(settings) as engine:
        session_id = engine.create_study_session("ct")["session_id"]
        add_series(engine, session_id, two_series[0])
        yield engine, session_id


def test_series_are_listed_from_headers_with_their_stacks(stored, two_series) -> None:  # noqa: ANN001
    engine, session_id = stored
    listed = engine.list_series(session_id)
    (series,) = listed["series"]
    (stack,) = series["stacks"]
    expected = load_volume(two_series[0])
    assert series["series_uid"] == expected.series_uid and series["modality"] == "CT"
    assert stack["main"] and stack["slices"] == 24 and stack["shape_zyx"] == [24, 101, 122]
    assert stack["spacing_zyx_mm"] == pytest.approx(list(expected.spacing_zyx))
    np.testing.assert_allclose(stack["affine_lps"], expected.affine, atol=1e-6)
    assert stack["warnings"] == [] and len(stack["image_ids"]) == 24
    assert engine.services.volumes.cache.nbytes == 0  # listing decoded no pixel

    status = engine.get_session_status(session_id)
    assert [s["series_uid"] for s in status["series"]] == [expected.series_uid]
    assert len(status["images"]) == 24  # the per-image list stays, each slice marked with its stack
    assert sorted(i["z"] for i in status["images"]) == list(range(24))
    assert {(i["series_uid"], i["stack"]) for i in status["images"]} == {(expected.series_uid, stack["stack"])}


def test_the_stored_volume_equals_the_volume_from_the_files(stored, two_series) -> None:  # noqa: ANN001
    engine, session_id = stored
    volume, expected = engine.get_volume(session_id), load_volume(two_series[0])
    np.testing.assert_array_equal(volume.voxels, expected.voxels)
    np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-9)
    assert volume.source_uids == expected.source_uids and volume.spacing_zyx == expected.spacing_zyx
    assert engine.get_volume(session_id) is volume  # from the cache


def test_one_slice_comes_before_the_volume_and_the_rest_follows(stored, two_series) -> None:  # noqa: ANN001
    engine, session_id = stored
    volumes = engine.services.volumes
    expected = load_volume(two_series[0])
    image, info = volumes.volume_slice(session_id, 7, prefetch=False)
    np.testing.assert_array_equal(image, expected.voxels[7])
    assert info["from"] == "slice" and not volumes.is_cached(session_id)
    image, info = engine.volume_slice(session_id, 3)  # decoded alone, the volume assembled behind it
    np.testing.assert_array_equal(image, expected.voxels[3])
    volumes.wait_background()
    assert volumes.is_cached(session_id)
    image, info = engine.volume_slice(session_id, 3)
    assert info["from"] == "volume"
    coronal, info = engine.volume_slice(session_id, 50, plane="coronal")
    np.testing.assert_array_equal(coronal, expected.voxels[::-1, 50, :])
    assert info["pixel_spacing_mm"] == [3.0, 3.0] and info["shape"] == [24, 122]
    sagittal, _ = engine.volume_slice(session_id, 60, plane="sagittal")
    np.testing.assert_array_equal(sagittal, expected.voxels[::-1, :, 60])
    for z, plane, code in ((24, "axial", ErrorCode.INVALID_REGION), (0, "oblique", ErrorCode.INVALID_ARGUMENT)):
        with pytest.raises(MedVisionError) as caught:
            engine.volume_slice(session_id, z, plane=plane)
        assert caught.value.code is code


def test_the_cache_is_bounded_least_recently_used_out(stored, two_series) -> None:  # noqa: ANN001
    engine, session_id = stored
    add_series(engine, session_id, two_series[1])
    listed = engine.list_series(session_id)["series"]
    uids, stacks = [s["series_uid"] for s in listed], [s["stacks"][0]["stack"] for s in listed]
    assert len(uids) == 2
    with pytest.raises(MedVisionError) as caught:  # two series: name one
        engine.get_volume(session_id)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    cache = engine.services.volumes.cache
    first = engine.get_volume(session_id, uids[0])
    assert cache.keys() == [(session_id, uids[0], stacks[0])]
    engine.get_volume(session_id, uids[1])  # 2 x 1.2 MB over the 2 MB budget: the first goes
    assert cache.keys() == [(session_id, uids[1], stacks[1])] and cache.nbytes <= 2 * 1024 * 1024
    again = engine.get_volume(session_id, uids[0])
    assert again is not first and np.array_equal(again.voxels, first.voxels)
    engine.delete_session(session_id)
    assert cache.keys() == []
    with pytest.raises(MedVisionError) as caught:
        engine.list_series(session_id)
    assert caught.value.code is ErrorCode.SESSION_NOT_FOUND


def test_no_plaintext_is_written(stored) -> None:  # noqa: ANN001
    engine, session_id = stored
    engine.get_volume(session_id)
    engine.segment_volume(session_id, structures="bone")
    home = engine.settings.home
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"DICM" not in data and b"1.2.840.10008" not in data, path.relative_to(home)


def test_roi_and_anatomy_of_a_stored_series(stored, two_series) -> None:  # noqa: ANN001
    engine, session_id = stored
    expected = load_volume(two_series[0])
    box = [30, 40, 2, 70, 60, 20]
    result = engine.volume_roi(session_id, box=box)
    assert result["statistics"] == roi_box_stats(expected.voxels, expected.spacing_zyx, box).to_dict()
    assert result["unit"] == "HU"
    centre_xyz = np.array([61.0, 50.0, 12.0])
    centre_mm = expected.voxel_to_patient(centre_xyz).tolist()
    sphere = engine.volume_roi(session_id, center_mm=centre_mm, radius_mm=9.0)
    assert sphere["roi"]["center_xyz"] == pytest.approx(centre_xyz.tolist())
    assert sphere["statistics"]["voxel_count"] == 123  # (3 mm voxels: the points within 3 steps of the centre)
    segmented = engine.segment_volume(session_id, structures="body,bone")
    names = {s["name"]: s for s in segmented["segmentation"]["structures"]}
    assert names["body"]["found"] and names["bone"]["volume_ml"] > 10 and not segmented["model_trained"]


def test_plane_shapes_and_distances_of_a_stored_series(stored, two_series) -> None:  # noqa: ANN001
    engine, session_id = stored
    expected = load_volume(two_series[0])
    geometry = {"center": [50.0, 10.0], "radii": [6.0, 4.0]}  # coronal: columns x, rows z (highest z first)
    result = engine.volume_roi(session_id, plane="coronal", index=45, shape="ellipse", geometry=geometry,
                               annotate=True, label="coronal ellipse")
    assert result["statistics"] == roi_plane_stats(expected.voxels, expected.spacing_zyx, "coronal", 45, "ellipse",
                                                   geometry).to_dict() | {"area_mm2": pytest.approx(
                                                       result["statistics"]["voxel_count"] * 9.0)}
    assert result["roi"]["points_xyz"] == [[50.0, 45.0, 23.0 - 10.0]]
    (row,) = [a for a in engine.get_annotations(session_id)["annotations"] if a["type"] == "volume_roi"]
    assert row["coordinates"]["geometry"]["plane"] == "coronal" and row["label"] == "coronal ellipse"
    assert row["coordinates"]["z_range"] == result["statistics"]["z_range"]
    across = engine.volume_distance(session_id, [[10, 20, 2], [13, 24, 14]], annotate=True)
    assert across["length_mm"] == pytest.approx(float(np.linalg.norm(
        expected.voxel_to_patient([10, 20, 2]) - expected.voxel_to_patient([13, 24, 14]))))
    assert across["length_mm"] == pytest.approx(3.0 * np.sqrt(9 + 16 + 144))
    before = len(engine.get_annotations(session_id)["annotations"])
    for bad in (dict(plane="coronal", index=101, shape="ellipse", geometry=geometry),
                dict(plane="oblique", index=1, shape="ellipse", geometry=geometry),
                dict(plane="sagittal", index=3, shape="rectangle", geometry=[1.1, 1.1, 1.4, 1.4]),
                dict(plane="axial", index=2, shape="polygon", geometry=[[0, 0], [1, 1]])):
        with pytest.raises(MedVisionError) as caught:
            engine.volume_roi(session_id, annotate=True, **bad)
        assert caught.value.code in (ErrorCode.INVALID_REGION, ErrorCode.INVALID_ARGUMENT)
    for points in ([[0, 0, 0]], [[0, 0, 0], [0, 0, 99]]):
        with pytest.raises(MedVisionError) as caught:
            engine.volume_distance(session_id, points, annotate=True)
        assert caught.value.code == ErrorCode.INVALID_REGION
    assert len(engine.get_annotations(session_id)["annotations"]) == before  # nothing stored from bad input


def test_a_session_without_a_volume(engine: Engine, rg1_path: Path) -> None:
    session_id = engine.create_study_session("cxr")["session_id"]
    engine.add_image_to_session(session_id, rg1_path, auto_analyze=False)
    assert engine.list_series(session_id)["series"] == []
    assert engine.get_session_status(session_id)["series"] == []
    with pytest.raises(MedVisionError) as caught:
        engine.get_volume(session_id)
    assert caught.value.code is ErrorCode.NOT_A_VOLUME


def test_the_cli_reads_a_session(stored, two_series, model_pack: Path, tmp_path: Path,  # noqa: ANN001
                                 capsys: pytest.CaptureFixture) -> None:
    import json

    from engine.cli import main

    engine, session_id = stored
    add_series(engine, session_id, two_series[1])
    base = ["--home", str(engine.settings.home), "--pack", str(model_pack)]
    out = tmp_path / "volumes.json"
    assert main([*base, "volume", session_id, "--json", str(out)]) == 0
    assert capsys.readouterr().out.count("122 x 101 x 24 voxels") == 2
    first_uid = json.loads(out.read_text())["volumes"][0]["series_uid"]
    assert main([*base, "roi", session_id, "--box", "30", "40", "2", "70", "60", "20"]) == 2  # two series
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: ")
    assert main([*base, "roi", session_id, "--series", first_uid, "--box", "30", "40", "2", "70", "60", "20",
                 "--json", str(out)]) == 0
    expected = load_volume(two_series[0] if load_volume(two_series[0]).series_uid == first_uid else two_series[1])
    stats = json.loads(out.read_text())["statistics"]
    assert stats == roi_box_stats(expected.voxels, expected.spacing_zyx, [30, 40, 2, 70, 60, 20]).to_dict()
    assert main([*base, "segment-volume", session_id, "--series", first_uid, "--structures", "body"]) == 0
    assert "body" in capsys.readouterr().out


def test_images_stored_without_their_slice_record_are_read_from_the_blobs(stored, two_series) -> None:  # noqa: ANN001
    """Rows made by the DICOM node carry no slice record: their headers come from the decrypted blobs."""
    import json

    from engine.services.volumes import VolumeCache, VolumeService

    engine, session_id = stored
    rows = engine.store.list_images(session_id)
    assert all(row["metadata"]["volume_slice"]["version"] == 1 for row in rows)
    recorded = engine.list_series(session_id)
    with engine.store.db.transaction() as tx:
        for row in rows:
            metadata = {k: v for k, v in row["metadata"].items() if k != "volume_slice"}
            tx.execute("UPDATE images SET metadata = ? WHERE id = ?", (json.dumps(metadata), row["id"]))
    service = VolumeService(engine.store, VolumeCache(8 * 1024 * 1024))
    assert service.list_series(session_id) == recorded
    np.testing.assert_array_equal(service.volume(session_id).voxels, load_volume(two_series[0]).voxels)


def test_planes_are_visualized(stored) -> None:  # noqa: ANN001
    import base64
    import io

    from PIL import Image

    engine, session_id = stored
    axial = engine.get_visualization(session_id, plane="axial", index=5)
    marks = {i["image_id"]: i["z"] for i in engine.get_session_status(session_id)["images"]}
    assert marks[axial["image_id"]] == 5 and (axial["width"], axial["height"]) == (122, 101)
    coronal = engine.get_visualization(session_id, plane="coronal", index=50)
    picture = Image.open(io.BytesIO(base64.b64decode(coronal["png_base64"])))
    assert picture.size == (122, 24) and coronal["plane"] == "coronal"  # 3 mm both ways: one pixel per voxel
    assert coronal["volume"]["window"] == {"center": 40.0, "width": 400.0}
    with pytest.raises(MedVisionError) as caught:
        engine.get_visualization(session_id, plane="sagittal", index=122)
    assert caught.value.code is ErrorCode.INVALID_REGION
