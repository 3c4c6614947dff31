"""nnU-Net v2 3D U-Net for whole-body CT (TotalSegmentator class) -> ONNX (fp32, int8 if it agrees).

Trained weights: an nnU-Net v2 result folder in the weights directory (``plans.json``,
``dataset.json``, ``fold_*/checkpoint_final.pth``; the folder itself or one folder up to
three levels below it), e.g. TotalSegmentator's 3 mm ``total`` model. The network is built
from the plans as nnU-Net builds it (``dynamic-network-architectures``), the checkpoint's
``network_weights`` loaded strictly; several folds are averaged in the graph, as nnU-Net
averages their logits.

Dev pack: ``totalseg_3mm_dev.plans.json`` (written for this project in the nnU-Net v2 plans
format, shaped like a 3 mm whole-body CT ``3d_fullres`` configuration: 128^3 patch, six
stages, 3x3x3 kernels, CTNormalization) and ``totalseg_3mm_dev.dataset.json`` (background +
the 117 labels of TotalSegmentator v2 ``total``). The network keeps those stages, kernels,
strides and patch, with the features per stage divided by :data:`DEV_FEATURE_DIVISOR`
(32..320 -> 8..80): full width is 31 M parameters (125 MB fp32, 156 MB with int8) and its
int8 calibration and parity runs would hold several GB, too heavy for a pack CI rebuilds. nnU-Net's default initialisation,
``trained: false``.

The graph takes the normalised ``(batch, 1, z, y, x)`` patch (dynamic spatial axes,
multiples of the pooling product) and returns logits for every label. The runtime
(``engine/analysis/volume/unet.py``) does the preprocessing, sliding window and argmax from
the manifest's ``input``. int8 (static QDQ, calibrated on real CT) is kept only when it is
faster than fp32 and its label masks agree with fp32's on a whole CT (Dice >= 0.98 for every
label either finds); the entry records the figures either way.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from engine.analysis.volume.unet import TASK, UNetSpec, preprocess, segment_ct
from engine.inference.modelpack import sha256_file
from models.nnunet_plans import (
    ResultFolder,
    ResultFolderError,
    UNetConfiguration,
    build_network,
    configuration,
    find_result_folder,
    input_channels,
    label_map,
    load_weights,
    read_result_folder,
)
from models.onnx_tools import cpu_session, export_onnx_graph, quantize_qdq

if TYPE_CHECKING:
    from models.context import BuildContext

log = logging.getLogger(__name__)

DEV_PLANS = Path(__file__).with_name("totalseg_3mm_dev.plans.json")
DEV_DATASET = Path(__file__).with_name("totalseg_3mm_dev.dataset.json")
DEV_MODEL_ID = "nnunet-ct-3mm-dev"
DEV_FEATURE_DIVISOR = 4
SEED = 0
FOLDER = "segment3d"
#: The axes TotalSegmentator feeds nnU-Net: the voxels of an ``as_closest_canonical`` (RAS) NIfTI.
ORIENTATION = "RAS"
DICE_LIMIT = 0.98
#: Real CT for int8 calibration and the fp32/int8 agreement check (the repository's sibling
#: ``shared/data``, or ``MEDVISION_CT_CALIBRATION``); without one int8 is not built.
CT_ENV = "MEDVISION_CT_CALIBRATION"
CT_DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct" / "example_ct.nii.gz"
CALIBRATION_CROP = 64


class FoldEnsemble(nn.Module):
    """The mean of the folds' logits (nnU-Net's ensembling of ``fold_*``), as one graph."""

    def __init__(self, networks: list[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(networks)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # noqa: D102
        total = self.folds[0](image)
        for network in self.folds[1:]:
            total = total + network(image)
        return total / len(self.folds) if len(self.folds) > 1 else total


def export_network(network: nn.Module, config: UNetConfiguration, path: Path) -> torch.Tensor:
    """Export to ONNX with dynamic batch and spatial axes; returns the (smallest useful) example it traced."""
    small = torch.zeros((1, 1, *config.divisor), dtype=torch.float32).repeat(1, 1, 2, 2, 2)
    axes = {2: "z", 3: "y", 4: "x"}
    with warnings.catch_warnings():
        # InstanceNorm's shape checks read sizes as Python values: constants of the traced graph, which
        # holds for any spatial size (the channel count is fixed); it also exports as instance statistics,
        # which is what nnU-Net's InstanceNorm computes at inference too.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*operator 'instance_norm' is set to train=True", category=UserWarning)
        export_onnx_graph(network, (small,), path, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"} | axes, "logits": {0: "batch"} | axes})
    return small


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.") or "model"


def dev_result(divisor: int = DEV_FEATURE_DIVISOR) -> tuple[dict, dict]:
    """The dev plans (features per stage divided by ``divisor``) and dataset."""
    plans = json.loads(DEV_PLANS.read_text())
    dataset = json.loads(DEV_DATASET.read_text())
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [f // divisor for f in kwargs["features_per_stage"]]
    return plans, dataset


def load_unet(weights_dir: Path | None, *, divisor: int = DEV_FEATURE_DIVISOR,
              ) -> tuple[nn.Module, UNetConfiguration, dict[int, str], dict]:
    """The network (eval mode), its configuration, the label map and provenance for the manifest.

    ``divisor`` shrinks the dev network only (1: the dev plans' full width, for benchmarks).
    """
    if weights_dir is None:
        plans, dataset = dev_result(divisor)
        config = configuration(plans, "3d_fullres")
        labels = label_map(dataset)
        torch.manual_seed(SEED)
        network = build_network(config, input_channels(dataset), len(labels))
        return network, config, labels, {
            "trained": False, "upstream_sha256": None, "model_id": DEV_MODEL_ID, "dataset_name": plans["dataset_name"],
            "init": f"untrained: nnU-Net's default initialisation (InitWeights_He via the network's initialize, "
                    f"seed {SEED})",
            "trainer": None, "folds": [], "mirroring_axes": None,
            "shrunk": {"features_per_stage_divided_by": divisor,
                       "features_per_stage": config.arch_kwargs["features_per_stage"],
                       "plans_features_per_stage": json.loads(DEV_PLANS.read_text())["configurations"]["3d_fullres"]
                       ["architecture"]["arch_kwargs"]["features_per_stage"],
                       "kept": "stages, kernel sizes, strides, convolutions per stage, patch size, normalisation"},
        }
    folder = find_result_folder(weights_dir)
    if folder is None:
        raise FileNotFoundError("no nnU-Net v2 result folder (plans.json, dataset.json, fold_*/checkpoint_final.pth) "
                                "in the weights directory")
    result: ResultFolder = read_result_folder(folder)
    config = configuration(result.plans, result.configuration_name)
    labels = label_map(result.dataset)
    channels = input_channels(result.dataset)
    if channels != 1 or config.normalization_schemes != ("CTNormalization",):
        raise ResultFolderError("plans.json", f"not a single-channel CT model (channels {channels}, "
                                              f"normalisation {list(config.normalization_schemes)})")
    networks = []
    for fold, checkpoint in result.checkpoints.items():
        network = build_network(config, channels, len(labels))
        load_weights(network, checkpoint, f"{fold}/{result.files[fold].name}")
        networks.append(network.eval())
    first = next(iter(result.checkpoints.values()))
    digest = sha256_file(next(iter(result.files.values()))) if len(result.files) == 1 else \
        {fold: sha256_file(path) for fold, path in result.files.items()}
    mirroring = first.get("inference_allowed_mirroring_axes")
    return (networks[0] if len(networks) == 1 else FoldEnsemble(networks)).eval(), config, labels, {
        "trained": True, "upstream_sha256": digest if isinstance(digest, str) else None, "fold_sha256": digest,
        "model_id": f"nnunet-{_slug(result.plans.get('dataset_name', folder.name))}",
        "dataset_name": result.plans.get("dataset_name", folder.name),
        "init": f"nnU-Net v2 checkpoint(s) {', '.join(f'{f}/{p.name}' for f, p in result.files.items())}",
        "trainer": result.trainer_name, "folds": list(result.files),
        "mirroring_axes": list(mirroring) if mirroring is not None else None, "shrunk": None,
    }


def ct_volume() -> tuple[np.ndarray, tuple[float, float, float], str] | None:
    """The calibration CT as ``(hu (z, y, x), spacing_zyx, orientation)``, or None when there is none."""
    path = Path(os.environ.get(CT_ENV) or CT_DEFAULT)
    if not path.is_file():
        return None
    import nibabel as nib

    image = nib.load(str(path))
    hu = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)
    spacing = tuple(float(v) for v in image.header.get_zooms()[:3])[::-1]
    return np.ascontiguousarray(hu), spacing, "".join(nib.aff2axcodes(image.affine))


def calibration_crops(image: np.ndarray, crop: int = CALIBRATION_CROP) -> np.ndarray:
    """Three ``crop``^3 windows of a normalised network-grid image (centre, two opposite corners)."""
    padded = np.pad(image, [(0, max(0, crop - s)) for s in image.shape], mode="constant")
    centre = [max(0, (s - crop) // 2) for s in padded.shape]
    ends = [s - crop for s in padded.shape]
    boxes = [centre, [0, 0, 0], ends]
    return np.stack([padded[z:z + crop, y:y + crop, x:x + crop][None] for z, y, x in boxes]).astype(np.float32)


def quantize(fp32_path: Path, int8_path: Path, image: np.ndarray) -> dict:
    """Static QDQ int8 of the exported U-Net, calibrated on crops of a normalised network-grid CT."""
    return quantize_qdq(fp32_path, int8_path, calibration_crops(image), input_name="image", symbolic_shapes=False)


class OrtRunner:
    """An ORT session as the runtime's ``PatchModel``."""

    def __init__(self, path: Path, threads: int) -> None:
        self.session = cpu_session(path, threads)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:  # noqa: D102
        return self.session.run(None, feeds)


def dice_per_label(reference: np.ndarray, candidate: np.ndarray, count: int) -> dict[int, float]:
    """Dice of two label maps for every label (>= 1) that either holds."""
    out = {}
    for label in range(1, count):
        a, b = reference == label, candidate == label
        total = int(a.sum()) + int(b.sum())
        if total:
            out[label] = round(2.0 * int(np.logical_and(a, b).sum()) / total, 4)
    return out


def export_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """How closely exported logits follow the torch network's: max |diff|, and argmax agreement
    where the reference's top two classes are further apart than that difference (untrained
    logits tie often, and a tie may break either way)."""
    diff = float(np.abs(candidate - reference).max())
    top2 = np.sort(reference, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2 * diff
    same = candidate.argmax(1) == reference.argmax(1)
    return {"max_abs_diff_vs_torch": diff, "argmax_agreement": round(float(same.mean()), 6),
            "argmax_equal_where_decided": bool(same[decided].all()), "decided_fraction": round(float(decided.mean()), 6)}


def entry_common(config: UNetConfiguration, labels: dict[int, str], info: dict) -> dict[str, Any]:
    properties = config.intensity_properties.get("0") or {}
    names = [labels[i] for i in range(len(labels))]
    return {
        "task": TASK,
        "architecture": f"nnU-Net v2 {config.network_class_name.rsplit('.', 1)[-1]} ({config.arch_kwargs['n_stages']} stages, "
                        f"features {config.arch_kwargs['features_per_stage']}, {len(names)} outputs)",
        "format": "onnx",
        "trained": info["trained"],
        "version": f"nnunetv2-plans-{config.name}",
        "input": {
            "name": "image", "shape": ["batch", 1, "z", "y", "x"], "dtype": "float32", "axes": "zyx",
            "patch_size": list(config.patch_size), "spacing_mm": list(config.spacing),
            "divisor": list(config.divisor), "orientation": ORIENTATION,
            "transpose_forward": list(config.transpose_forward),
            "preprocessing": "nnunet_ct: reorient, transpose_forward, resample (cubic), CTNormalization",
            "normalization": {"scheme": "CTNormalization", "mean": properties.get("mean"), "std": properties.get("std"),
                              "percentile_00_5": properties.get("percentile_00_5"),
                              "percentile_99_5": properties.get("percentile_99_5")},
        },
        "output": {"name": "logits", "shape": ["batch", len(names), "z", "y", "x"], "activation": "softmax",
                   "decision": "argmax", "label_map": {str(i): n for i, n in labels.items()},
                   "sliding_window": {"step": 0.5, "gaussian_sigma_scale": 0.125, "mirroring": False}},
        "labels": names,
        "thresholds": None,
        "upstream": {"name": "nnU-Net v2 result folder" if info["trained"] else "MedVision dev plans (nnU-Net v2 format)",
                     "weights": ", ".join(info["folds"]) or None, "sha256": info["upstream_sha256"],
                     "package": "dynamic-network-architectures", "license": "Apache-2.0"},
        "parameters": {"init": info["init"], "dataset_name": info["dataset_name"], "configuration": config.name,
                       "trainer": info["trainer"], "folds": info["folds"], "fold_sha256": info.get("fold_sha256"),
                       "inference_allowed_mirroring_axes": info["mirroring_axes"], "shrunk": info["shrunk"],
                       "arch_kwargs": config.arch_kwargs, "network_class_name": config.network_class_name},
    }


def _timed_segmentation(runner: OrtRunner, spec: dict, ct: tuple) -> tuple[np.ndarray, float]:
    hu, spacing, orientation = ct
    start = time.perf_counter()
    result = segment_ct(hu, spacing, model=runner, spec=spec, orientation=orientation)
    return result.label_map, time.perf_counter() - start


def build(context: BuildContext) -> list[dict]:
    """Export fp32 (+ int8 when it qualifies) into ``out_dir/segment3d``; return the manifest entries."""
    started = time.perf_counter()
    network, config, labels, info = load_unet(context.weights_dir)
    folder = context.out_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    model_id = info["model_id"]
    fp32_path, int8_path = folder / f"{model_id}.fp32.onnx", folder / f"{model_id}.int8.onnx"
    small = export_network(network, config, fp32_path)
    exported = time.perf_counter()

    common = entry_common(config, labels, info)
    # ONNX Runtime against the network itself on a small random patch: the export is faithful.
    probe = torch.from_numpy(np.random.default_rng(SEED).standard_normal((1, 1, *small.shape[2:]), dtype=np.float32))
    with torch.no_grad():
        reference = network(probe).numpy()
    fp32_runner = OrtRunner(fp32_path, context.threads)
    exported_logits = fp32_runner.run({"image": probe.numpy()})[0]
    export_parity = export_agreement(reference, exported_logits) | {"probe_shape": list(probe.shape)}
    bench = {"threads": context.threads, "export_s": round(exported - started, 1)}
    fp32_entry = common | {"id": f"{model_id}-fp32", "file": f"{FOLDER}/{fp32_path.name}", "precision": "fp32",
                           "default": True, "benchmark": bench}
    fp32_entry["parameters"] = fp32_entry["parameters"] | {"export_parity": export_parity}

    ct = ct_volume()
    if ct is None:
        fp32_entry["quantization"] = {"int8_kept": False, "reason": f"no CT volume to calibrate on ({CT_ENV} unset and "
                                                                    "no shared/data/ct/example_ct.nii.gz)"}
        bench["build_s"] = round(time.perf_counter() - started, 1)
        return [fp32_entry]
    spec = fp32_entry | {"sha256": None}
    image, _ = preprocess(ct[0], ct[1], UNetSpec.from_manifest(spec), ct[2])
    recipe = quantize(fp32_path, int8_path, image)
    quantized = time.perf_counter()
    labels32, seconds32 = _timed_segmentation(fp32_runner, spec | {"precision": "fp32"}, ct)
    labels8, seconds8 = _timed_segmentation(OrtRunner(int8_path, context.threads), spec | {"precision": "int8"}, ct)
    dice = dice_per_label(labels32, labels8, len(labels))
    worst = min(dice, key=dice.get) if dice else None
    faster = round(seconds8, 2) < round(seconds32, 2)
    agrees = all(v >= DICE_LIMIT for v in dice.values())
    keep = faster and agrees
    parity = {
        "rule": f"int8 is kept (and the default) only if faster than fp32 on a whole CT and the Dice of its label "
                f"masks against fp32 is >= {DICE_LIMIT} for every label either finds",
        "ct_source": Path(os.environ.get(CT_ENV) or CT_DEFAULT).name, "ct_shape_zyx": list(ct[0].shape),
        "labels_found_fp32": int(len(np.unique(labels32)) - 1), "dice_labels": len(dice),
        "dice_worst_label": labels.get(worst) if worst is not None else None,
        "dice_worst": dice.get(worst) if worst is not None else None,
        "dice_below_limit": sum(v < DICE_LIMIT for v in dice.values()), "dice_limit": DICE_LIMIT,
        "fp32_s_per_volume": round(seconds32, 2), "int8_s_per_volume": round(seconds8, 2),
        "calibration": f"{CALIBRATION_CROP}^3 crops of the normalised CT",
    }
    bench |= {"quantize_s": round(quantized - exported, 1), "fp32_s_per_volume": round(seconds32, 2),
              "build_s": round(time.perf_counter() - started, 1)}
    log.info("3D U-Net int8: fp32 %.1f s, int8 %.1f s per volume, %d/%d labels below Dice %.2f: keep int8 %s",
             seconds32, seconds8, parity["dice_below_limit"], len(dice), DICE_LIMIT, keep)
    if not keep:
        int8_path.unlink()
        reasons = [] if faster else [f"int8 not faster ({seconds8:.1f} s vs fp32 {seconds32:.1f} s per volume)"]
        if not agrees:
            reasons.append(f"label masks disagree with fp32: {parity['dice_below_limit']} of {len(dice)} labels below "
                           f"Dice {DICE_LIMIT} (worst {parity['dice_worst_label']} {parity['dice_worst']})")
        fp32_entry["quantization"] = {"int8_kept": False, "reason": "; ".join(reasons), "candidate": recipe} | parity
        return [fp32_entry]
    fp32_entry["default"] = False
    int8_entry = common | {"id": f"{model_id}-int8", "file": f"{FOLDER}/{int8_path.name}", "precision": "int8",
                           "default": True, "benchmark": bench | {"int8_s_per_volume": round(seconds8, 2)},
                           "quantization": recipe | {"int8_kept": True, "reference": f"{model_id}-fp32"} | parity}
    return [fp32_entry, int8_entry]
