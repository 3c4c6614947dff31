"""RAD-DINO image embeddings (DINOv2 ViT-B/14 at 518 px, CLS token) -> ONNX fp32 + int8.

Trained weights: a local copy of the Hugging Face repository ``microsoft/rad-dino``
(``config.json`` + ``model.safetensors``) in ``<weights-dir>/rad-dino/``, read with
``local_files_only=True``. Dev pack: the same architecture, randomly initialised with a
fixed seed (``trained: false``). Nothing is ever downloaded: the configuration and the
preprocessing are written out below.

Where the values come from (the ``search`` tool over public code and docs, no download):

- Architecture: the RAD-DINO model card says "Finetuned from model: dinov2-base"
  (huggingface.co/microsoft/rad-dino README), and its usage example returns a 768-d CLS
  token and a 37 x 37 patch grid for one image, i.e. 518 px / patch 14.
  ``facebook/dinov2-base/config.json`` (huggingface.co, blob main): hidden_size 768,
  num_hidden_layers 12, num_attention_heads 12, mlp_ratio 4, patch_size 14,
  image_size 518, layer_norm_eps 1e-06, layerscale_value 1.0, use_swiglu_ffn false,
  qkv_bias true, hidden_act gelu, dropouts 0.0. rad-dino's own config.json was not
  found in the index; these values are the dinov2-base ones it was fine-tuned from.
- Preprocessing (``BitImageProcessor``): a public repository's dataset module (found
  in a code index that did not show the repository's name) states it copied
  microsoft/rad-dino's official preprocessor_config.json (commit 364cf91): image_mean
  0.5307 and image_std 0.2583 on all three channels, size shortest_edge 518, centre
  crop 518 x 518, resample 3 (bicubic), do_convert_rgb, rescale 1/255. The same
  mean/std appear in github.com/Jasonnn13/rad-dino-maira2-finetune ``scripts/data.py``
  ("from the model's preprocessor_config.json", for the MAIRA-2 variant), and
  github.com/f10409/RAD-DINO_Embedding_Extractor runs rad-dino's ``AutoImageProcessor``
  at shortest_edge 518 / crop 518.

The export feeds the stored position embeddings straight into the sum: Hugging Face's
``Dinov2Embeddings.interpolate_pos_encoding`` always interpolates under tracing (a
bicubic ``Resize`` in the graph even at the native size), which costs time and is not
what the model does at 518 px in eager mode. The graph therefore only accepts
518 x 518 inputs, which the runtime preprocessing always produces.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import transformers
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from engine.analysis.embedding import pixel_values
from engine.errors import ErrorCode, MedVisionError
from engine.inference.modelpack import sha256_file
from models.onnx_tools import cpu_session, export_onnx
from models.runtimes import choose_runtimes
from models.weights import loading, require_file

if TYPE_CHECKING:
    from engine.imaging import DecodedImage
    from models.context import BuildContext

log = logging.getLogger(__name__)

MODEL_ID = "rad-dino"
#: Folder of the weights directory holding the Hugging Face snapshot of microsoft/rad-dino.
WEIGHTS_FOLDER = "rad-dino"
WEIGHTS_FILE = "model.safetensors"
RESOLUTION = 518
SEED = 0

#: microsoft/rad-dino = dinov2-base (see the module docstring for the sources).
RAD_DINO_CONFIG = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": RESOLUTION,
    "num_channels": 3,
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
    "use_swiglu_ffn": False,
    "qkv_bias": True,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.0,
    "initializer_range": 0.02,
}

#: microsoft/rad-dino's preprocessor_config.json (BitImageProcessor), as the manifest
#: carries it to the runtime (``engine.analysis.embedding.pixel_values``).
PREPROCESSING = {
    "preprocessing": "rad-dino",
    "source": "display",
    "shortest_edge": RESOLUTION,
    "crop_size": RESOLUTION,
    "resample": "bicubic",
    "rescale_factor": 1 / 255,
    "image_mean": [0.5307, 0.5307, 0.5307],
    "image_std": [0.2583, 0.2583, 0.2583],
}

#: int8 becomes the default only if every image keeps this cosine to fp32 ...
COSINE_LIMIT = 0.99
#: ... and it is at least this much faster (the issue's rule).
SPEEDUP_LIMIT = 1.3
#: Crops added to each calibration radiograph for the int8 check (fractions of the image).
CHECK_CROPS = ((0.0, 1.0), (0.2, 0.8))


class RadDinoEmbedding(nn.Module):
    """``Dinov2Model`` up to ``pooler_output`` for a fixed 518 x 518 input, export-friendly.

    Equal to ``Dinov2Model(pixel_values).pooler_output`` at the native size (where Hugging
    Face adds ``position_embeddings`` unchanged in eager mode), without the traced
    interpolation; the layer norm is per token, so normalising the CLS token alone is the
    same as taking it from the normalised sequence.
    """

    def __init__(self, dinov2: Dinov2Model) -> None:
        super().__init__()
        self.embeddings = dinov2.embeddings
        self.encoder = dinov2.encoder
        self.layernorm = dinov2.layernorm
        grid = dinov2.config.image_size // dinov2.config.patch_size
        if self.embeddings.position_embeddings.shape[1] != grid * grid + 1:
            raise ValueError("position embeddings do not match the configured image size")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # noqa: D102
        patches = self.embeddings.patch_embeddings(pixel_values)
        cls_tokens = self.embeddings.cls_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat((cls_tokens, patches), dim=1) + self.embeddings.position_embeddings
        hidden = self.encoder(tokens).last_hidden_state
        return self.layernorm(hidden[:, 0])


def rad_dino_config() -> Dinov2Config:
    """The RAD-DINO configuration, with eager attention (plain MatMul/Softmax in ONNX)."""
    return Dinov2Config(**RAD_DINO_CONFIG, attn_implementation="eager")


def load_rad_dino(weights_dir: Path | None) -> tuple[Dinov2Model, dict]:
    """The model with the local rad-dino snapshot from ``weights_dir``, or the dev initialisation."""
    if weights_dir is not None:
        what = "a local copy of huggingface.co/microsoft/rad-dino"
        config_name, weights_name = f"{WEIGHTS_FOLDER}/config.json", f"{WEIGHTS_FOLDER}/{WEIGHTS_FILE}"
        config_path = require_file(weights_dir, config_name, what)
        weights = require_file(weights_dir, weights_name, what)
        _check_config(weights_dir, config_name, config_path.parent)
        with loading(weights_dir, weights_name, "RAD-DINO's safetensors weights (DINOv2 ViT-B/14, 768-d)"):
            model, report = Dinov2Model.from_pretrained(config_path.parent, local_files_only=True,
                                                        attn_implementation="eager", output_loading_info=True)
            # transformers only warns about missing or unexpected tensors (it initialises the
            # missing ones at random): a checkpoint that does not cover the model is refused.
            problems = [f"{len(found)} {kind.replace('_', ' ')} (e.g. {sorted(map(str, found))[0]})"
                        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
                        if (found := report.get(kind))]
            if problems:
                raise ValueError("; ".join(problems))
        info = {"trained": True, "upstream_sha256": sha256_file(weights),
                "init": "microsoft/rad-dino (local snapshot)"}
        return model.eval(), info
    torch.manual_seed(SEED)
    model = Dinov2Model(rad_dino_config())
    info = {"trained": False, "upstream_sha256": None,
            "init": f"untrained: transformers' DINOv2 init (truncated normal, std 0.02), seed {SEED}"}
    return model.eval(), info


def _check_config(weights_dir: Path, config_name: str, folder: Path) -> None:
    """Refuse a ``config.json`` that is not RAD-DINO's architecture, naming the differing key."""
    with loading(weights_dir, config_name, "a Hugging Face DINOv2 config.json"):
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    differences = [f"{key}={getattr(config, key, None)} (expected {RAD_DINO_CONFIG[key]})"
                   for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")
                   if getattr(config, key, None) != RAD_DINO_CONFIG[key]]
    if config.model_type != "dinov2":
        differences.insert(0, f"model_type={config.model_type} (expected dinov2)")
    if differences:
        raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR, f"{config_name} is not RAD-DINO's architecture: "
                             + ", ".join(differences), file=config_name)


