"""DenseNet-121 chest X-ray classifier (torchxrayvision, all-datasets, 18 labels) -> ONNX.

Trained weights: torchxrayvision's ``densenet121-res224-all`` checkpoint found in the
weights directory under its upstream file name (nothing is downloaded). Dev pack: the
same architecture, Kaiming-initialised with a fixed seed, with BatchNorm statistics
taken from the calibration images so activations have realistic ranges; no training,
so ``trained: false`` and no operating points.

The exported graph outputs logits; the runtime applies the sigmoid and, for trained
weights, torchxrayvision's ``op_norm`` with the manifest's thresholds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import torchxrayvision as xrv
from torch import nn

from engine.inference.modelpack import sha256_file
from models.calibration import CalibrationSet
from models.onnx_tools import cpu_session, export_onnx, median_latency_ms, quantize_qdq
from models.runtimes import choose_runtimes
from models.weights import loading, require_file

if TYPE_CHECKING:
    from models.context import BuildContext

log = logging.getLogger(__name__)

WEIGHTS_NAME = "densenet121-res224-all"
MODEL_ID = "densenet121-res224-all"
RESOLUTION = 224
PARITY_LIMIT = 0.02


def upstream_file_name() -> str:
    """The checkpoint's file name as torchxrayvision publishes it."""
    return Path(xrv.models.model_urls[WEIGHTS_NAME]["weights_url"]).name


class DenseNetLogits(nn.Module):
    """``features2`` + ``classifier`` of an xrv DenseNet, without its resize/op_norm hooks."""

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.features = densenet.features
        self.classifier = densenet.classifier

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # noqa: D102
        features = F.relu(self.features(image))
        return self.classifier(F.adaptive_avg_pool2d(features, (1, 1)).flatten(1))


def _keep_fp32(node) -> bool:  # noqa: ANN001 - an onnx.NodeProto
    """Layers left in fp32: the stem conv, dense block 1 and the classifier head.

    A per-block sensitivity sweep on the calibration set (dev weights, 2 threads) gave
    int8-vs-fp32 max|dp| 0.022 with only stem + head in fp32, 0.011 with dense block 1
    kept too, for about 1 ms of latency: block 1 works at 56x56 on the rawest features.
    """
    return node.name == "/features/conv0/Conv" or "denseblock1" in node.name or node.op_type in ("Gemm", "MatMul")


