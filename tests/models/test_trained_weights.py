"""The real-weights road, per model family: upstream-format checkpoint -> site pack -> same outputs.

Each test writes a checkpoint in the exact upstream format and file name (random weights,
``tests.models.checkpoints``), builds a pack of that one family with ``--weights-dir``
semantics, and checks the manifest (``trained: true``, every file's sha256, the upstream
file's sha256) and that the exported ONNX graph reproduces the upstream model loaded the
upstream way. Then the refusals: truncated, mismatched and wrong-architecture files are
refused by name and leave no pack behind.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import torchxrayvision as xrv
import transformers

from engine.analysis.classify import classify, op_norm
from engine.analysis.embedding import pixel_values
from engine.analysis.interactive import rgb_display, sam_image_tensor, validate_prompt
from engine.analysis.preprocess import classifier_tensor, xrv_tensor
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import DecodedImage, decode_image
from engine.inference.modelpack import ModelPack, manifest_schema, sha256_file
from engine.inference.registry import ModelRegistry
from models import classifier, embedding, llm, sam, segmentation
from models.onnx_tools import cpu_session
from models.pack import build_pack
from tests.fs import link_or_copy, linked_copy
from tests.models import checkpoints

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from mobile_sam import SamPredictor, sam_model_registry


@pytest.fixture(scope="module")
def radiographs() -> list[DecodedImage]:
    """Two real chest radiographs of pydicom-data (the same ones the builder calibrates on)."""
    from pydicom.data import get_testdata_file

    return [decode_image(Path(get_testdata_file(name))) for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm")]


def _check_trained_manifest(pack: Path, manifest: dict, upstream: dict[str, Path]) -> list[dict]:
    """``trained: true`` everywhere, every file's sha256 and size, each upstream file's sha256."""
    jsonschema.validate(manifest, manifest_schema())
    assert manifest["trained"] is True and manifest["name"] == "site"
    assert manifest == json.loads((pack / "manifest.json").read_text())
    for entry in manifest["models"]:
        assert entry["trained"] is True, entry["id"]
        assert entry["sha256"] == sha256_file(pack / entry["file"]), entry["id"]
        assert entry["size_bytes"] == (pack / entry["file"]).stat().st_size
        weights = entry["upstream"]["weights"]
        assert weights in upstream, (entry["id"], weights)
        assert entry["upstream"]["sha256"] == sha256_file(upstream[weights])
        assert "untrained" not in entry.get("parameters", {}).get("init", "")
    loaded = ModelPack.load(pack)
    assert loaded.trained and all(row["ok"] for row in loaded.verify())
    assert sorted(p.name for p in pack.parent.iterdir() if p.name.startswith(".")) == []  # no staging left
    return manifest["models"]


def _assert_same_masks(logits: np.ndarray, reference: np.ndarray, cut: float) -> None:
    """Masks ``logits > cut`` equal upstream's, but where upstream's logit is within float32
    rounding of the cut (two fp32 engines sum in different orders; a random network has
    a few boundary pixels whose logit is ~1e-6 from the threshold)."""
    scale = max(1.0, float(np.abs(reference).max()))
    assert np.abs(logits - reference).max() <= 1e-3 * scale, float(np.abs(logits - reference).max())
    ours, expected = logits > cut, reference > cut
    assert 0 < expected.sum() < expected.size  # masks with both classes, not a constant output
    differ = ours != expected
    assert np.all(np.abs(reference[differ] - cut) <= 1e-3 * scale), np.abs(reference[differ] - cut).max()
    assert differ.sum() <= 1e-5 * differ.size, int(differ.sum())


def _fp32(manifest: dict, task: str) -> dict:
    return next(e for e in manifest["models"] if e["task"] == task and e["precision"] == "fp32")


@pytest.fixture(scope="module")
def classifier_site(tmp_path_factory: pytest.TempPathFactory, radiographs: list[DecodedImage]) -> tuple[Path, Path]:
    """(weights dir, site pack) of the classifier family, built once for this module."""
    root = tmp_path_factory.mktemp("classifier")
    weights, out = root / "weights", root / "packs" / "site"
    calibration = np.concatenate([classifier_tensor(d, classifier.RESOLUTION) for d in radiographs])
    checkpoints.write_xrv_densenet(weights, calibration)
    build_pack(out, dev=False, weights_dir=weights, components=[classifier.build])
    return weights, out


def test_classifier_checkpoint_builds_a_trained_pack_equal_to_torchxrayvision(
        tmp_path: Path, classifier_site: tuple[Path, Path], radiographs: list[DecodedImage]) -> None:
    weights, out = classifier_site
    checkpoint = weights / classifier.upstream_file_name()
    assert checkpoint.name == ("nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-"
                               "seed0-best.pt")
    manifest = json.loads((out / "manifest.json").read_text())
    entries = _check_trained_manifest(out, manifest, {checkpoint.name: checkpoint})
    assert {e["precision"] for e in entries} == {"fp32", "int8"}
    op_threshs = [float(t) for t in xrv.models.model_urls["densenet121-res224-all"]["op_threshs"]]
    assert all(e["thresholds"] == op_threshs and e["output"]["calibration"] == "op_norm" for e in entries)

    # torchxrayvision's own loader (the file is there, so nothing is downloaded); its
    # forward applies sigmoid + op_norm with the operating points of these weights.
    upstream = xrv.models.DenseNet(weights="densenet121-res224-all", cache_dir=str(weights)).eval()
    registry = ModelRegistry(Settings(home=tmp_path / "home", model_pack=out, threads=2, precision="fp32"))
    for decoded in radiographs:
        result = classify(decoded, registry, force=True)  # RG3 is a tibia: the model runs all the same
        assert result["model_trained"] is True and result["calibration"] == "op_norm"
        assert result["model"]["id"] == "densenet121-res224-all-fp32"
        with torch.no_grad():
            expected = upstream(torch.from_numpy(classifier_tensor(decoded, 224)))[0].numpy()
        found = {f["label"]: f for f in result["findings"]}
        got = np.array([found[label]["probability"] for label in upstream.targets])
        raw = np.array([found[label]["raw_probability"] for label in upstream.targets])
        max_dp = float(np.abs(got - expected).max())
        assert max_dp <= 1e-4, max_dp
        # The runtime's probabilities are op_norm of the sigmoid, not the sigmoid itself.
        assert np.allclose(got, op_norm(raw, op_threshs), atol=2e-6)
        assert np.abs(got - raw).max() > 0.05
        assert len(set(np.round(expected, 3))) > 9  # spread outputs, not a saturated network


def test_trained_classifier_pack_shows_no_banner_and_normalises_at_operating_points(
        tmp_path: Path, classifier_site: tuple[Path, Path], rg1_path: Path) -> None:
    """The engine end to end on a trained pack: no untrained banner, op_norm applied."""
    from engine.api import Engine

    out = linked_copy(classifier_site[1], tmp_path / "site", writable=["manifest.json"])
    manifest = json.loads((out / "manifest.json").read_text())
    # Known operating points: label i sits at t_i, so p < t maps to p / 2t and p >= t to 1 - (1-p) / 2(1-t).
    known = [0.01 * (i + 1) for i in range(18)]
    for entry in manifest["models"]:
        entry["thresholds"] = known
    (out / "manifest.json").write_text(json.dumps(manifest))
    with Engine(home=tmp_path / "home", model_pack=out) as engine:
        assert engine.model_status()["pack"]["trained"] is True  # the desktop hides its banner on this
        session = engine.create_study_session("site pack", {})
        analysis = engine.add_image_to_session(session["session_id"], rg1_path)["auto_analysis"]
    assert analysis["model_trained"] is True and "banner" not in analysis
    classification = analysis["classification"]
    assert classification["calibration"] == "op_norm" and classification["model"]["trained"] is True
    labels = manifest["models"][0]["labels"]
    for finding in classification["findings"]:
        p, t = finding["raw_probability"], known[labels.index(finding["label"])]
        expected = p / (2 * t) if p < t else 1.0 - (1.0 - p) / (2 * (1.0 - t))
        assert abs(finding["probability"] - expected) <= 2e-6, finding


def test_pspnet_checkpoint_builds_a_trained_pack_whose_masks_equal_torchxrayvision(
        tmp_path: Path, radiographs: list[DecodedImage]) -> None:
    weights, out = tmp_path / "weights", tmp_path / "site"
    checkpoint = checkpoints.write_pspnet(weights)
    manifest = build_pack(out, dev=False, weights_dir=weights, components=[segmentation.build])
    _check_trained_manifest(out, manifest, {checkpoint.name: checkpoint})
    entry = _fp32(manifest, "organ_seg")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # upstream's F.upsample deprecation
        upstream = xrv.baseline_models.chestx_det.PSPNet(cache_dir=str(weights)).eval()
        tensor = xrv_tensor(radiographs[0], segmentation.RESOLUTION)
        with torch.no_grad():
            reference = upstream(torch.from_numpy(tensor)).numpy()  # logits; upstream's masks are sigmoid > 0.5
    logits = cpu_session(out / entry["file"], 2).run(None, {"image": tensor})[0]
    assert logits.shape == reference.shape == (1, 14, 512, 512)
    cut = float(np.log(entry["output"]["default_threshold"] / (1 - entry["output"]["default_threshold"])))
    _assert_same_masks(logits, reference, cut)


@pytest.fixture(scope="module")
def rad_dino_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights dir holding a random-weight microsoft/rad-dino snapshot (written once: ~350 MB)."""
    weights = tmp_path_factory.mktemp("rad-dino-weights")
    checkpoints.write_rad_dino(weights)
    return weights


