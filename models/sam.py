"""MobileSAM (TinyViT image encoder + SAM prompt decoder) -> two ONNX graphs.

Trained weights: MobileSAM's ``mobile_sam.pt`` (a state dict for
``mobile_sam.sam_model_registry["vit_t"]``) found in the weights directory; nothing is
downloaded. Dev pack: the same network initialised by its own code under a fixed seed
(``trained: false``), so the interactive pipeline runs end to end; its masks mean
nothing, and the runtime serves the classical backend by default for such a pack.

Graphs (opset 17, TorchScript exporter like every other model of the pack):

``sam_encoder``
    ``image`` ``(1, 3, 1024, 1024)`` float32, already preprocessed as ``SamPredictor``
    does (long side resized to 1024, ``(x - pixel_mean) / pixel_std`` on the 0-255
    scale, zero padding bottom/right) -> ``image_embeddings`` ``(1, 256, 64, 64)``.
    The preprocessing constants are written into the manifest entry (``input``) and
    applied by ``engine.analysis.interactive.sam_image_tensor``.
``sam_decoder``
    ``mobile_sam.utils.onnx.SamOnnxModel(return_single_mask=False)``: prompt encoder,
    mask decoder and mask postprocessing. Inputs ``image_embeddings``, ``point_coords``
    ``(1, N, 2)`` (encoder-input pixels, dynamic N), ``point_labels`` ``(1, N)`` (1 fg,
    0 bg, 2/3 box corners, -1 padding), ``mask_input`` ``(1, 1, 256, 256)``,
    ``has_mask_input`` ``(1,)``, ``orig_im_size`` ``(2,)``; outputs ``masks`` ``(1, 4,
    H, W)`` logits at the image size, ``iou_predictions`` ``(1, 4)``, ``low_res_masks``
    ``(1, 4, 256, 256)``. Index 0 is the single-mask output, 1-3 the multimask output
    (``MaskDecoder.forward``'s slices).

Quantization. The encoder gets a dynamic int8 variant (MatMul weights int8 per
channel, activations quantized at run time). It becomes the default only if it is
faster than fp32 (median of interleaved runs, by at least :data:`SPEEDUP_LIMIT`) and
the masks decoded from its embeddings agree with fp32's (IoU >= :data:`IOU_LIMIT` for
every parity prompt on the hold-out radiographs); otherwise it is dropped and the fp32
entry records the numbers. Static QDQ (Conv + MatMul, MinMax on the calibration
radiographs) was measured during development on two cores: 3.2 s against 2.0 s for
fp32 (TinyViT's depthwise convolutions and many small MatMuls pay more in Q/DQ nodes
than they gain), so it is not built. The decoder stays fp32 unless its own dynamic
int8 variant passes the same test; most of a click is the resize of four masks to the
image size, which int8 does not speed up.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from engine.analysis.interactive import Prompt, decoder_prompt, rgb_display, sam_image_tensor
from engine.inference.modelpack import sha256_file
from models.onnx_tools import cpu_session, export_onnx_graph
from models.weights import loading, require_file

with warnings.catch_warnings():
    # timm's deprecated module aliases and the TinyViT registry overwrite, at import.
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", UserWarning)
    import mobile_sam
    from mobile_sam import sam_model_registry
    from mobile_sam.utils.onnx import SamOnnxModel

if TYPE_CHECKING:
    from engine.imaging import DecodedImage
    from models.context import BuildContext

log = logging.getLogger(__name__)

WEIGHTS_FILE = "mobile_sam.pt"
MODEL_TYPE = "vit_t"
ENCODER_ID = "mobilesam-encoder"
DECODER_ID = "mobilesam-decoder"
SEED = 0
LONG_SIDE = 1024
EMBEDDING_SHAPE = (1, 256, 64, 64)
LOW_RES = 256
MASK_THRESHOLD = 0.0
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]
#: int8 must reach this IoU against the fp32 masks on every parity prompt ...
IOU_LIMIT = 0.9
#: ... and be at least this much faster (median of interleaved runs; two shared cores
#: make smaller gains indistinguishable from noise).
SPEEDUP_LIMIT = 1.1
#: Timed runs per variant and parity image (after one warm-up run).
TIMING_REPEATS = 2
DECODER_TIMING_REPEATS = 10
#: Parity prompts as fractions of the image: (points, labels, box).
PARITY_PROMPTS: tuple[tuple[list[list[float]], list[int], list[float] | None], ...] = (
    ([[0.30, 0.45]], [1], None),
    ([[0.50, 0.55]], [1], None),
    ([[0.70, 0.40], [0.55, 0.40]], [1, 0], None),
    ([], [], [0.20, 0.25, 0.60, 0.75]),
    ([[0.35, 0.60]], [1], [0.15, 0.35, 0.55, 0.85]),
)

ENCODER_INPUT = {
    "name": "image",
    "shape": [1, 3, LONG_SIDE, LONG_SIDE],
    "dtype": "float32",
    "resolution": LONG_SIDE,
    "preprocessing": "sam",
    "source": "display",
    "channels": "display grey replicated to RGB (colour images as RGB)",
    "resize": "longest side to long_side, Pillow bilinear (SamPredictor / ResizeLongestSide.apply_image)",
    "long_side": LONG_SIDE,
    "resample": "bilinear",
    "pixel_mean": PIXEL_MEAN,
    "pixel_std": PIXEL_STD,
    "value_scale": "0-255 before normalisation",
    "pad": "zeros, bottom and right, to long_side x long_side",
}
ENCODER_OUTPUT = {"name": "image_embeddings", "shape": list(EMBEDDING_SHAPE), "dtype": "float32"}
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
DECODER_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]
DECODER_INPUT = {
    "names": DECODER_INPUTS,
    "image_embeddings": {"shape": list(EMBEDDING_SHAPE), "dtype": "float32"},
    "point_coords": {"shape": [1, "num_points", 2], "dtype": "float32",
                     "frame": "encoder input pixels: image [x, y] scaled by ResizeLongestSide.apply_coords"},
    "point_labels": {"shape": [1, "num_points"], "dtype": "float32",
                     "values": {"1": "foreground", "0": "background", "2": "box top-left",
                                "3": "box bottom-right", "-1": "padding (appended when there is no box)"}},
    "mask_input": {"shape": [1, 1, LOW_RES, LOW_RES], "dtype": "float32",
                   "meaning": "low_res_masks logits of a previous prediction"},
    "has_mask_input": {"shape": [1], "dtype": "float32", "values": [0, 1]},
    "orig_im_size": {"shape": [2], "dtype": "float32", "meaning": "image (rows, columns)"},
    "long_side": LONG_SIDE,
}
DECODER_OUTPUT = {
    "names": DECODER_OUTPUTS,
    "masks": {"shape": [1, 4, "rows", "columns"], "dtype": "float32", "kind": "logits at the image size"},
    "iou_predictions": {"shape": [1, 4], "dtype": "float32", "kind": "predicted IoU per mask"},
    "low_res_masks": {"shape": [1, 4, LOW_RES, LOW_RES], "dtype": "float32", "kind": "logits for the next click"},
    "mask_threshold": MASK_THRESHOLD,
    "single_mask_index": 0,
    "multimask_indices": [1, 2, 3],
}


def load_mobile_sam(weights_dir: Path | None) -> tuple[nn.Module, dict[str, Any]]:
    """MobileSAM with ``mobile_sam.pt`` from ``weights_dir``, or the seeded dev initialisation.

    Returned in eval mode. ``build_sam_vit_t`` switches to eval *before* any checkpoint
    is loaded, and TinyViT's attention layers cache their bias table (``ab``) when
    switched to eval: the model is switched again after loading, or it would run with
    the biases of the random initialisation.
    """
    if weights_dir is not None:
        checkpoint = require_file(weights_dir, WEIGHTS_FILE, "MobileSAM vit_t")
        sam = sam_model_registry[MODEL_TYPE](checkpoint=None)
        with loading(weights_dir, WEIGHTS_FILE, "MobileSAM's vit_t state dict (TinyViT encoder, SAM decoder)"):
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            sam.load_state_dict(state)
        info = {"trained": True, "upstream_sha256": sha256_file(checkpoint),
                "init": f"MobileSAM checkpoint {WEIGHTS_FILE}"}
        return sam.eval(), info
    torch.manual_seed(SEED)
    sam = sam_model_registry[MODEL_TYPE](checkpoint=None)
    info = {"trained": False, "upstream_sha256": None,
            "init": f"untrained: mobile_sam's own initialisation (seed {SEED})"}
    return sam.eval(), info


def parity_prompts(decoded: DecodedImage) -> list[Prompt]:
    """:data:`PARITY_PROMPTS` in the pixel coordinates of one image."""
    size = np.array([decoded.columns, decoded.rows], dtype=np.float64)
    prompts = []
    for points, labels, box in PARITY_PROMPTS:
        coords = np.asarray(points, dtype=np.float64).reshape(-1, 2) * size
        box_px = None if box is None else np.asarray(box, dtype=np.float64) * np.tile(size, 2)
        prompts.append(Prompt(coords, np.asarray(labels, dtype=np.int64), box_px, None))
    return prompts


def decoder_feeds(embedding: np.ndarray, prompt: Prompt, original_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The decoder's inputs for one prompt (no previous mask), as the runtime builds them."""
    coords, labels = decoder_prompt(prompt, original_size, LONG_SIDE)
    return {
        "image_embeddings": embedding,
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": np.zeros((1, 1, LOW_RES, LOW_RES), dtype=np.float32),
        "has_mask_input": np.zeros(1, dtype=np.float32),
        "orig_im_size": np.array(original_size, dtype=np.float32),
    }


