"""The PSPNet organ-segmentation builder: xrv-equivalent graph, checkpoint loading, int8 decision."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
import torchxrayvision as xrv
from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

from engine.analysis.preprocess import xrv_tensor
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import decode_image
from engine.inference.modelpack import ModelPack, sha256_file
from models import segmentation
from models.onnx_tools import export_onnx


def _xrv_pspnet(net: torch.nn.Module) -> torch.nn.Module:
    """torchxrayvision's PSPNet module around ``net``, built without its downloading ``__init__``."""
    model = xrv.baseline_models.chestx_det.PSPNet.__new__(xrv.baseline_models.chestx_det.PSPNet)
    torch.nn.Module.__init__(model)
    model.transform = torchvision.transforms.Compose([
        torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    model.model = net
    return model.eval()


def test_labels_are_the_xrv_targets() -> None:
    assert segmentation.labels() == list(xrv.baseline_models.chestx_det.PSPNet.targets)
    assert len(segmentation.labels()) == 14 and "Heart" in segmentation.labels()


def test_exported_graph_equals_the_wrapper_and_the_wrapper_equals_xrv(tmp_path: Path, rg1_path: Path) -> None:
    torch.manual_seed(3)
    net = pspnet(14).eval()
    wrapper = segmentation.PSPNetLogits(net).eval()
    tensor = xrv_tensor(decode_image(rg1_path), 512)
    with torch.no_grad():
        ours = wrapper(torch.from_numpy(tensor)).numpy()
        upstream = _xrv_pspnet(net)(torch.from_numpy(tensor)).numpy()
    assert ours.shape == (1, 14, 512, 512)
    assert np.abs(ours - upstream).max() == 0.0  # the same operations in the same order

    path = tmp_path / "pspnet.onnx"
    export_onnx(wrapper, torch.from_numpy(tensor), path, input_name="image", output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"image": tensor})[0]
    max_abs_diff = float(np.abs(exported - ours).max())
    assert max_abs_diff < 1e-3 * max(1.0, float(np.abs(ours).max())), max_abs_diff


def test_upstream_checkpoint_loads_like_xrv(tmp_path: Path) -> None:
    torch.manual_seed(4)
    reference = pspnet(14)
    # The release file is a DataParallel state dict: every key carries "module.".
    state = OrderedDict((f"module.{key}", value) for key, value in reference.state_dict().items())
    checkpoint = tmp_path / segmentation.WEIGHTS_FILE
    torch.save(state, checkpoint)
    net, info = segmentation.load_pspnet(tmp_path, None)
    assert info["trained"] is True and info["upstream_sha256"] == sha256_file(checkpoint)
    loaded = net.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in reference.state_dict().items())


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(MedVisionError, match=segmentation.WEIGHTS_FILE) as err:
        segmentation.load_pspnet(tmp_path, None)
    assert err.value.code is ErrorCode.FILE_NOT_FOUND


def test_dice_per_label_on_known_masks() -> None:
    reference = np.zeros((1, 3, 10, 10), dtype=bool)
    candidate = np.zeros_like(reference)
    reference[0, 0, :5] = True            # 50 px
    candidate[0, 0, :4] = True            # 40 px, all inside: Dice 2*40/90
    reference[0, 1, :, :2] = True         # disjoint: Dice 0
    candidate[0, 1, :, 8:] = True
    dice = segmentation.dice_per_label(reference, candidate)   # label 2: both empty -> 1
    assert np.allclose(dice, [[80 / 90, 0.0, 1.0]])


def test_dev_pack_records_the_int8_decision(organ_seg_pack: Path) -> None:
    manifest = json.loads((organ_seg_pack / "manifest.json").read_text())
    entries = [e for e in manifest["models"] if e["task"] == "organ_seg"]
    fp32 = next(e for e in entries if e["precision"] == "fp32")
    assert fp32["labels"] == segmentation.labels() and fp32["trained"] is False
    assert fp32["input"]["resolution"] == 512 and fp32["input"]["shape"] == ["batch", 1, 512, 512]
    assert fp32["output"]["shape"] == ["batch", 14, 512, 512]
    assert sum(bool(e.get("default")) for e in entries) == 1
    assert all(row["ok"] for row in ModelPack.load(organ_seg_pack).verify())

    int8 = [e for e in entries if e["precision"] == "int8"]
    record = int8[0]["quantization"] if int8 else fp32["quantization"]
    dice = record["dice_per_label"]
    assert list(dice) == segmentation.labels()
    qualifies = min(dice.values()) >= record["dice_limit"] and record["int8_median_ms"] < record["fp32_median_ms"]
    assert record["int8_kept"] is qualifies is bool(int8)
    if not int8:
        assert fp32["default"] is True and record["reason"]
        assert not (organ_seg_pack / "organ_seg" / f"{segmentation.MODEL_ID}.int8.onnx").exists()


def test_dev_pack_chooses_the_fastest_passing_runtime(organ_seg_pack: Path) -> None:
    """Every kept file is measured on each CPU runtime; the default is the fastest that keeps Dice."""
    manifest = json.loads((organ_seg_pack / "manifest.json").read_text())
    entries = [e for e in manifest["models"] if e["task"] == "organ_seg"]
    best = {}
    for entry in entries:
        rows = entry["benchmark"]["runtimes"]
        assert [(r["runtime"], r["available"]) for r in rows][:1] == [("onnxruntime", True)]
        assert len(rows) == 3 and all(r["median_ms"] > 0 for r in rows if r["available"])
        for row in rows:
            if row["available"]:
                assert row["passes"] is (row["dice_worst"] >= segmentation.RUNTIME_DICE_LIMIT)
        passing = [r for r in rows if r.get("passes")]
        chosen = min(passing, key=lambda r: r["median_ms"]) if passing else rows[0]
        assert entry["runtime"] == chosen["runtime"]
        if chosen["runtime"] == "openvino":
            assert entry["inference_precision"] == chosen["inference_precision"]
        best[entry["id"]] = chosen.get("median_ms") if passing else float("inf")
    assert entries[0]["benchmark"]["runtimes"][0]["dice_worst"] == 1.0  # the reference against itself
    assert next(e for e in entries if e["default"])["id"] == min(best, key=best.get)