def test_rad_dino_snapshot_builds_a_trained_pack_equal_to_transformers(
        tmp_path: Path, rad_dino_weights: Path, radiographs: list[DecodedImage]) -> None:
    weights, out = rad_dino_weights, tmp_path / "site"
    folder = weights / embedding.WEIGHTS_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    manifest = build_pack(out, dev=False, weights_dir=weights, components=[embedding.build])
    _check_trained_manifest(out, manifest, {"rad-dino/model.safetensors": folder / "model.safetensors"})
    entry = _fp32(manifest, "embed")

    upstream = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    session = cpu_session(out / entry["file"], 2)
    for decoded in radiographs:
        tensor = pixel_values(decoded.display(), entry["input"])
        with torch.no_grad():
            reference = upstream(pixel_values=torch.from_numpy(tensor)).pooler_output.numpy()[0]
        ours = session.run(None, {"pixel_values": tensor})[0][0]
        cosine = float(ours @ reference / (np.linalg.norm(ours) * np.linalg.norm(reference)))
        assert cosine >= 0.9999, cosine


def test_mobile_sam_checkpoint_builds_a_trained_pack_whose_masks_equal_mobile_sam(
        tmp_path: Path, radiographs: list[DecodedImage]) -> None:
    weights, out = tmp_path / "weights", tmp_path / "site"
    checkpoint = checkpoints.write_mobile_sam(weights)
    manifest = build_pack(out, dev=False, weights_dir=weights, components=[sam.build])
    _check_trained_manifest(out, manifest, {checkpoint.name: checkpoint})
    encoder = cpu_session(out / _fp32(manifest, "sam_encoder")["file"], 2)
    decoder = cpu_session(out / _fp32(manifest, "sam_decoder")["file"], 2)

    # MobileSAM's README: sam_model_registry[...](checkpoint=...), then .eval(), then SamPredictor.
    upstream = sam_model_registry[sam.MODEL_TYPE](checkpoint=str(checkpoint)).eval()
    predictor = SamPredictor(upstream)
    decoded = radiographs[0]
    image = rgb_display(decoded)
    with torch.no_grad():
        predictor.set_image(image)
    tensor, _ = sam_image_tensor(image, _fp32(manifest, "sam_encoder")["input"])
    embedding_ = encoder.run(None, {"image": tensor})[0]
    size = (decoded.rows, decoded.columns)
    for points, labels, box in (([[440, 800]], [1], None), ([[440, 800], [1300, 700]], [1, 0], None),
                                (None, None, [150, 150, 850, 1450])):
        prompt = validate_prompt(decoded.rows, decoded.columns, points=points, labels=labels, box=box)
        masks, _, _ = decoder.run(None, sam.decoder_feeds(embedding_, prompt, size))
        with torch.no_grad():
            expected, _, _ = predictor.predict(
                point_coords=None if points is None else np.asarray(points, dtype=np.float64),
                point_labels=None if labels is None else np.asarray(labels),
                box=None if box is None else np.asarray(box, dtype=np.float64), multimask_output=True,
                return_logits=True)  # SamPredictor's masks are these logits > mask_threshold
        assert masks[0, 1:].shape == expected.shape == (3, decoded.rows, decoded.columns)
        _assert_same_masks(masks[0, 1:], expected, upstream.mask_threshold)