def recalibrate_batchnorm(model: nn.Module, batch: np.ndarray) -> None:
    """Replace BatchNorm running statistics by the statistics of ``batch``."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batch
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(batch))
    model.eval()


def load_densenet(weights_dir: Path | None, calibration: CalibrationSet | None) -> tuple[nn.Module, dict]:
    """The xrv DenseNet with trained weights from ``weights_dir``, or the dev initialisation.

    The dev initialisation needs ``calibration`` (its BatchNorm statistics come from it).
    """
    if weights_dir is not None:
        name = upstream_file_name()
        checkpoint = require_file(weights_dir, name, "torchxrayvision densenet121-res224-all")
        # torchxrayvision's own loader: it unpickles the whole saved model and copies its
        # state dict into a fresh DenseNet (strict), so any other network or head size fails.
        with loading(weights_dir, name, "torchxrayvision's DenseNet-121 'all' checkpoint, a whole pickled "
                                        "DenseNet with 18 outputs"):
            model = xrv.models.DenseNet(weights=WEIGHTS_NAME, cache_dir=str(weights_dir)).eval()
        info = {
            "trained": True,
            "thresholds": [float(t) for t in xrv.models.model_urls[WEIGHTS_NAME]["op_threshs"]],
            "upstream_sha256": sha256_file(checkpoint),
            "init": "torchxrayvision densenet121-res224-all checkpoint",
        }
        return model, info
    if calibration is None:
        raise ValueError("the dev initialisation needs calibration tensors")
    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None)
    recalibrate_batchnorm(model, calibration.calibrate)
    info = {
        "trained": False,
        "thresholds": None,
        "upstream_sha256": None,
        "init": "untrained: Kaiming init (seed 0), BatchNorm statistics from the calibration images",
    }
    return model, info


def build(context: BuildContext) -> list[dict]:
    """Export fp32 + int8 ONNX into ``out_dir/classify`` and return their manifest entries."""
    out_dir, weights_dir, threads = context.out_dir, context.weights_dir, context.threads
    # Trained weights are read before any calibration image is decoded (a bad file fails fast).
    model, info = load_densenet(weights_dir, None if weights_dir else context.images.xrv_set(RESOLUTION))
    calibration = context.images.xrv_set(RESOLUTION)
    labels = list(model.targets)
    wrapper = DenseNetLogits(model).eval()
    folder = out_dir / "classify"
    folder.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = folder / f"{MODEL_ID}.fp32.onnx", folder / f"{MODEL_ID}.int8.onnx"
    export_onnx(wrapper, torch.from_numpy(calibration.calibrate[:1]), fp32_path,
                input_name="image", output_names=["logits"])

    recipe = quantize_qdq(fp32_path, int8_path, calibration.calibrate, input_name="image", exclude=_keep_fp32)

    fp32, int8 = cpu_session(fp32_path, threads), cpu_session(int8_path, threads)
    holdout = calibration.holdout
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    p32 = sigmoid(fp32.run(None, {"image": holdout})[0])
    p8 = sigmoid(int8.run(None, {"image": holdout})[0])
    max_dp = float(np.abs(p8 - p32).max())
    one = holdout[:1]
    lat32 = median_latency_ms(lambda: fp32.run(None, {"image": one}))
    lat8 = median_latency_ms(lambda: int8.run(None, {"image": one}))
    int8_default = max_dp <= PARITY_LIMIT and lat8 < lat32
    log.info("classifier int8 parity max|dp|=%.4f, fp32 %.1f ms, int8 %.1f ms", max_dp, lat32, lat8)

    common = {
        "task": "classify",
        "architecture": "torchxrayvision DenseNet-121 (all datasets, 18 labels)",
        "format": "onnx",
        "trained": info["trained"],
        "version": f"xrv-{xrv.__version__}",
        "input": {"name": "image", "shape": ["batch", 1, RESOLUTION, RESOLUTION], "dtype": "float32",
                  "resolution": RESOLUTION, "preprocessing": "xrv", "value_range": [-1024, 1024]},
        "output": {"name": "logits", "activation": "sigmoid", "calibration": "op_norm" if info["thresholds"] else None},
        "labels": labels,
        "thresholds": info["thresholds"],
        "upstream": {"name": f"torchxrayvision {WEIGHTS_NAME}", "weights": upstream_file_name() if info["trained"] else None,
                     "sha256": info["upstream_sha256"], "package": "torchxrayvision",
                     "package_version": xrv.__version__, "license": "Apache-2.0"},
        "parameters": {"init": info["init"]},
    }
    threads_note = {"threads": threads, "batch": 1}
    entries = [
        common | {"id": f"{MODEL_ID}-fp32", "file": f"classify/{fp32_path.name}", "precision": "fp32",
                  "default": not int8_default, "benchmark": threads_note | {"median_ms": round(lat32, 2)}},
        common | {"id": f"{MODEL_ID}-int8", "file": f"classify/{int8_path.name}", "precision": "int8",
                  "default": int8_default, "benchmark": threads_note | {"median_ms": round(lat8, 2)},
                  "quantization": recipe | {"reference": f"{MODEL_ID}-fp32", "parity_max_abs_dp": round(max_dp, 5),
                                            "parity_limit": PARITY_LIMIT, "parity_samples": int(len(holdout)),
                                            "calibration_sources": calibration.sources}},
    ]
    return choose_runtimes(
        entries, out_dir, holdout, threads=threads,
        parity=lambda ref, out: {"max_abs_dp": round(float(np.abs(sigmoid(out) - sigmoid(ref)).max()), 5)},
        passes=lambda figures: figures["max_abs_dp"] <= PARITY_LIMIT,
        rule=f"the fastest candidate whose max |dp| against ONNX Runtime fp32 is <= {PARITY_LIMIT}")
