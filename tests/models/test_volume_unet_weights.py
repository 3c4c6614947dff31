"""``--weights-dir`` with an nnU-Net v2 result folder: conversion, parity with nnU-Net's own loading, refusals.

The result folder is written here the way nnU-Net v2 writes one (plans.json, dataset.json,
``fold_0/checkpoint_final.pth`` holding the trainer's checkpoint dict), with random weights
for a small plans (3 stages, features 4-16, one 128^3 window over the shared CT) so the test stays fast. The reference network is
built the way nnU-Net's predictor builds it (``pydoc.locate`` of the plans' class and
operators, ``torch.load`` of the checkpoint, ``load_state_dict``), not with the builder's code.
"""

from __future__ import annotations

import json
import pydoc
import time
from copy import deepcopy
from pathlib import Path

import nibabel as nib
import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.analysis.volume.unet import segment_ct
from engine.errors import ErrorCode, MedVisionError
from engine.inference.modelpack import ModelPack, sha256_file
from models import volume_unet
from models.nnunet_plans import configuration
from models.pack import build_pack

SHARED_CT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ct" / "example_ct.nii.gz"
LABELS = {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 4}


def tiny_plans(features=(4, 8, 16)) -> dict:
    stages = len(features)
    return {
        "dataset_name": "Dataset123_TinyCT", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 3.0, 3.0], "original_median_shape_after_transp": [40, 40, 40],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3000.0, "mean": 80.0, "median": 60.0, "min": -1024.0,
            "percentile_00_5": -900.0, "percentile_99_5": 1200.0, "std": 250.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [128, 128, 128], "median_image_size_in_voxels": [40, 40, 40],
            "spacing": [3.0, 3.0, 3.0], "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "batch_dice": False,
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": stages, "features_per_stage": list(features),
                    "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * stages,
                    "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1), "n_conv_per_stage": [2] * stages,
                    "n_conv_per_stage_decoder": [2] * (stages - 1), "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}},
    }


def nnunet_network(plans: dict, num_classes: int, deep_supervision: bool) -> torch.nn.Module:
    """What nnU-Net's get_network_from_plans does with a plans' architecture block."""
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    network = pydoc.locate(arch["network_class_name"])(input_channels=1, num_classes=num_classes,
                                                        deep_supervision=deep_supervision, **kwargs)
    network.apply(network.initialize)
    return network


def write_result_folder(root: Path, plans: dict, *, seed: int = 7) -> Path:
    """An nnU-Net v2 training output folder with one fold, as the trainer's save_checkpoint writes it."""
    dataset = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 3, "file_ending": ".nii.gz"}
    root.mkdir(parents=True)
    (root / "plans.json").write_text(json.dumps(plans, indent=2))
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    torch.manual_seed(seed)
    network = nnunet_network(plans, len(LABELS), deep_supervision=True)  # the trainer trains with it on
    with torch.no_grad():  # move the norms off their defaults so the weights are not the initialisation
        for module in network.modules():
            if isinstance(module, torch.nn.InstanceNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.41)], "ema_fg_dice": [np.float64(0.41)],
                    "dice_per_class_or_region": [[np.float64(0.4)] * 4], "train_losses": [np.float64(-0.3)],
                    "val_losses": [np.float64(-0.2)], "lrs": [0.01], "epoch_start_timestamps": [time.time()],
                    "epoch_end_timestamps": [time.time()]},
        "_best_ema": np.float64(0.41),
        "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    (root / "fold_0").mkdir()
    torch.save(checkpoint, root / "fold_0" / "checkpoint_final.pth")
    return root


