"""ChestX-Det organ segmentation (torchxrayvision PSPNet, 14 anatomical labels) -> ONNX.

Trained weights: torchxrayvision's ``pspnet_chestxray_best_model_4.pth`` found in the
weights directory (nothing is downloaded), loaded as ``xrv.baseline_models.chestx_det.
PSPNet`` does (a DataParallel state dict, ``module.`` prefixes stripped). Dev pack: the
same network with PyTorch's default initialisation under a fixed seed and BatchNorm
statistics taken from the calibration radiographs; ``trained: false``.

The exported graph takes the torchxrayvision tensor (``[-1024, 1024]``, centre crop,
512 x 512) and does in the graph what ``PSPNet.forward`` does after ``fix_resolution``:
repeat to three channels, ``(x + 1024) / 2048``, ImageNet normalisation, network. It
outputs per-label logits; the runtime applies the sigmoid and the threshold.

int8 (static QDQ) is kept only when it is faster and its masks agree with fp32 (mean
Dice >= 0.95 for every label on the hold-out images); otherwise the pack ships fp32
alone and the entry records why, with the numbers.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchxrayvision as xrv
from torch import nn
from torchxrayvision.baseline_models.chestx_det import _convert_state_dict
from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

from engine.inference.modelpack import sha256_file
from models.calibration import CalibrationSet
from models.classifier import recalibrate_batchnorm
from models.onnx_tools import cpu_session, export_onnx, quantize_qdq
from models.runtimes import choose_runtimes
from models.weights import loading, require_file

if TYPE_CHECKING:
    import onnx

    from models.context import BuildContext

log = logging.getLogger(__name__)

WEIGHTS_FILE = "pspnet_chestxray_best_model_4.pth"
MODEL_ID = "chestx-det-pspnet"
RESOLUTION = 512
SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Augmented views on top of the real calibration radiographs: PSPNet at 512 costs about
#: 1.5-3 s per image on two cores, so calibration stays at 2 real + 6 views = 8 tensors.
CALIBRATION_VIEWS = 6
#: Tensors used to re-estimate BatchNorm statistics in the dev build (train-mode
#: PyTorch at 512 costs about 6 s per image on two cores).
BATCHNORM_SAMPLES = 4
#: int8 is kept only if every label's mean Dice against the fp32 masks reaches this.
DICE_LIMIT = 0.95
#: A runtime (OpenVINO fp32/bf16, on either file) is chosen only at this per-label Dice against fp32 ORT.
RUNTIME_DICE_LIMIT = 0.98
MASK_THRESHOLD = 0.5


def labels() -> list[str]:
    """The 14 ChestX-Det targets, read from the class attribute (instantiating would download)."""
    return list(xrv.baseline_models.chestx_det.PSPNet.targets)


class PSPNetLogits(nn.Module):
    """What ``xrv...chestx_det.PSPNet.forward`` does to a 512 x 512 xrv tensor, as one graph."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # noqa: D102
        rgb = image.repeat(1, 3, 1, 1)
        rgb = (rgb + 1024) / 2048
        return self.net((rgb - self.mean) / self.std)


def _keep_fp32(node: onnx.NodeProto) -> bool:
    """The stem convolution and the 1x1 classification head stay fp32 (the usual sensitive ends)."""
    return node.op_type == "Conv" and (node.name.startswith("/net/convbnrelu1_1/")
                                       or node.name.startswith("/net/classification/"))


def load_pspnet(weights_dir: Path | None, calibration: CalibrationSet | None) -> tuple[nn.Module, dict]:
    """The PSPNet with the upstream checkpoint from ``weights_dir``, or the dev initialisation.

    The dev initialisation needs ``calibration`` (its BatchNorm statistics come from it).
    """
    if weights_dir is not None:
        checkpoint = require_file(weights_dir, WEIGHTS_FILE, "torchxrayvision ChestX-Det PSPNet")
        net = pspnet(len(labels()))
        # As ``xrv.baseline_models.chestx_det.PSPNet`` loads it: tensors only, "module."
        # prefixes stripped, strict state dict.
        with loading(weights_dir, WEIGHTS_FILE, "the ChestX-Det PSPNet state dict torchxrayvision publishes "
                                                "(DataParallel keys, 14 labels)"):
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            net.load_state_dict(_convert_state_dict(state))
        info = {"trained": True, "upstream_sha256": sha256_file(checkpoint),
                "init": f"torchxrayvision ChestX-Det PSPNet checkpoint {WEIGHTS_FILE}"}
        return net.eval(), info
    if calibration is None:
        raise ValueError("the dev initialisation needs calibration tensors")
    torch.manual_seed(SEED)
    net = pspnet(len(labels()))
    recalibrate_batchnorm(PSPNetLogits(net), calibration.calibrate[:BATCHNORM_SAMPLES])
    info = {"trained": False, "upstream_sha256": None,
            "init": f"untrained: PyTorch default init (seed {SEED}), BatchNorm statistics from "
                    f"{BATCHNORM_SAMPLES} calibration tensors"}
    return net.eval(), info