def check_tensors(images: list[DecodedImage]) -> np.ndarray:
    """Runtime-preprocessed tensors of each image and of a centre crop of it, ``(n, 3, 518, 518)``."""
    tensors = []
    for decoded in images:
        display = decoded.display()
        rows, columns = display.shape[:2]
        for low, high in CHECK_CROPS:
            crop = display[int(rows * low):int(rows * high), int(columns * low):int(columns * high)]
            tensors.append(pixel_values(crop, PREPROCESSING)[0])
    return np.stack(tensors)


def _timed_outputs(session, tensors: np.ndarray) -> tuple[np.ndarray, list[float]]:  # noqa: ANN001
    """Outputs for each tensor (batch 1, after one warm-up run) and the wall time of each run."""
    session.run(None, {"pixel_values": tensors[:1]})
    outputs, times = [], []
    for index in range(len(tensors)):
        start = time.perf_counter()
        outputs.append(session.run(None, {"pixel_values": tensors[index:index + 1]})[0][0])
        times.append((time.perf_counter() - start) * 1000)
    return np.stack(outputs), times


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def build(context: BuildContext) -> list[dict]:
    """Export fp32 + dynamic int8 ONNX into ``out_dir/embed`` and return their manifest entries."""
    started = time.perf_counter()
    model, info = load_rad_dino(context.weights_dir)
    wrapper = RadDinoEmbedding(model).eval()
    folder = context.out_dir / "embed"
    folder.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = folder / f"{MODEL_ID}.fp32.onnx", folder / f"{MODEL_ID}.int8.onnx"
    tensors = check_tensors(context.images.by_role("calibrate") + context.images.by_role("holdout"))
    with warnings.catch_warnings():
        # Dinov2PatchEmbeddings checks the channel count in Python: a constant 3 in the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        export_onnx(wrapper, torch.from_numpy(tensors[:1]), fp32_path,
                    input_name="pixel_values", output_names=["embedding"])
    exported = time.perf_counter()

    prepared = int8_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
    quantize_dynamic(str(prepared), str(int8_path), op_types_to_quantize=["MatMul"],
                     weight_type=QuantType.QInt8, per_channel=True)
    prepared.unlink(missing_ok=True)
    quantized = time.perf_counter()

    fp32_out, fp32_ms = _timed_outputs(cpu_session(fp32_path, context.threads), tensors)
    int8_out, int8_ms = _timed_outputs(cpu_session(int8_path, context.threads), tensors)
    cosine = _cosine(fp32_out, int8_out)
    # Decided on the recorded (rounded) figures, so the manifest's record proves its decision.
    lat32, lat8 = round(float(np.median(fp32_ms)), 1), round(float(np.median(int8_ms)), 1)
    speedup = round(lat32 / lat8, 2)
    int8_default = bool(round(float(cosine.min()), 6) >= COSINE_LIMIT and speedup >= SPEEDUP_LIMIT)
    # How far apart different images are, so the int8 cosine can be read against it
    # (an untrained ViT maps every image close to one direction).
    between = _cosine(fp32_out[:1].repeat(len(fp32_out) - 1, axis=0), fp32_out[1:])
    log.info("rad-dino int8 cosine min %.5f mean %.5f, fp32 %.0f ms, int8 %.0f ms (x%.2f): int8 default %s",
             cosine.min(), cosine.mean(), lat32, lat8, speedup, int8_default)

    common = {
        "task": "embed",
        "architecture": "RAD-DINO: DINOv2 ViT-B/14 (12 layers, 768-d), 518 x 518 input, CLS token",
        "format": "onnx",
        "trained": info["trained"],
        "version": f"transformers-{transformers.__version__}",
        "input": {"name": "pixel_values", "shape": ["batch", 3, RESOLUTION, RESOLUTION], "dtype": "float32",
                  "resolution": RESOLUTION} | PREPROCESSING,
        "output": {"name": "embedding", "shape": ["batch", RAD_DINO_CONFIG["hidden_size"]],
                   "dimension": RAD_DINO_CONFIG["hidden_size"],
                   "pooling": "CLS token after the final layer norm (pooler_output)",
                   "normalised": False, "runtime_normalisation": "l2", "similarity": "cosine"},
        "labels": [],
        "thresholds": None,
        "upstream": {"name": "microsoft/rad-dino",
                     "weights": f"{WEIGHTS_FOLDER}/{WEIGHTS_FILE}" if info["trained"] else None,
                     "sha256": info["upstream_sha256"], "package": "transformers",
                     "package_version": transformers.__version__,
                     "license": "MIT (current model card; earlier revisions: MSRLA), research use only"},
        "parameters": {"init": info["init"], "config": RAD_DINO_CONFIG,
                       "position_embeddings": "stored table added directly (no interpolation in the graph)"},
    }
    bench = {"threads": context.threads, "batch": 1, "samples": len(tensors),
             "export_s": round(exported - started, 1), "quantize_s": round(quantized - exported, 1),
             "build_s": round(time.perf_counter() - started, 1)}
    decision = {
        "rule": f"int8 is the default only if cosine to fp32 >= {COSINE_LIMIT} on every image "
                f"and it is >= {SPEEDUP_LIMIT}x faster",
        "cosine_min": round(float(cosine.min()), 6),
        "cosine_mean": round(float(cosine.mean()), 6),
        "cosine_samples": int(len(cosine)),
        "between_image_cosine_fp32_min": round(float(between.min()), 6) if between.size else None,
        "fp32_median_ms": round(lat32, 1),
        "int8_median_ms": round(lat8, 1),
        "speedup": round(speedup, 2),
        "int8_default": int8_default,
        "calibration_sources": context.images.sources,
    }
    entries = [
        common | {"id": f"{MODEL_ID}-fp32", "file": f"embed/{fp32_path.name}", "precision": "fp32",
                  "default": not int8_default, "benchmark": bench | {"median_ms": round(lat32, 1)}},
        common | {"id": f"{MODEL_ID}-int8", "file": f"embed/{int8_path.name}", "precision": "int8",
                  "default": int8_default, "benchmark": bench | {"median_ms": round(lat8, 1)},
                  "quantization": {"method": "dynamic", "weights": "int8 per-channel", "activations": "uint8 dynamic",
                                   "op_types": ["MatMul"], "reference": f"{MODEL_ID}-fp32"} | decision},
    ]
    return choose_runtimes(
        entries, context.out_dir, check_tensors(context.images.by_role("holdout")), threads=context.threads,
        parity=lambda ref, out: {"cosine_min": round(float(_cosine(ref, out).min()), 6)},
        passes=lambda figures: figures["cosine_min"] >= COSINE_LIMIT,
        rule=f"the fastest candidate whose embedding cosine to ONNX Runtime fp32 is >= {COSINE_LIMIT} on every image")
