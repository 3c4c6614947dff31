"""The dev pack's 3D U-Net: built from the dev plans (untrained, labelled so), run through the
engine's model registry on the real 3 mm CT of ``../shared/data/ct``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from engine.analysis.volume.unet import TASK, segment_ct_with_pack
from engine.config import Settings
from engine.inference.registry import ModelRegistry
from engine.vocabulary import UNTRAINED_BANNER
from models import volume_unet
from models.pack import build_pack

SHARED_CT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ct"


def test_dev_unet_builds_untrained_and_segments_the_shared_ct(tmp_path, monkeypatch):
    # No CT for int8 calibration here: this test is about the fp32 model and the runtime; the int8
    # decision is exercised by test_volume_unet_weights and measured by benchmarks/bench_volume_unet.py.
    monkeypatch.setenv(volume_unet.CT_ENV, str(tmp_path / "no-ct.nii.gz"))
    pack = tmp_path / "pack"
    manifest = build_pack(pack, dev=True, components=[volume_unet.build])

    (entry,) = manifest["models"]
    assert entry["task"] == TASK and entry["trained"] is False and manifest["trained"] is False
    assert entry["file"].startswith("segment3d/") and entry["precision"] == "fp32"
    assert entry["quantization"]["int8_kept"] is False and "no CT volume" in entry["quantization"]["reason"]
    total = json.loads((SHARED_CT / "total_v2_labels.json").read_text())
    assert entry["labels"] == ["background"] + [total[str(i)] for i in range(1, 118)]
    shrunk = entry["parameters"]["shrunk"]
    assert shrunk["plans_features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert shrunk["features_per_stage"] == [8, 16, 32, 64, 80, 80]
    assert entry["input"]["patch_size"] == [128, 128, 128] and entry["input"]["orientation"] == "RAS"
    parity = entry["parameters"]["export_parity"]
    assert parity["max_abs_diff_vs_torch"] < 1e-3 and parity["argmax_equal_where_decided"]
    assert entry["size_bytes"] < 20 * 2**20

    image = nib.load(str(SHARED_CT / "example_ct.nii.gz"))
    hu = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)  # (x, y, z) -> (z, y, x)
    # The same voxels as a DICOM stack would lay them out (x towards the patient's left, y posterior).
    lps = np.ascontiguousarray(hu[:, ::-1, ::-1])
    registry = ModelRegistry(Settings.from_env(tmp_path / "home", pack))
    result = segment_ct_with_pack(registry, lps, (3.0, 3.0, 3.0), orientation="LPS")
    assert result.label_map.shape == lps.shape == (112, 101, 122)
    assert result.windows == 1 and result.network_shape == (112, 101, 122)
    assert result.trained is False and result.banner == UNTRAINED_BANNER
    assert result.backend == "onnxruntime-fp32-cpu" and result.model["id"] == "nnunet-ct-3mm-dev-fp32"
    summary = result.to_dict()
    assert summary["banner"] == UNTRAINED_BANNER and summary["structures"]
    assert sum(s["voxels"] for s in summary["structures"]) == int((result.label_map > 0).sum())
    first = result.structures[0]
    assert result.mask(first.name).sum() == first.voxels and first.volume_ml == round(first.voxels * 0.027, 3)