def mask_iou(reference: np.ndarray, candidate: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree (1.0)."""
    union = np.logical_or(reference, candidate).sum()
    return float(np.logical_and(reference, candidate).sum() / union) if union else 1.0


def _interleaved_ms(runs: dict[str, Any], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median ms of each zero-argument callable, timed alternately after one warm-up each.

    Also returns each callable's last result, so the parity check needs no extra run.
    """
    results = {name: run() for name, run in runs.items()}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(values)) for name, values in samples.items()}, results


def _quantize_dynamic(fp32_path: Path, int8_path: Path) -> dict[str, Any]:
    prepared = int8_path.with_suffix(".pre.onnx")
    # The decoder's dynamic point count defeats symbolic shape inference; ONNX's own
    # shape inference is enough for MatMul/Gemm weight quantization.
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    op_types = ["MatMul", "Gemm"]
    quantize_dynamic(str(prepared), str(int8_path), op_types_to_quantize=op_types,
                     weight_type=QuantType.QInt8, per_channel=True)
    prepared.unlink(missing_ok=True)
    return {"method": "dynamic", "weights": "int8 per-channel", "activations": "uint8 dynamic",
            "op_types": op_types}


def _masks(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    masks, scores, _ = session.run(None, feeds)
    return masks[0] > MASK_THRESHOLD, scores[0]


def _encoder_parity(sessions: dict[str, ort.InferenceSession], decoder: ort.InferenceSession,
                    images: list[DecodedImage]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Embeddings of each hold-out image under each encoder, and the mask IoUs int8 vs fp32."""
    ious, logits, embeddings = [], [], {}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for index, decoded in enumerate(images):
        tensor, _ = sam_image_tensor(rgb_display(decoded), ENCODER_INPUT)
        runs = {name: (lambda s=session, t=tensor: s.run(None, {"image": t})[0]) for name, session in sessions.items()}
        medians, outputs = _interleaved_ms(runs, TIMING_REPEATS)
        for name, value in medians.items():
            times[name].append(value)
        embeddings.update({f"{name}:{index}": value for name, value in outputs.items()})
        size = (decoded.rows, decoded.columns)
        for prompt in parity_prompts(decoded):
            reference, scores = _masks(decoder, decoder_feeds(outputs["fp32"], prompt, size))
            candidate, _ = _masks(decoder, decoder_feeds(outputs["int8"], prompt, size))
            best = 1 + int(np.argmax(scores[1:]))
            ious.append(mask_iou(reference[best], candidate[best]))
        raw, _, _ = decoder.run(None, decoder_feeds(outputs["fp32"], parity_prompts(decoded)[0], size))
        logits.append(float(np.median(np.abs(raw))))
    summary = {
        "iou_per_prompt": [round(v, 4) for v in ious],
        "iou_min": round(min(ious), 4),
        "iou_mean": round(float(np.mean(ious)), 4),
        "parity_prompts": len(ious),
        "fp32_median_ms": round(float(np.median(times["fp32"])), 1),
        "int8_median_ms": round(float(np.median(times["int8"])), 1),
        # Untrained logits sit near 0, where any perturbation flips the thresholded
        # mask: this tells a dev-pack rejection from a real one.
        "fp32_median_abs_mask_logit": round(float(np.median(logits)), 4),
    }
    return summary, embeddings


def _decoder_parity(sessions: dict[str, ort.InferenceSession], embeddings: dict[str, np.ndarray],
                    images: list[DecodedImage]) -> dict[str, Any]:
    """Decoder int8 vs fp32 on the fp32 embeddings: mask IoUs and per-click latency."""
    ious = []
    for index, decoded in enumerate(images):
        size = (decoded.rows, decoded.columns)
        for prompt in parity_prompts(decoded):
            feeds = decoder_feeds(embeddings[f"fp32:{index}"], prompt, size)
            reference, scores = _masks(sessions["fp32"], feeds)
            candidate, _ = _masks(sessions["int8"], feeds)
            best = 1 + int(np.argmax(scores[1:]))
            ious.append(mask_iou(reference[best], candidate[best]))
    feeds = decoder_feeds(embeddings["fp32:0"], parity_prompts(images[0])[0], (images[0].rows, images[0].columns))
    timings, _ = _interleaved_ms({name: (lambda s=session: s.run(None, feeds)) for name, session in sessions.items()},
                                 DECODER_TIMING_REPEATS)
    return {
        "iou_per_prompt": [round(v, 4) for v in ious],
        "iou_min": round(min(ious), 4),
        "iou_mean": round(float(np.mean(ious)), 4),
        "parity_prompts": len(ious),
        "fp32_median_ms": round(timings["fp32"], 1),
        "int8_median_ms": round(timings["int8"], 1),
    }


def _decision(parity: dict[str, Any]) -> tuple[bool, str]:
    # Decided on the recorded (rounded) figures, so the manifest's record proves its decision.
    speedup = parity["speedup"] = round(parity["fp32_median_ms"] / max(parity["int8_median_ms"], 1e-6), 2)
    reasons = []
    if speedup < SPEEDUP_LIMIT:
        reasons.append(f"int8 not faster enough ({parity['int8_median_ms']:.0f} ms vs fp32 "
                       f"{parity['fp32_median_ms']:.0f} ms, x{speedup:.2f} < x{SPEEDUP_LIMIT})")
    if parity["iou_min"] < IOU_LIMIT:
        reasons.append(f"masks disagree with fp32: worst IoU {parity['iou_min']:.3f} < {IOU_LIMIT} "
                       f"(mean {parity['iou_mean']:.3f})")
    return not reasons, "; ".join(reasons)


def export_encoder(sam: nn.Module, path: Path, example: np.ndarray) -> None:
    """The TinyViT image encoder as ``image`` -> ``image_embeddings`` (fixed 1024 x 1024)."""
    encoder = sam.image_encoder.eval()
    with warnings.catch_warnings():
        # TinyViT reads its (fixed) resolutions as Python ints while tracing.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        export_onnx_graph(encoder, (torch.from_numpy(example),), path,
                          input_names=["image"], output_names=["image_embeddings"])
    sam.eval()


def decoder_module(sam: nn.Module) -> nn.Module:
    """The exported prompt decoder as a torch module, in eval mode.

    ``SamOnnxModel`` is a new module, hence in train mode, and ``torch.onnx.export``
    restores every submodule's train/eval flag after tracing: exporting it in train mode
    would leave the shared SAM (its TinyViT BatchNorms included) in train mode.
    """
    return SamOnnxModel(sam, return_single_mask=False).eval()


def export_decoder(sam: nn.Module, path: Path) -> None:
    """SAM's prompt decoder (``SamOnnxModel``, multimask) with a dynamic point count."""
    example = (
        torch.randn(*EMBEDDING_SHAPE),
        torch.randint(0, LONG_SIDE, (1, 5, 2), dtype=torch.float32),
        torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0]]),
        torch.randn(1, 1, LOW_RES, LOW_RES),
        torch.tensor([1.0]),
        torch.tensor([1500.0, 1200.0]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        export_onnx_graph(decoder_module(sam), example, path, input_names=DECODER_INPUTS,
                          output_names=DECODER_OUTPUTS,
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
    sam.eval()


def build(context: BuildContext) -> list[dict]:
    """Export the encoder (fp32 + int8 when it qualifies) and the decoder into ``out_dir/sam``."""
    started = time.perf_counter()
    sam, info = load_mobile_sam(context.weights_dir)
    folder = context.out_dir / "sam"
    folder.mkdir(parents=True, exist_ok=True)
    encoder_fp32, encoder_int8 = folder / f"{ENCODER_ID}.fp32.onnx", folder / f"{ENCODER_ID}.int8.onnx"
    decoder_fp32, decoder_int8 = folder / f"{DECODER_ID}.fp32.onnx", folder / f"{DECODER_ID}.int8.onnx"
    holdout = context.images.by_role("holdout")
    example, _ = sam_image_tensor(rgb_display(context.images.by_role("calibrate")[0]), ENCODER_INPUT)
    export_encoder(sam, encoder_fp32, example)
    export_decoder(sam, decoder_fp32)
    exported = time.perf_counter()
    encoder_recipe = _quantize_dynamic(encoder_fp32, encoder_int8)
    decoder_recipe = _quantize_dynamic(decoder_fp32, decoder_int8)
    quantized = time.perf_counter()

    decoder_sessions = {"fp32": cpu_session(decoder_fp32, context.threads),
                        "int8": cpu_session(decoder_int8, context.threads)}
    encoder_parity, embeddings = _encoder_parity(
        {"fp32": cpu_session(encoder_fp32, context.threads), "int8": cpu_session(encoder_int8, context.threads)},
        decoder_sessions["fp32"], holdout)
    keep_encoder_int8, encoder_reason = _decision(encoder_parity)
    decoder_parity = _decoder_parity(decoder_sessions, embeddings, holdout)
    keep_decoder_int8, decoder_reason = _decision(decoder_parity)
    log.info("mobilesam encoder int8: fp32 %.0f ms, int8 %.0f ms, IoU min %.3f: keep %s; decoder int8 keep %s",
             encoder_parity["fp32_median_ms"], encoder_parity["int8_median_ms"], encoder_parity["iou_min"],
             keep_encoder_int8, keep_decoder_int8)

    rule = (f"int8 is kept (and the default) only if >= {SPEEDUP_LIMIT}x faster than fp32 (median of "
            f"interleaved runs) and the best multimask output decoded from it has IoU >= {IOU_LIMIT} with "
            f"fp32's for every parity prompt on the hold-out radiographs")
    bench = {"threads": context.threads, "batch": 1, "samples": len(holdout),
             "export_s": round(exported - started, 1), "quantize_s": round(quantized - exported, 1),
             "build_s": round(time.perf_counter() - started, 1)}
    common = {
        "format": "onnx",
        "trained": info["trained"],
        "version": f"mobile_sam-{_package_version()}",
        "labels": [],
        "thresholds": None,
        "upstream": {"name": "MobileSAM (vit_t)", "weights": WEIGHTS_FILE if info["trained"] else None,
                     "sha256": info["upstream_sha256"], "package": "mobilesam-mirror",
                     "package_version": _package_version(), "license": "Apache-2.0"},
    }
    encoder_common = common | {
        "task": "sam_encoder",
        "architecture": "MobileSAM image encoder: TinyViT-5M at 1024 x 1024 -> 256 x 64 x 64 embedding",
        "input": ENCODER_INPUT,
        "output": ENCODER_OUTPUT,
        "parameters": {"init": info["init"], "decoder": f"{DECODER_ID}-fp32"},
    }
    decoder_common = common | {
        "task": "sam_decoder",
        "architecture": "SAM prompt encoder + mask decoder (two-way transformer, 4 mask tokens) with mask "
                        "postprocessing (mobile_sam.utils.onnx.SamOnnxModel, return_single_mask=False)",
        "input": DECODER_INPUT,
        "output": DECODER_OUTPUT,
        "parameters": {"init": info["init"], "encoder": f"{ENCODER_ID}-fp32"},
    }
    return [*_precision_entries(ENCODER_ID, encoder_common, encoder_fp32, encoder_int8, keep_encoder_int8,
                                encoder_parity, encoder_recipe, encoder_reason, rule, bench),
            *_precision_entries(DECODER_ID, decoder_common, decoder_fp32, decoder_int8, keep_decoder_int8,
                                decoder_parity, decoder_recipe, decoder_reason, rule, bench)]


def _precision_entries(model_id: str, common: dict, fp32: Path, int8: Path, keep_int8: bool, parity: dict,
                       recipe: dict, reason: str, rule: str, bench: dict) -> list[dict]:
    """The fp32 entry, and the int8 one when it is kept (as the default); else int8's file goes."""
    fp32_entry = common | {"id": f"{model_id}-fp32", "file": f"sam/{fp32.name}", "precision": "fp32",
                           "default": not keep_int8, "benchmark": bench | {"median_ms": parity["fp32_median_ms"]}}
    if not keep_int8:
        int8.unlink()
        fp32_entry["quantization"] = {"int8_kept": False, "reason": reason, "rule": rule,
                                      "candidate": recipe} | parity
        return [fp32_entry]
    return [fp32_entry, common | {
        "id": f"{model_id}-int8", "file": f"sam/{int8.name}", "precision": "int8", "default": True,
        "benchmark": bench | {"median_ms": parity["int8_median_ms"]},
        "quantization": recipe | {"int8_kept": True, "reference": f"{model_id}-fp32", "rule": rule} | parity}]


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mobilesam-mirror")
    except PackageNotFoundError:
        return getattr(mobile_sam, "__version__", "unknown")