def test_gguf_and_mmproj_build_a_trained_vlm_pack(tmp_path: Path, llm_pack: Path) -> None:
    weights, out = tmp_path / "weights", tmp_path / "site"
    (weights / "llm").mkdir(parents=True)
    model = weights / "llm" / "site-model-q4_k_m.gguf"
    link_or_copy(llm_pack / "llm" / llm.FILE_NAME, model)
    projector = checkpoints.write_projector(weights / "llm" / "site-model-mmproj-f16.gguf")
    manifest = build_pack(out, dev=False, weights_dir=weights, components=[llm.build])
    entries = {e["task"]: e for e in _check_trained_manifest(out, manifest, {model.name: model,
                                                                             projector.name: projector})}
    assert set(entries) == {"llm", "vlm_mmproj"}
    assert entries["llm"]["sha256"] == sha256_file(model) and entries["vlm_mmproj"]["sha256"] == sha256_file(projector)
    assert entries["vlm_mmproj"]["parameters"]["model"] == entries["llm"]["id"] == "site-model-q4_k_m"
    assert entries["vlm_mmproj"]["precision"] == "f16"
    runtime = ModelRegistry(Settings(home=tmp_path / "home", model_pack=out, threads=1)).llm()
    assert runtime is not None and runtime.supports_images and not runtime.loaded
    assert runtime.describe()["mmproj"] == "site-model-q4_k_m-mmproj"

    (weights / "llm" / "second.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="several GGUF models"):
        llm.find_weights(weights)


# -- refusals ---------------------------------------------------------------------------------


def _refused(tmp_path: Path, weights: Path, component, named: str, code: ErrorCode = ErrorCode.MODEL_LOAD_ERROR,
             *, existing: bool = False) -> MedVisionError:
    """Build into a fresh (or an existing) pack dir; assert the coded refusal and an untouched disk."""
    parent = tmp_path / "packs"
    parent.mkdir(exist_ok=True)
    out = parent / "site"
    if existing:
        out.mkdir()
        (out / "manifest.json").write_text('{"kept": true}\n')
    before = sorted(p.relative_to(parent).as_posix() for p in parent.rglob("*"))
    with pytest.raises(MedVisionError) as err:
        build_pack(out, dev=False, weights_dir=weights, components=[component])
    assert err.value.code is code, err.value
    assert named in err.value.message and err.value.details.get("file") == named, err.value.message
    assert str(tmp_path) not in err.value.message
    assert sorted(p.relative_to(parent).as_posix() for p in parent.rglob("*")) == before  # nothing half-built
    if existing:
        assert (out / "manifest.json").read_text() == '{"kept": true}\n'
    return err.value


@pytest.fixture(scope="module")
def densenet_file(tmp_path_factory: pytest.TempPathFactory, radiographs: list[DecodedImage]) -> Path:
    calibration = classifier_tensor(radiographs[0], classifier.RESOLUTION)
    return checkpoints.write_xrv_densenet(tmp_path_factory.mktemp("densenet"), calibration)


def test_truncated_densenet_is_refused_and_the_existing_pack_kept(tmp_path: Path, densenet_file: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    checkpoints.truncate(Path(shutil.copy(densenet_file, weights / densenet_file.name)))
    error = _refused(tmp_path, weights, classifier.build, densenet_file.name, existing=True)
    assert "DenseNet" in error.message


def test_densenet_with_another_head_is_refused(tmp_path: Path, radiographs: list[DecodedImage]) -> None:
    weights = tmp_path / "weights"
    checkpoints.write_xrv_densenet(weights, classifier_tensor(radiographs[0], 224), num_classes=14)
    error = _refused(tmp_path, weights, classifier.build, classifier.upstream_file_name())
    assert "size mismatch" in error.message


def test_a_state_dict_in_place_of_the_pickled_densenet_is_refused(tmp_path: Path, densenet_file: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(torch.load(densenet_file, weights_only=False).state_dict(), weights / densenet_file.name)
    _refused(tmp_path, weights, classifier.build, densenet_file.name)


@pytest.mark.parametrize("damage", ["truncated", "densenet", "shapes", "no_prefix"])
def test_a_bad_pspnet_file_is_refused_by_name(tmp_path: Path, densenet_file: Path, damage: str) -> None:
    weights = tmp_path / "weights"
    if damage == "truncated":
        checkpoints.truncate(checkpoints.write_pspnet(weights), 0.3)
    elif damage == "densenet":  # another architecture's state dict under the PSPNet file name
        state = torch.load(densenet_file, weights_only=False).state_dict()
        checkpoints.write_pspnet(weights, {f"module.{k}": v for k, v in state.items()})
    elif damage == "shapes":  # the PSPNet with a 3-label head
        state = checkpoints.pspnet_state()
        head = [k for k in state if k.startswith("module.classification.")]
        checkpoints.write_pspnet(weights, state | {k: state[k][:3] for k in head})
    else:  # saved without DataParallel: the keys torchxrayvision's loader expects are not there
        checkpoints.write_pspnet(weights, {k[len("module."):]: v for k, v in checkpoints.pspnet_state().items()})
    _refused(tmp_path, weights, segmentation.build, segmentation.WEIGHTS_FILE)


@pytest.mark.parametrize("damage", ["truncated", "missing_tensors", "config"])
def test_a_bad_rad_dino_snapshot_is_refused_by_name(tmp_path: Path, rad_dino_weights: Path, damage: str) -> None:
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "weights"
    if damage == "config":  # a ViT-S/14 snapshot: its own weights are fine, the architecture is not
        checkpoints.write_rad_dino(weights, hidden_size=384, num_attention_heads=6, num_hidden_layers=2)
        error = _refused(tmp_path, weights, embedding.build, "rad-dino/config.json")
        assert "hidden_size=384" in error.message
        return
    folder = Path(shutil.copytree(rad_dino_weights / embedding.WEIGHTS_FOLDER, weights / embedding.WEIGHTS_FOLDER))
    tensors = folder / "model.safetensors"
    if damage == "truncated":
        checkpoints.truncate(tensors)
    else:  # the last encoder layer absent: transformers alone would initialise it at random
        state = {k: v for k, v in load_file(tensors).items() if ".layer.11." not in k}
        save_file(state, tensors, metadata={"format": "pt"})
    error = _refused(tmp_path, weights, embedding.build, "rad-dino/model.safetensors")
    if damage == "missing_tensors":
        assert "missing keys" in error.message


@pytest.mark.parametrize("damage", ["truncated", "shapes", "pspnet"])
def test_a_bad_mobile_sam_file_is_refused_by_name(tmp_path: Path, damage: str) -> None:
    weights = tmp_path / "weights"
    if damage == "truncated":
        checkpoints.truncate(checkpoints.write_mobile_sam(weights))
    elif damage == "shapes":
        state = checkpoints.mobile_sam_state()
        key = "mask_decoder.iou_prediction_head.layers.2.weight"
        checkpoints.write_mobile_sam(weights, state | {key: state[key][:2]})
    else:
        checkpoints.write_mobile_sam(weights, checkpoints.pspnet_state())
    _refused(tmp_path, weights, sam.build, sam.WEIGHTS_FILE)


@pytest.mark.parametrize("damage", ["truncated_projector", "not_a_projector", "truncated_model"])
def test_a_bad_gguf_is_refused_by_name(tmp_path: Path, llm_pack: Path, damage: str) -> None:
    weights = tmp_path / "weights"
    (weights / "llm").mkdir(parents=True)
    model = weights / "llm" / "site-model-q4_k_m.gguf"
    projector = weights / "llm" / "site-model-mmproj-f16.gguf"
    source = llm_pack / "llm" / llm.FILE_NAME
    if damage == "truncated_model":
        with open(source, "rb") as handle:  # the header and tokenizer, then the weights cut off
            model.write_bytes(handle.read(16 * 1024 * 1024))
        named = model.name
    else:
        link_or_copy(source, model)
        checkpoints.write_projector(projector, architecture="clip" if damage == "truncated_projector" else "llama")
        if damage == "truncated_projector":
            checkpoints.truncate(projector, 0.9)
        named = "llm/" + projector.name
    _refused(tmp_path, weights, llm.build, named)


def test_a_missing_checkpoint_is_named(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    for component, named in ((classifier.build, classifier.upstream_file_name()),
                             (segmentation.build, segmentation.WEIGHTS_FILE),
                             (embedding.build, "rad-dino/config.json"), (sam.build, sam.WEIGHTS_FILE)):
        _refused(tmp_path, weights, component, named, ErrorCode.FILE_NOT_FOUND)
    assert not os.listdir(tmp_path / "packs")
