"""A real, tiny ``segment3d`` ONNX model in a pack of its own, for tests of the U-Net's wiring.

The dev pack's 3D U-Net needs a 128^3 patch (about 25 s per volume on two cores); this
pack holds one ONNX graph of the same interface (``image`` (1, 1, z, y, x) -> ``logits``
(1, C, z, y, x)) that ONNX Runtime runs for real: a 1x1x1 convolution giving each voxel the
logit ``c_k * v - c_k^2 / 2`` per class k, so the argmax is the class whose centre ``c_k``
(CT-normalised HU) is nearest the voxel's value. Its labels are named like the pack's label
map; the entry says ``trained: false``. Written into a temp folder, never into the repo.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: (name, centre in HU) of each class; 0 is background (air).
CLASSES = (("background", -1000.0), ("lung_like", -800.0), ("soft_tissue", 40.0), ("bone_like", 700.0))
MEAN, STD = 96.0, 207.0


def _graph() -> bytes:
    centres = np.array([(hu - MEAN) / STD for _, hu in CLASSES], dtype=np.float32)
    weight = centres.reshape(len(CLASSES), 1, 1, 1, 1)
    bias = (-centres * centres / 2).astype(np.float32)
    node = helper.make_node("Conv", ["image", "weight", "bias"], ["logits"], kernel_shape=[1, 1, 1])
    graph = helper.make_graph(
        [node], "tiny-unet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES), "z", "y", "x"])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_tiny_unet_pack(folder: Path, dev_pack: Path, *, spacing_mm: float = 6.0, patch: int = 16) -> Path:
    """A pack in ``folder`` holding only the tiny segment3d model (its entry modelled on the dev pack's)."""
    manifest = json.loads((dev_pack / "manifest.json").read_text())
    entry = copy.deepcopy(next(m for m in manifest["models"] if m["task"] == "segment3d"))
    data = _graph()
    (folder / "segment3d").mkdir(parents=True, exist_ok=True)
    (folder / "segment3d" / "tiny.fp32.onnx").write_bytes(data)
    entry.update({"id": "tiny-unet-fp32", "file": "segment3d/tiny.fp32.onnx", "sha256": hashlib.sha256(data).hexdigest(),
                  "size_bytes": len(data), "labels": [name for name, _ in CLASSES], "trained": False})
    entry.pop("benchmark", None)
    entry.pop("quantization", None)
    entry["input"] |= {"patch_size": [patch] * 3, "spacing_mm": [spacing_mm] * 3, "divisor": [1, 1, 1]}
    entry["input"]["normalization"] |= {"mean": MEAN, "std": STD}
    entry["output"] |= {"shape": ["batch", len(CLASSES), "z", "y", "x"],
                        "label_map": {str(i): name for i, (name, _) in enumerate(CLASSES)}}
    manifest |= {"models": [entry], "components": ["volume_unet"], "name": "tiny-unet"}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder
