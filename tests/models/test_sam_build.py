"""The MobileSAM builder: ONNX encoder and decoder == torch MobileSAM, manifest, int8 decision."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from engine.analysis.interactive import rgb_display, sam_image_tensor, validate_prompt
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import DecodedImage, decode_image
from engine.inference.modelpack import ModelPack, manifest_schema, sha256_file
from models import sam
from models.onnx_tools import cpu_session

with warnings.catch_warnings():
    # timm's registry-overwrite warnings, raised when mobile_sam is first imported.
    warnings.simplefilter("ignore", UserWarning)
    from mobile_sam import SamPredictor

SAM_TASKS = ("sam_encoder", "sam_decoder")


@pytest.fixture(scope="module")
def rg1(rg1_path: Path) -> DecodedImage:
    return decode_image(rg1_path)


@pytest.fixture(scope="module")
def torch_sam() -> torch.nn.Module:
    """The dev weights rebuilt the way the builder makes them (seeded), in eval mode."""
    model, info = sam.load_mobile_sam(None)
    assert info["trained"] is False
    assert not any(module.training for module in model.modules())
    return model


def _manifest(pack: Path) -> dict:
    return json.loads((pack / "manifest.json").read_text())


def _entries(pack: Path, task: str) -> dict[str, dict]:
    return {e["precision"]: e for e in _manifest(pack)["models"] if e["task"] == task}


def test_encoder_equals_torch_mobile_sam(sam_pack: Path, rg1: DecodedImage, torch_sam: torch.nn.Module) -> None:
    entry = _entries(sam_pack, "sam_encoder")["fp32"]
    image = rgb_display(rg1)
    predictor = SamPredictor(torch_sam)
    with torch.no_grad():
        predictor.set_image(image)
        reference_input = torch_sam.preprocess(
            torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1)[None].float())
    tensor, resized = sam_image_tensor(image, entry["input"])
    # numpy + Pillow preprocessing == SamPredictor's (ResizeLongestSide + Sam.preprocess).
    assert np.abs(tensor - reference_input.numpy()).max() < 1e-4
    assert resized == tuple(predictor.input_size)

    session = cpu_session(sam_pack / entry["file"], 2)
    embedding = session.run(None, {"image": tensor})[0]
    reference = predictor.features.numpy()
    assert embedding.shape == reference.shape == tuple(entry["output"]["shape"])
    assert np.abs(embedding - reference).max() < 1e-4 * np.abs(reference).max(), np.abs(embedding - reference).max()


def test_decoder_equals_torch_mobile_sam(sam_pack: Path, rg1: DecodedImage, torch_sam: torch.nn.Module) -> None:
    entry = _entries(sam_pack, "sam_decoder")["fp32"]
    predictor = SamPredictor(torch_sam)
    with torch.no_grad():
        predictor.set_image(rgb_display(rg1))
    embedding = predictor.features.numpy()
    session = cpu_session(sam_pack / entry["file"], 2)
    previous = None
    prompts = [
        ([[440, 800]], [1], None),
        ([[440, 800], [1300, 700], [600, 300]], [1, 0, 1], None),
        (None, None, [150, 150, 850, 1450]),
        ([[440, 800]], [1], [150, 150, 850, 1450]),
    ]
    for points, labels, box in prompts:
        prompt = validate_prompt(rg1.rows, rg1.columns, points=points, labels=labels, box=box,
                                 mask_input=previous)
        feeds = sam.decoder_feeds(embedding, prompt, (rg1.rows, rg1.columns))
        if previous is not None:
            feeds["mask_input"], feeds["has_mask_input"] = prompt.mask_input, np.ones(1, dtype=np.float32)
        masks, scores, low_res = session.run(None, feeds)
        assert masks.shape == (1, 4, rg1.rows, rg1.columns) and scores.shape == (1, 4)
        with torch.no_grad():
            reference_masks, reference_scores, reference_low = predictor.predict(
                point_coords=None if points is None else np.asarray(points, dtype=np.float64),
                point_labels=None if labels is None else np.asarray(labels),
                box=None if box is None else np.asarray(box, dtype=np.float64),
                mask_input=None if previous is None else previous[0],
                multimask_output=True, return_logits=True)
        # Untrained logits are small (|x| < 1): compare them, not thresholded masks.
        scale = np.abs(reference_masks).max()
        assert np.abs(masks[0, 1:] - reference_masks).max() < 1e-4 * max(scale, 1.0)
        assert np.abs(scores[0, 1:] - reference_scores).max() < 1e-5
        assert np.abs(low_res[0, 1:] - reference_low).max() < 1e-4
        previous = low_res[:, 1:2]

    # Index 0 is the single-mask output (MaskDecoder's slice 0:1).
    prompt = validate_prompt(rg1.rows, rg1.columns, points=[[440, 800]])
    masks, scores, _ = session.run(None, sam.decoder_feeds(embedding, prompt, (rg1.rows, rg1.columns)))
    with torch.no_grad():
        single, single_score, _ = predictor.predict(point_coords=np.array([[440.0, 800.0]]), point_labels=np.array([1]),
                                                    multimask_output=False, return_logits=True)
    assert np.abs(masks[0, 0] - single[0]).max() < 1e-4 and abs(scores[0, 0] - single_score[0]) < 1e-5


def test_export_leaves_the_shared_model_in_eval_mode(torch_sam: torch.nn.Module, tmp_path: Path) -> None:
    """torch.onnx.export restores train/eval flags: a train-mode wrapper would flip the encoder."""
    example = torch.zeros(1, 3, sam.LONG_SIDE, sam.LONG_SIDE)
    with torch.no_grad():
        before = torch_sam.image_encoder(example)
    sam.export_decoder(torch_sam, tmp_path / "decoder.onnx")
    assert not any(module.training for module in torch_sam.modules())
    with torch.no_grad():
        after = torch_sam.image_encoder(example)
    assert torch.equal(before, after)


def test_manifest_entries_are_valid_and_record_the_int8_decision(sam_pack: Path) -> None:
    manifest = _manifest(sam_pack)
    jsonschema.validate(manifest, manifest_schema())
    assert manifest["components"] == ["sam"] and manifest["trained"] is False
    assert all(row["ok"] for row in ModelPack.load(sam_pack).verify())
    files = {e["file"] for e in manifest["models"]}
    assert {p.relative_to(sam_pack).as_posix() for p in (sam_pack / "sam").iterdir()} == files

    for task in SAM_TASKS:
        entries = _entries(sam_pack, task)
        assert "fp32" in entries and set(entries) <= {"fp32", "int8"}
        assert sum(bool(e["default"]) for e in entries.values()) == 1
        for entry in entries.values():
            assert entry["trained"] is False and entry["upstream"]["weights"] is None
            assert entry["benchmark"]["median_ms"] > 0
        kept = "int8" in entries
        record = entries["int8" if kept else "fp32"]["quantization"]
        assert record["int8_kept"] is kept
        assert (record if kept else record["candidate"])["method"] == "dynamic"
        qualifies = record["speedup"] >= sam.SPEEDUP_LIMIT and record["iou_min"] >= sam.IOU_LIMIT
        assert kept is qualifies, record
        assert entries["int8"]["default"] if kept else entries["fp32"]["default"]
        assert record["parity_prompts"] == len(sam.PARITY_PROMPTS) * 2
        assert 0.0 <= record["iou_min"] <= record["iou_mean"] <= 1.0
        assert record["fp32_median_ms"] > 0 and record["int8_median_ms"] > 0
        if not kept:
            assert record["reason"]

    encoder = _entries(sam_pack, "sam_encoder")["fp32"]
    spec = encoder["input"]
    assert spec["shape"] == [1, 3, 1024, 1024] and spec["long_side"] == 1024
    assert spec["pixel_mean"] == sam.PIXEL_MEAN and spec["pixel_std"] == sam.PIXEL_STD
    assert encoder["output"]["shape"] == [1, 256, 64, 64]
    decoder = _entries(sam_pack, "sam_decoder")["fp32"]
    assert decoder["input"]["names"] == sam.DECODER_INPUTS
    assert decoder["output"]["names"] == sam.DECODER_OUTPUTS
    assert decoder["output"]["multimask_indices"] == [1, 2, 3] and decoder["output"]["single_mask_index"] == 0


def test_checkpoint_loads_and_refreshes_the_cached_attention_biases(torch_sam: torch.nn.Module,
                                                                     tmp_path: Path) -> None:
    state = {key: value.clone() for key, value in torch_sam.state_dict().items()}
    bias_keys = [key for key in state if key.endswith("attention_biases")]
    assert bias_keys
    for key in bias_keys:
        state[key] += 1.0
    torch.save(state, tmp_path / sam.WEIGHTS_FILE)
    loaded, info = sam.load_mobile_sam(tmp_path)
    assert info["trained"] is True and info["upstream_sha256"] == sha256_file(tmp_path / sam.WEIGHTS_FILE)
    assert not any(module.training for module in loaded.modules())
    attentions = [m for m in loaded.image_encoder.modules() if hasattr(m, "attention_biases")]
    assert attentions
    for attention in attentions:
        # The eval-mode cache must hold the loaded biases, not the initialisation's.
        assert torch.equal(attention.ab, attention.attention_biases[:, attention.attention_bias_idxs])


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(MedVisionError, match=sam.WEIGHTS_FILE) as err:
        sam.load_mobile_sam(tmp_path)
    assert err.value.code is ErrorCode.FILE_NOT_FOUND
