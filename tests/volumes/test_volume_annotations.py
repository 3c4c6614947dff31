"""3D results stored as ``volume_roi`` annotations on their series: checked, anchored, left off 2D drawings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.analysis.volume.anatomy import segment_anatomy
from engine.analysis.volume.annotation import VOLUME_ROI, mask_from_geometry
from engine.api import Engine
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from tests.volumes.ctseries import sub_volume, write_ct_series


@pytest.fixture(scope="module")
def series_folder(tmp_path_factory: pytest.TempPathFactory, shared_ct_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("annotated-series")
    write_ct_series(folder, volume=sub_volume(40, 64), seed=7)
    return folder


@pytest.fixture
def stored(tmp_path: Path, model_pack: Path, series_folder: Path):  # noqa: ANN201
    settings = Settings(home=tmp_path / "home", model_pack=model_pack, use_keyring=False)
    with Engine(settings) as engine:
        session_id = engine.create_study_session("ct")["session_id"]
        for path in sorted(series_folder.iterdir()):
            engine.add_image_to_session(session_id, path, auto_analyze=False)
        yield engine, session_id


def test_a_box_roi_is_stored_on_its_first_slice(stored) -> None:  # noqa: ANN001
    engine, session_id = stored
    result = engine.volume_roi(session_id, box=[40, 30, 5, 60, 45, 9], annotate=True, label="box")
    (row,) = engine.get_annotations(session_id)["annotations"]
    assert row["annotation_id"] == result["annotation_id"] and row["type"] == VOLUME_ROI and row["label"] == "box"
    coordinates = row["coordinates"]
    assert coordinates["geometry"] == {"box": [40, 30, 5, 60, 45, 9]} and coordinates["z_range"] == [5, 9]
    assert coordinates["stats"]["voxel_count"] == result["statistics"]["voxel_count"] == 21 * 16 * 5
    volume = engine.get_volume(session_id)
    (header,) = [h for h in engine.volume_source_headers(session_id) if h.SOPInstanceUID == volume.source_uids[5]]
    anchor = engine.services.store.images.get(row["image_id"])
    assert anchor["sop_instance_uid"] == header.SOPInstanceUID  # the slice at z 5 anchors it
    picture = engine.get_visualization(session_id, row["image_id"])  # a 3D region is not drawn as a 2D shape
    assert all(layer["kind"] != "annotation" for layer in picture.get("layers", []))


def test_structures_are_stored_as_masks(stored) -> None:  # noqa: ANN001
    engine, session_id = stored
    found = engine.segment_volume(session_id, structures="body,bone", annotate=True)
    assert set(found["annotation_ids"]) == {"body", "bone"}
    volume = engine.get_volume(session_id)
    expected = segment_anatomy(volume.voxels, volume.affine, structures="body,bone")
    rows = {r["label"]: r for r in engine.get_annotations(session_id, source="ai")["annotations"]}
    (z1, y1, x1), mask = mask_from_geometry(rows["bone"]["coordinates"]["geometry"])
    rebuilt = np.zeros(volume.shape_zyx, dtype=bool)
    rebuilt[z1:z1 + mask.shape[0], y1:y1 + mask.shape[1], x1:x1 + mask.shape[2]] = mask
    assert np.array_equal(rebuilt, expected.mask("bone"))
    assert rows["bone"]["coordinates"]["stats"]["mean_hu"] == pytest.approx(
        float(volume.voxels[expected.mask("bone")].mean()), abs=1e-3)


def test_bad_volume_rois_are_refused(stored, rg1_path: Path) -> None:  # noqa: ANN001
    engine, session_id = stored
    engine.volume_roi(session_id, box=[0, 0, 0, 3, 3, 3], annotate=True)
    (row,) = engine.get_annotations(session_id)["annotations"]
    broken = dict(row["coordinates"], z_range=[0, 99])
    with pytest.raises(MedVisionError) as refused:
        engine.add_annotation(session_id, row["image_id"], VOLUME_ROI, broken)
    assert refused.value.code == ErrorCode.INVALID_REGION and "z_range" in refused.value.message
    radiograph = engine.add_image_to_session(session_id, rg1_path, auto_analyze=False)["image_id"]
    with pytest.raises(MedVisionError) as refused:  # another series' image cannot anchor it
        engine.add_annotation(session_id, radiograph, VOLUME_ROI, row["coordinates"])
    assert refused.value.code == ErrorCode.INVALID_REGION and "series" in refused.value.message
    assert len(engine.get_annotations(session_id)["annotations"]) == 1  # nothing written by a refusal
