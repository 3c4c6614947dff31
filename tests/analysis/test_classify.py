"""The exported classifier equals the PyTorch reference; int8 stays close to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchxrayvision as xrv

from engine.analysis.classify import op_norm
from engine.analysis.preprocess import classifier_tensor
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import decode_image
from engine.inference.onnx import OnnxModel
from engine.inference.registry import ModelRegistry
from models.classifier import DenseNetLogits
from models.onnx_tools import export_onnx


def test_onnx_export_matches_torchxrayvision_eager(tmp_path: Path, rg1_path: Path) -> None:
    torch.manual_seed(1)
    reference = xrv.models.DenseNet(weights=None).eval()
    tensor = classifier_tensor(decode_image(rg1_path))
    export_onnx(DenseNetLogits(reference), torch.from_numpy(tensor), tmp_path / "d.onnx",
                input_name="image", output_names=["logits"])
    model = OnnxModel(tmp_path / "d.onnx", threads=2, providers=("CPUExecutionProvider",), name="d")
    ours = model.run({"image": tensor})[0]
    with torch.no_grad():
        expected = reference(torch.from_numpy(tensor)).numpy()
    assert np.allclose(ours, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_op_norm_matches_torchxrayvision() -> None:
    threshs = xrv.models.model_urls["densenet121-res224-all"]["op_threshs"]
    rng = np.random.default_rng(0)
    probabilities = rng.uniform(0, 1, len(threshs))
    expected = xrv.models.op_norm(torch.tensor(probabilities[None], dtype=torch.float32),
                                  torch.tensor(threshs, dtype=torch.float32)).numpy()[0]
    assert np.allclose(op_norm(probabilities, threshs), expected, atol=1e-5)


def _registry(model_pack: Path, home: Path, precision: str) -> ModelRegistry:
    return ModelRegistry(Settings(home=home, model_pack=model_pack, threads=2, precision=precision))


def test_int8_stays_within_0_02_of_fp32_on_real_radiographs(model_pack: Path, home: Path, rg1_path: Path) -> None:
    from engine.analysis.classify import classify

    results = {}
    for precision in ("fp32", "int8"):
        registry = _registry(model_pack, home, precision)
        assert registry.entry("classify").precision == precision
        results[precision] = {
            name: {f["label"]: f["raw_probability"] for f in classify(decode_image(path), registry, force=True)["findings"]}
            for name, path in (("rg1", rg1_path), ("rg3", rg1_path.with_name("RG3_UNCR.dcm")))
        }
    for name in ("rg1", "rg3"):
        diffs = [abs(results["fp32"][name][k] - results["int8"][name][k]) for k in results["fp32"][name]]
        assert max(diffs) <= 0.02


def test_classifier_refuses_other_image_types_unless_forced(model_pack: Path, home: Path) -> None:
    from pydicom.data import get_testdata_file

    from engine.analysis.classify import classify

    registry = _registry(model_pack, home, "int8")
    ct = decode_image(get_testdata_file("CT_small.dcm"))
    with pytest.raises(MedVisionError) as err:
        classify(ct, registry)
    assert err.value.code is ErrorCode.INVALID_IMAGE_TYPE
    assert err.value.details["detected_type"] == "CT"
    assert "CT" in err.value.message
    forced = classify(ct, registry, force=True)
    assert forced["forced"] is True and len(forced["findings"]) == 18
    with pytest.raises(MedVisionError) as err:
        classify(ct, registry, threshold=1.5, force=True)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


@pytest.mark.filterwarnings("error")
def test_degenerate_images_are_refused_by_the_models_and_the_quality_checks_stay_finite(
        model_pack: Path, home: Path, rg1_path: Path) -> None:
    """A 1x1 PNG gave ten findings POSITIVE, "Mean of empty slice" warnings and "nan grey levels"; non-finite
    pixels were classified too (issue 14, item 6). Forcing does not help: size is not a type question."""
    import dataclasses
    import io
    import json

    from PIL import Image

    from engine.analysis.classify import MIN_IMAGE_SIDE, classify
    from engine.analysis.quality import check_quality
    from engine.analysis.segmentation import segment_organs

    registry = _registry(model_pack, home, "int8")
    for side in (1, 20, MIN_IMAGE_SIDE - 1):
        buffer = io.BytesIO()
        Image.fromarray(np.full((side, side), 128, dtype=np.uint8)).save(buffer, format="PNG")
        tiny = dataclasses.replace(decode_image(buffer.getvalue()), image_type="CXR")
        quality = check_quality(tiny, image_type="CXR")
        assert "nan" not in json.dumps(quality, allow_nan=False).lower()
        for run in (lambda d: classify(d, registry, force=True), lambda d: segment_organs(d, registry, force=True)):
            with pytest.raises(MedVisionError) as err:
                run(tiny)
            assert err.value.code is ErrorCode.INVALID_IMAGE and err.value.details["reason"] == "too_small"
    rg1 = decode_image(rg1_path)
    for bad in (np.nan, np.inf):
        raw = rg1.raw.astype(np.float32)
        raw[0, 0] = bad
        with pytest.raises(MedVisionError) as err:
            classify(dataclasses.replace(rg1, raw=raw), registry)
        assert err.value.code is ErrorCode.INVALID_IMAGE and err.value.details["reason"] == "non_finite_pixels"