def dice_per_label(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Dice of two ``(images, labels, rows, columns)`` boolean stacks, per image and label.

    Two empty masks agree perfectly (Dice 1).
    """
    overlap = np.logical_and(reference, candidate).sum(axis=(2, 3))
    total = reference.sum(axis=(2, 3)) + candidate.sum(axis=(2, 3))
    return np.where(total > 0, 2.0 * overlap / np.maximum(total, 1), 1.0)


def _timed_logits(session, tensors: np.ndarray) -> tuple[np.ndarray, list[float]]:  # noqa: ANN001
    """Logits for each tensor (batch 1, after one warm-up run) and the wall time of each run."""
    session.run(None, {"image": tensors[:1]})
    outputs, times = [], []
    for index in range(len(tensors)):
        start = time.perf_counter()
        outputs.append(session.run(None, {"image": tensors[index:index + 1]})[0][0])
        times.append((time.perf_counter() - start) * 1000)
    return np.stack(outputs), times


def build(context: BuildContext) -> list[dict]:
    """Export fp32 (+ int8 when it qualifies) into ``out_dir/organ_seg``; return the manifest entries."""
    started = time.perf_counter()
    folder = context.out_dir / "organ_seg"
    folder.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = folder / f"{MODEL_ID}.fp32.onnx", folder / f"{MODEL_ID}.int8.onnx"
    with warnings.catch_warnings():
        # Upstream ptsemseg code: F.upsample (deprecated alias of interpolate) and pyramid
        # pooling sizes read as Python ints, i.e. constants of the fixed 512 x 512 graph.
        warnings.filterwarnings("ignore", message=r".*upsample is deprecated", category=UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Trained weights are read before any calibration image is decoded (a bad file fails fast).
        net, info = load_pspnet(context.weights_dir, None if context.weights_dir else
                                context.images.xrv_set(RESOLUTION, augmented=CALIBRATION_VIEWS))
        calibration = context.images.xrv_set(RESOLUTION, augmented=CALIBRATION_VIEWS)
        wrapper = PSPNetLogits(net).eval()
        loaded = time.perf_counter()
        export_onnx(wrapper, torch.from_numpy(calibration.calibrate[:1]), fp32_path,
                    input_name="image", output_names=["logits"])
    exported = time.perf_counter()
    recipe = quantize_qdq(fp32_path, int8_path, calibration.calibrate, input_name="image", exclude=_keep_fp32)
    quantized = time.perf_counter()

    holdout = calibration.holdout
    logits32, fp32_ms = _timed_logits(cpu_session(fp32_path, context.threads), holdout)
    logits8, int8_ms = _timed_logits(cpu_session(int8_path, context.threads), holdout)
    cut = float(np.log(MASK_THRESHOLD / (1.0 - MASK_THRESHOLD)))  # sigmoid(x) > t  <=>  x > logit(t)
    dice = dice_per_label(logits32 > cut, logits8 > cut).mean(axis=0)
    names = labels()
    # Decided on the recorded (rounded) figures, so the manifest's record proves its decision.
    lat32, lat8 = round(float(np.median(fp32_ms)), 1), round(float(np.median(int8_ms)), 1)
    dice = np.round(dice, 4)
    faster, agrees = lat8 < lat32, bool(dice.min() >= DICE_LIMIT)
    keep_int8 = faster and agrees
    worst = names[int(dice.argmin())]
    log.info("pspnet int8: fp32 %.0f ms, int8 %.0f ms, Dice mean %.3f, worst %s %.3f: keep int8 %s",
             lat32, lat8, dice.mean(), worst, dice.min(), keep_int8)

    parity = {
        "rule": f"int8 is kept (and the default) only if faster than fp32 and the mean Dice of its "
                f"masks against fp32 at threshold {MASK_THRESHOLD} is >= {DICE_LIMIT} for every label",
        "dice_per_label": {name: round(float(value), 4) for name, value in zip(names, dice, strict=True)},
        "dice_mean": round(float(dice.mean()), 4),
        "dice_worst_label": worst,
        "dice_worst": round(float(dice.min()), 4),
        "dice_limit": DICE_LIMIT,
        "parity_samples": int(len(holdout)),
        "fp32_median_ms": round(lat32, 1),
        "int8_median_ms": round(lat8, 1),
        "speedup": round(lat32 / lat8, 2),
        # Untrained logits sit near 0, where any perturbation flips the thresholded mask:
        # this number tells a dev-pack rejection from a real one.
        "fp32_median_abs_logit": round(float(np.median(np.abs(logits32))), 4),
        "calibration_sources": calibration.sources,
    }
    bench = {"threads": context.threads, "batch": 1, "samples": int(len(holdout)),
             "load_s": round(loaded - started, 1), "export_s": round(exported - loaded, 1),
             "quantize_s": round(quantized - exported, 1), "build_s": round(time.perf_counter() - started, 1)}
    common = {
        "task": "organ_seg",
        "architecture": "torchxrayvision ChestX-Det PSPNet (dilated ResNet-101 encoder, pyramid pooling, 14 labels)",
        "format": "onnx",
        "trained": info["trained"],
        "version": f"xrv-{xrv.__version__}",
        "input": {"name": "image", "shape": ["batch", 1, RESOLUTION, RESOLUTION], "dtype": "float32",
                  "resolution": RESOLUTION, "preprocessing": "xrv", "crop": "centre square (XRayCenterCrop)",
                  "value_range": [-1024, 1024]},
        "output": {"name": "logits", "shape": ["batch", len(names), RESOLUTION, RESOLUTION],
                   "activation": "sigmoid", "multi_label": True, "default_threshold": MASK_THRESHOLD},
        "labels": names,
        "thresholds": None,
        "upstream": {"name": "torchxrayvision chestx_det PSPNet",
                     "weights": WEIGHTS_FILE if info["trained"] else None,
                     "sha256": info["upstream_sha256"], "package": "torchxrayvision",
                     "package_version": xrv.__version__, "license": "Apache-2.0"},
        "parameters": {"init": info["init"]},
    }
    fp32_entry = common | {"id": f"{MODEL_ID}-fp32", "file": f"organ_seg/{fp32_path.name}", "precision": "fp32",
                           "default": not keep_int8, "benchmark": bench | {"median_ms": round(lat32, 1)}}
    if not keep_int8:
        int8_path.unlink()
        reasons = [] if faster else [f"int8 not faster ({lat8:.0f} ms vs fp32 {lat32:.0f} ms)"]
        if not agrees:
            reasons.append(f"masks disagree with fp32: worst label {worst} mean Dice {dice.min():.3f} "
                           f"< {DICE_LIMIT} (mean over labels {dice.mean():.3f})")
        fp32_entry["quantization"] = {"int8_kept": False, "reason": "; ".join(reasons),
                                      "candidate": recipe} | parity
        return _with_runtimes([fp32_entry], context, holdout)
    int8_entry = common | {"id": f"{MODEL_ID}-int8", "file": f"organ_seg/{int8_path.name}", "precision": "int8",
                           "default": True, "benchmark": bench | {"median_ms": round(lat8, 1)},
                           "quantization": recipe | {"int8_kept": True, "reference": f"{MODEL_ID}-fp32"} | parity}
    return _with_runtimes([fp32_entry, int8_entry], context, holdout)


def _with_runtimes(entries: list[dict], context: BuildContext, holdout: np.ndarray) -> list[dict]:
    """Each kept file's CPU runtime and the pack default, chosen by measurement (masks' Dice per label)."""
    cut = float(np.log(MASK_THRESHOLD / (1.0 - MASK_THRESHOLD)))

    def parity(reference: np.ndarray, outputs: np.ndarray) -> dict:
        dice = dice_per_label(reference > cut, outputs > cut).mean(axis=0)
        return {"dice_worst": round(float(dice.min()), 4), "dice_mean": round(float(dice.mean()), 4)}

    return choose_runtimes(
        entries, context.out_dir, holdout, threads=context.threads, parity=parity,
        passes=lambda figures: figures["dice_worst"] >= RUNTIME_DICE_LIMIT,
        rule=f"the fastest candidate whose masks' mean Dice against ONNX Runtime fp32 at threshold "
             f"{MASK_THRESHOLD} is >= {RUNTIME_DICE_LIMIT} for every label")
