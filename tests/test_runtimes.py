"""The CPU runtime a manifest entry names: OpenVINO (bf16) over the pack's own ONNX file, and the
clean fall-back to ONNX Runtime where openvino cannot be imported (real runtimes, no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.analysis.classify import classify
from engine.config import Settings
from engine.imaging.decode import decode_image
from engine.inference.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[1]


def _classifier_pack(source: Path, target: Path, **runtime: str) -> Path:
    """A pack holding only the source pack's default classifier (file linked), with ``runtime`` fields."""
    manifest = json.loads((source / "manifest.json").read_text())
    entry = next(m for m in manifest["models"] if m["task"] == "classify" and m.get("default"))
    entry = {k: v for k, v in entry.items() if k not in ("runtime", "inference_precision")} | runtime
    (target / Path(entry["file"]).parent).mkdir(parents=True)
    (target / entry["file"]).symlink_to(source / entry["file"])
    (target / "manifest.json").write_text(json.dumps(manifest | {"models": [entry]}))
    return target


def _probabilities(result: dict) -> dict[str, float]:
    return {f["label"]: f["raw_probability"] for f in result["findings"]}


def test_openvino_bf16_classifier_names_its_backend_and_matches_onnxruntime(model_pack, rg1_path, tmp_path):
    decoded = decode_image(rg1_path)
    results = {}
    for name, runtime in (("ort", {}), ("ov", {"runtime": "openvino", "inference_precision": "bf16"})):
        pack = _classifier_pack(model_pack, tmp_path / name, **runtime)
        registry = ModelRegistry(Settings(home=tmp_path / f"home-{name}", model_pack=pack, threads=2))
        results[name] = classify(decoded, registry)
    assert results["ort"]["model"]["backend"] == "onnxruntime-cpu"
    assert results["ov"]["model"]["backend"] == "openvino-bf16"
    assert results["ov"]["model"]["backend_fallback"] is None
    ort, ov = _probabilities(results["ort"]), _probabilities(results["ov"])
    assert ort.keys() == ov.keys() and len(ort) == 18
    assert max(abs(ort[k] - ov[k]) for k in ort) <= 0.02


_HIDDEN = """
import json, sys
sys.modules["openvino"] = None  # import openvino now raises ImportError, as on a machine without it
from pathlib import Path
from engine.analysis.classify import classify
from engine.config import Settings
from engine.imaging.decode import decode_image
from engine.inference.registry import ModelRegistry
registry = ModelRegistry(Settings(home=Path(sys.argv[1]), model_pack=Path(sys.argv[2]), threads=1))
result = classify(decode_image(sys.argv[3]), registry)
print(json.dumps(result["model"]))
"""


def test_missing_openvino_falls_back_to_onnxruntime_and_says_why(model_pack, rg1_path, tmp_path):
    pack = _classifier_pack(model_pack, tmp_path / "pack", runtime="openvino", inference_precision="bf16")
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _HIDDEN, str(tmp_path / "home"), str(pack), str(rg1_path)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    model = json.loads(done.stdout.strip().splitlines()[-1])
    assert model["backend"] == "onnxruntime-cpu"
    assert "openvino is not installed" in model["backend_fallback"]
    assert "running it on ONNX Runtime" in done.stderr


def test_manifest_refuses_an_unknown_runtime(model_pack, tmp_path):
    from engine.errors import ErrorCode, MedVisionError
    from engine.inference.modelpack import ModelPack

    pack = _classifier_pack(model_pack, tmp_path / "pack", runtime="tensorrt")
    with pytest.raises(MedVisionError) as caught:
        ModelPack.load(pack)
    assert caught.value.code is ErrorCode.MODEL_LOAD_ERROR and "runtime" in caught.value.message


def test_a_pinned_precision_runs_onnxruntime_as_built(model_pack, rg1_path, tmp_path):
    """MEDVISION_PRECISION=fp32 asks for reference numerics: the measured bf16 choice is not used."""
    pack = _classifier_pack(model_pack, tmp_path / "pack", runtime="openvino", inference_precision="bf16")
    precision = json.loads((pack / "manifest.json").read_text())["models"][0]["precision"]
    registry = ModelRegistry(Settings(home=tmp_path / "home", model_pack=pack, threads=2, precision=precision))
    model = classify(decode_image(rg1_path), registry)["model"]
    assert model["backend"] == "onnxruntime-cpu" and model["backend_fallback"] is None