def test_result_folder_converts_and_matches_nnunet(tmp_path):
    plans = tiny_plans()
    weights = write_result_folder(tmp_path / "weights" / "Dataset123_TinyCT" / "nnUNetTrainer__nnUNetPlans__3d_fullres",
                                  plans)
    out = tmp_path / "pack"
    manifest = build_pack(out, dev=False, weights_dir=tmp_path / "weights", components=[volume_unet.build])

    entries = {e["precision"]: e for e in manifest["models"]}
    fp32 = entries["fp32"]
    assert manifest["trained"] is True and fp32["trained"] is True and fp32["task"] == "segment3d"
    assert fp32["labels"] == list(LABELS) and fp32["output"]["label_map"]["4"] == "liver"
    assert fp32["input"]["patch_size"] == [128, 128, 128] and fp32["input"]["normalization"]["std"] == 250.0
    assert fp32["parameters"]["trainer"] == "nnUNetTrainer" and fp32["parameters"]["folds"] == ["fold_0"]
    assert fp32["upstream"]["sha256"] == sha256_file(weights / "fold_0" / "checkpoint_final.pth")
    assert all(row["ok"] for row in ModelPack.load(out).verify())
    # int8 was tried on the real CT and the decision recorded with its figures, kept or not
    quant = fp32.get("quantization") or entries["int8"]["quantization"]
    assert quant["ct_source"] == "example_ct.nii.gz" and "dice_below_limit" in quant

    # the network loaded the nnU-Net way (torch.load + load_state_dict, deep supervision off)
    checkpoint = torch.load(weights / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    reference = nnunet_network(checkpoint["init_args"]["plans"], len(LABELS), deep_supervision=False)
    reference.load_state_dict(checkpoint["network_weights"])
    reference.eval()
    probe = np.random.default_rng(3).standard_normal((1, 1, 32, 64, 32)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(probe)).numpy()
    session = ort.InferenceSession(str(out / fp32["file"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": probe})[0]
    assert got.shape == expected.shape == (1, 5, 32, 64, 32)
    assert float(np.abs(got - expected).max()) < 1e-3
    top2 = np.sort(expected, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 1e-3
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(got.argmax(1)[decided], expected.argmax(1)[decided])

    # the runtime on the real CT: masks on the input grid, per label, volumes in mL, no banner
    image = nib.load(str(SHARED_CT))
    hu = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)
    result = segment_ct(hu, (3.0, 3.0, 3.0), model=_Runner(session), spec=fp32, orientation="RAS")
    assert result.label_map.shape == hu.shape and result.trained and result.banner is None
    assert sum(s.voxels for s in result.structures) == int((result.label_map > 0).sum())
    assert all(s.volume_ml == pytest.approx(s.voxels * 27 / 1000, abs=1e-3) for s in result.structures)


class _Runner:
    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session

    def run(self, feeds):
        return self.session.run(None, feeds)


def test_old_plans_layout_reads_the_same():
    plans = tiny_plans()
    old = deepcopy(plans)
    config = old["configurations"]["3d_fullres"]
    del config["architecture"]
    config.update({"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 4, "unet_max_num_features": 16,
                   "n_conv_per_stage_encoder": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2],
                   "num_pool_per_axis": [2, 2, 2], "conv_kernel_sizes": [[3, 3, 3]] * 3,
                   "pool_op_kernel_sizes": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]})
    assert configuration(old).arch_kwargs == configuration(plans).arch_kwargs
    assert configuration(plans).divisor == (4, 4, 4)


def _refusal(tmp_path: Path, weights: Path) -> MedVisionError:
    out = tmp_path / "pack"
    with pytest.raises(MedVisionError) as err:
        build_pack(out, dev=False, weights_dir=weights, components=[volume_unet.build])
    assert not out.exists() and not list(tmp_path.glob(".pack.*")), "a failed build left files behind"
    assert err.value.code is ErrorCode.MODEL_LOAD_ERROR
    return err.value


def test_truncated_checkpoint_refused_by_name(tmp_path):
    folder = write_result_folder(tmp_path / "w", tiny_plans())
    path = folder / "fold_0" / "checkpoint_final.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    error = _refusal(tmp_path, folder)
    assert "fold_0/checkpoint_final.pth" in error.message and "not a readable nnU-Net checkpoint" in error.message


def test_checkpoint_of_another_architecture_refused_by_name(tmp_path):
    folder = write_result_folder(tmp_path / "w", tiny_plans(features=(4, 8, 16)))
    (folder / "plans.json").write_text(json.dumps(tiny_plans(features=(8, 16, 32))))
    error = _refusal(tmp_path, folder)
    assert "fold_0/checkpoint_final.pth" in error.message and "wrong shape" in error.message


def test_bare_state_dict_and_missing_dataset_refused(tmp_path):
    folder = write_result_folder(tmp_path / "w", tiny_plans())
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save(torch.load(path, weights_only=False)["network_weights"], path)
    assert "missing init_args" in _refusal(tmp_path, folder).message.replace("network_weights, ", "")
    (folder / "dataset.json").unlink()
    assert "dataset.json" in _refusal(tmp_path, folder).message
