"""The RAD-DINO embedding builder: fixed-grid graph (no Resize), ONNX == torch, int8 decision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import Dinov2Model

from engine.analysis.embedding import pixel_values
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import decode_image
from engine.inference.modelpack import ModelPack, sha256_file
from models import embedding
from tests.models.runtime_choice import assert_runtime_choice


def _entries(pack: Path) -> dict[str, dict]:
    manifest = json.loads((pack / "manifest.json").read_text())
    return {e["precision"]: e for e in manifest["models"] if e["task"] == "embed"}


def test_exported_graph_has_no_resize_and_equals_torch(embed_pack: Path, rg1_path: Path) -> None:
    entries = _entries(embed_pack)
    for entry in entries.values():
        graph = onnx.load(str(embed_pack / entry["file"])).graph
        assert not [n.name for n in graph.node if n.op_type == "Resize"]
        assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:] == [3, 518, 518]

    # The dev weights are a seeded initialisation: rebuilding them gives the exported model.
    model, info = embedding.load_rad_dino(None)
    assert info["trained"] is False
    wrapper = embedding.RadDinoEmbedding(model).eval()
    tensor = pixel_values(decode_image(rg1_path).display(), entries["fp32"]["input"])
    with torch.no_grad():
        hugging_face = model(pixel_values=torch.from_numpy(tensor)).pooler_output.numpy()
        ours = wrapper(torch.from_numpy(tensor)).numpy()
    assert np.abs(ours - hugging_face).max() < 1e-5
    session = ort.InferenceSession(str(embed_pack / entries["fp32"]["file"]), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"pixel_values": tensor})[0]
    assert exported.shape == (1, 768)
    assert np.abs(exported - ours).max() < 1e-3, np.abs(exported - ours).max()


def test_manifest_entries_carry_the_preprocessing_and_the_int8_decision(embed_pack: Path) -> None:
    entries = _entries(embed_pack)
    assert set(entries) == {"fp32", "int8"}
    assert all(row["ok"] for row in ModelPack.load(embed_pack).verify())
    spec = entries["fp32"]["input"]
    assert spec["shortest_edge"] == spec["crop_size"] == spec["resolution"] == 518
    assert spec["image_mean"] == [0.5307] * 3 and spec["image_std"] == [0.2583] * 3
    assert spec["resample"] == "bicubic"
    assert entries["fp32"]["output"]["dimension"] == 768

    record = entries["int8"]["quantization"]
    qualifies = record["cosine_min"] >= embedding.COSINE_LIMIT and record["speedup"] >= embedding.SPEEDUP_LIMIT
    assert record["int8_default"] is qualifies
    # The pack's default is the fastest runtime/file pair whose embeddings keep the cosine.
    assert_runtime_choice([entries["fp32"], entries["int8"]], figure="cosine_min",
                          passes=lambda cosine: cosine >= embedding.COSINE_LIMIT, reference=1.0)
    assert record["cosine_samples"] == 8 and record["cosine_min"] <= record["cosine_mean"] <= 1.0 + 1e-6


def test_local_snapshot_loads_offline(tmp_path: Path) -> None:
    model, _ = embedding.load_rad_dino(None)
    model.save_pretrained(tmp_path / embedding.WEIGHTS_FOLDER)
    loaded, info = embedding.load_rad_dino(tmp_path)
    assert isinstance(loaded, Dinov2Model) and info["trained"] is True
    assert info["upstream_sha256"] == sha256_file(tmp_path / embedding.WEIGHTS_FOLDER / embedding.WEIGHTS_FILE)
    reference = model.state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in loaded.state_dict().items())


def test_missing_snapshot_is_named(tmp_path: Path) -> None:
    (tmp_path / "rad-dino").mkdir()
    (tmp_path / "rad-dino" / "config.json").write_text("{}")
    with pytest.raises(MedVisionError, match="rad-dino/model.safetensors") as err:
        embedding.load_rad_dino(tmp_path)
    assert err.value.code is ErrorCode.FILE_NOT_FOUND
