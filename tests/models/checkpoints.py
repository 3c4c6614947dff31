"""Upstream checkpoints with random weights, written in each upstream's own format and file name.

What a site downloads on a connected machine cannot be downloaded here, so these writers
produce files of the same form: the same network class, the same serialisation, the same
file name, with seeded random weights instead of trained ones.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import gguf
import numpy as np
import torch
import torchxrayvision as xrv
from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet
from transformers import Dinov2Config, Dinov2Model

from models import classifier, embedding, sam, segmentation

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # timm's registry-overwrite warnings at first import
    from mobile_sam import sam_model_registry


def write_xrv_densenet(weights_dir: Path, calibration: np.ndarray, *, seed: int = 11,
                       num_classes: int = 18) -> Path:
    """torchxrayvision's all-datasets DenseNet checkpoint: the whole model pickled (``torch.save(model)``).

    BatchNorm statistics come from ``calibration`` (real xrv tensors) so the outputs are
    spread like a trained model's, not saturated at 0 or 1.
    """
    torch.manual_seed(seed)
    model = xrv.models.DenseNet(num_classes=num_classes)
    classifier.recalibrate_batchnorm(model, calibration)
    path = weights_dir / classifier.upstream_file_name()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path


def pspnet_state(seed: int = 12) -> OrderedDict[str, torch.Tensor]:
    """A ChestX-Det PSPNet state dict as torchxrayvision publishes it: saved from DataParallel."""
    torch.manual_seed(seed)
    return OrderedDict((f"module.{key}", value) for key, value in pspnet(len(segmentation.labels())).state_dict().items())


def write_pspnet(weights_dir: Path, state: dict | None = None) -> Path:
    """``pspnet_chestxray_best_model_4.pth``: a ``torch.save``-d state dict."""
    path = weights_dir / segmentation.WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pspnet_state() if state is None else state, path)
    return path


def write_rad_dino(weights_dir: Path, *, seed: int = 13, **config: int) -> Path:
    """A Hugging Face snapshot folder of microsoft/rad-dino: ``config.json`` + ``model.safetensors``."""
    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**(embedding.RAD_DINO_CONFIG | config)))
    folder = weights_dir / embedding.WEIGHTS_FOLDER
    model.save_pretrained(folder)
    return folder


def mobile_sam_state(seed: int = 14) -> dict[str, torch.Tensor]:
    """MobileSAM's ``vit_t`` state dict with the network's own random initialisation."""
    torch.manual_seed(seed)
    return sam_model_registry[sam.MODEL_TYPE](checkpoint=None).state_dict()


def write_mobile_sam(weights_dir: Path, state: dict | None = None) -> Path:
    """``mobile_sam.pt``: a ``torch.save``-d state dict."""
    path = weights_dir / sam.WEIGHTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(mobile_sam_state() if state is None else state, path)
    return path


def write_projector(path: Path, *, seed: int = 15, architecture: str = "clip") -> Path:
    """A llama.cpp vision projector GGUF (architecture ``clip``) with random f16 MLP weights."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_uint32("clip.vision.image_size", 224)
    writer.add_uint32("clip.vision.patch_size", 14)
    writer.add_uint32("clip.vision.embedding_length", 64)
    writer.add_tensor("mm.0.weight", rng.standard_normal((128, 64)).astype(np.float16))
    writer.add_tensor("mm.0.bias", rng.standard_normal(128).astype(np.float32))
    writer.add_tensor("mm.2.weight", rng.standard_normal((640, 128)).astype(np.float16))
    writer.add_tensor("mm.2.bias", rng.standard_normal(640).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to ``keep`` of its size, as an interrupted download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
