"""Engine.segment_volume's two methods on a stored CT series: the U-Net's masks are stored only when
its model is trained; an untrained one's result says it is no finding."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.api import Engine
from engine.errors import ErrorCode, MedVisionError
from tests.volumes.ctseries import sub_volume, write_ct_series
from tests.volumes.tinyunet import write_tiny_unet_pack


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory, shared_ct_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("seg-methods")
    write_ct_series(folder, volume=sub_volume(40, 52), seed=7)
    return folder


def _session(engine: Engine, series: Path) -> str:
    session = engine.create_study_session("ct")["session_id"]
    for path in sorted(series.iterdir()):
        engine.add_image_to_session(session, str(path), auto_analyze=False)
    return session


@pytest.mark.parametrize("trained", [False, True])
def test_unet_masks_are_stored_only_from_a_trained_model(tmp_path: Path, model_pack: Path, series: Path,
                                                         trained: bool) -> None:
    pack = write_tiny_unet_pack(tmp_path / "pack", model_pack)
    if trained:  # the same graph, declared trained: the path a real trained pack takes
        manifest = json.loads((pack / "manifest.json").read_text())
        manifest["models"][0]["trained"] = True
        (pack / "manifest.json").write_text(json.dumps(manifest))
    with Engine(home=tmp_path / "home", model_pack=pack) as engine:
        session = _session(engine, series)
        result = engine.segment_volume(session, method="unet", annotate=True)
        names = [s["name"] for s in result["segmentation"]["structures"]]
        annotations = engine.get_annotations(session)["annotations"]
        if trained:
            assert "note" not in result and "banner" not in result and result["model_trained"] is True
            assert set(result["annotation_ids"]) == set(names)
            stored = {a["label"]: a for a in annotations}
            assert stored["soft_tissue"]["coordinates"]["method"] == "unet_3d:tiny-unet-fp32"
            soft = next(s for s in result["segmentation"]["structures"] if s["name"] == "soft_tissue")
            assert stored["soft_tissue"]["coordinates"]["stats"]["voxel_count"] == soft["voxel_count"]
            # the stored masks are drawn where they cross a coronal plane, in the AI colour
            drawn = engine.get_visualization(session, plane="coronal", index=50)
            plain = engine.get_visualization(session, plane="coronal", index=50, include_annotations=False)
            layer = next(layer for layer in drawn["layers"] if layer["id"] == "volume_roi_ai")
            assert layer["count"] >= 1 and layer["visible"] is True
            assert drawn["sha256"] != plain["sha256"] and "volume_roi_ai" not in {x["id"] for x in plain["layers"]}
            picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(drawn["png_base64"]))).convert("RGB"))
            assert (picture[..., 2].astype(int) - picture[..., 0] > 100).any()  # cyan-tinted pixels: AI regions
        else:
            assert result["note"] == "These are outputs of untrained development models, not findings."
            assert result["annotation_ids"] == {} and annotations == []
        with pytest.raises(MedVisionError) as caught:
            engine.segment_volume(session, method="atlas")
        assert caught.value.code == ErrorCode.INVALID_ARGUMENT
