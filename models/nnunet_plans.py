"""nnU-Net v2 result folders: read ``plans.json`` / ``dataset.json`` / ``fold_*/checkpoint_final.pth``
and build the network the way nnU-Net does (``get_network_from_plans``), with
``dynamic-network-architectures``.

Both plans layouts are read: the current one (``configurations[c]["architecture"]`` with
``network_class_name``, ``arch_kwargs`` and ``_kw_requires_import``) and the older one
(``UNet_class_name``, ``UNet_base_num_features``, ``conv_kernel_sizes``, ...), which
nnU-Net's ``ConfigurationManager`` converts the same way as :func:`architecture` does.
Only the two U-Nets nnU-Net itself plans are accepted, and only ``torch.nn`` classes for
the operator names, so a plans file cannot make the builder import anything else.
"""

from __future__ import annotations

import json
import pickle
import re
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from engine.errors import ErrorCode, MedVisionError

CHECKPOINT_NAME = "checkpoint_final.pth"
#: The network classes a plans file may name (nnU-Net's own planners use these two; the
#: residual one has lived in ``unet`` and in ``residual_unet`` across package versions).
NETWORKS: dict[str, type[nn.Module]] = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": PlainConvUNet,
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": ResidualEncoderUNet,
    "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet": ResidualEncoderUNet,
}
_OLD_NAMES = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
_TORCH_NAME = re.compile(r"^torch\.nn\.[A-Za-z0-9_.]+$")
#: What a real nnU-Net checkpoint pickles besides tensors: numpy scalars and arrays in its training
#: log, the device in init_args. Checkpoints written under numpy 1.x name ``numpy.core``.
_MULTIARRAY = np._core.multiarray  # noqa: SLF001 - the names numpy pickles its scalars and arrays under
_SAFE_GLOBALS = [np.dtype, np.ndarray, np.float64, np.float32, np.int64, np.dtypes.Float64DType,
                 np.dtypes.Float32DType, np.dtypes.Int64DType, _MULTIARRAY.scalar, _MULTIARRAY._reconstruct,
                 (_MULTIARRAY.scalar, "numpy.core.multiarray.scalar"),
                 (_MULTIARRAY._reconstruct, "numpy.core.multiarray._reconstruct"), torch.device]


class ResultFolderError(MedVisionError):
    """An nnU-Net result folder (or one file of it) that cannot be converted; the message names the file."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(ErrorCode.MODEL_LOAD_ERROR, f"nnU-Net result folder: {file}: {reason}", file=file)
        self.file = file


@dataclass(frozen=True)
class UNetConfiguration:
    """One resolved configuration of a plans file: what the network and the runtime need."""

    name: str
    network_class_name: str
    arch_kwargs: dict[str, Any]          # JSON form (operator names as strings)
    patch_size: tuple[int, ...]          # nnU-Net axis order (after transpose_forward)
    spacing: tuple[float, ...]           # mm, same order
    normalization_schemes: tuple[str, ...]
    intensity_properties: dict[str, dict[str, float]]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]

    @property
    def divisor(self) -> tuple[int, ...]:
        """Per axis, the product of the pooling strides: every input size must be a multiple of it."""
        strides = np.asarray(self.arch_kwargs["strides"], dtype=int).reshape(len(self.arch_kwargs["strides"]), -1)
        return tuple(int(v) for v in np.prod(strides, axis=0))


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; a missing or unreadable file is refused by name."""
    if not path.is_file():
        raise ResultFolderError(path.name, "not found in the nnU-Net result folder")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResultFolderError(path.name, f"unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ResultFolderError(path.name, "is not a JSON object")
    return data


def _resolve(configurations: dict, name: str, seen: tuple[str, ...] = ()) -> dict:
    """``inherits_from`` resolved the way nnU-Net's PlansManager does (child keys win)."""
    if name not in configurations:
        raise ResultFolderError("plans.json", f"has no configuration {name!r} (has {sorted(configurations)})")
    if name in seen:
        raise ResultFolderError("plans.json", f"configurations inherit in a circle: {' -> '.join((*seen, name))}")
    configuration = deepcopy(configurations[name])
    parent = configuration.get("inherits_from")
    if parent is None:
        return configuration
    return _resolve(configurations, parent, (*seen, name)) | configuration


def architecture(configuration: dict) -> dict:
    """The ``architecture`` block, rebuilt from the old plans layout when the file predates it."""
    if "architecture" in configuration:
        return configuration["architecture"]
    old_name = configuration.get("UNet_class_name")
    if old_name not in _OLD_NAMES:
        raise ResultFolderError("plans.json", f"unsupported UNet_class_name {old_name!r}")
    stages = len(configuration["n_conv_per_stage_encoder"])
    dims = len(configuration["patch_size"])
    blocks = "n_conv_per_stage" if old_name == "PlainConvUNet" else "n_blocks_per_stage"
    base, cap = configuration["UNet_base_num_features"], configuration["unet_max_num_features"]
    return {
        "network_class_name": _OLD_NAMES[old_name],
        "arch_kwargs": {
            "n_stages": stages,
            "features_per_stage": [min(base * 2 ** i, cap) for i in range(stages)],
            "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
            "kernel_sizes": deepcopy(configuration["conv_kernel_sizes"]),
            "strides": deepcopy(configuration["pool_op_kernel_sizes"]),
            blocks: deepcopy(configuration["n_conv_per_stage_encoder"]),
            "n_conv_per_stage_decoder": deepcopy(configuration["n_conv_per_stage_decoder"]),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def configuration(plans: dict, name: str = "3d_fullres") -> UNetConfiguration:
    """The resolved configuration ``name`` of a plans dict (KeyError-free: bad plans are refused by name)."""
    try:
        resolved = _resolve(plans["configurations"], name)
        arch = architecture(resolved)
        properties = plans.get("foreground_intensity_properties_per_channel",
                               plans.get("foreground_intensity_properties_by_modality", {}))
        config = UNetConfiguration(
            name=name,
            network_class_name=arch["network_class_name"],
            arch_kwargs=deepcopy(arch["arch_kwargs"]),
            patch_size=tuple(int(v) for v in resolved["patch_size"]),
            spacing=tuple(float(v) for v in resolved["spacing"]),
            normalization_schemes=tuple(resolved["normalization_schemes"]),
            intensity_properties={str(k): {p: float(v) for p, v in props.items()} for k, props in properties.items()},
            transpose_forward=tuple(int(v) for v in plans["transpose_forward"]),
            transpose_backward=tuple(int(v) for v in plans["transpose_backward"]),
        )
    except ResultFolderError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultFolderError("plans.json", f"not an nnU-Net v2 plans file ({type(exc).__name__}: {exc})") from exc
    if config.network_class_name not in NETWORKS:
        raise ResultFolderError("plans.json", f"network class {config.network_class_name!r} is not one nnU-Net plans")
    if len(config.patch_size) != 3:
        raise ResultFolderError("plans.json", f"configuration {name!r} is not 3D (patch size {config.patch_size})")
    return config


def _locate(name: str | None) -> type | None:
    if name is None:
        return None
    if not _TORCH_NAME.match(name):
        raise ResultFolderError("plans.json", f"operator {name!r} is not a torch.nn class")
    target: Any = torch
    for part in name.split(".")[1:]:
        target = getattr(target, part, None)
        if target is None:
            raise ResultFolderError("plans.json", f"operator {name!r} does not exist in this torch")
    return target


def build_network(config: UNetConfiguration, input_channels: int, num_classes: int) -> nn.Module:
    """The network nnU-Net builds for inference (``deep_supervision=False``), default-initialised."""
    kwargs = deepcopy(config.arch_kwargs)
    for key in ("conv_op", "norm_op", "dropout_op", "nonlin"):
        if key in kwargs:
            kwargs[key] = _locate(kwargs[key])
    kwargs["deep_supervision"] = False
    network = NETWORKS[config.network_class_name](input_channels=input_channels, num_classes=num_classes, **kwargs)
    if hasattr(network, "initialize"):
        network.apply(network.initialize)
    return network.eval()


def label_map(dataset: dict) -> dict[int, str]:
    """``label number -> name`` from dataset.json's ``labels`` (name -> number); background is 0."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise ResultFolderError("dataset.json", "has no 'labels' mapping with background 0")
    if "regions_class_order" in dataset:
        raise ResultFolderError("dataset.json", "region-based training (regions_class_order) is not supported")
    numbers: dict[int, str] = {}
    for name, value in labels.items():
        if not isinstance(value, int) or value < 0 or value in numbers:
            raise ResultFolderError("dataset.json", f"label {name!r} has an invalid or repeated number {value!r}")
        numbers[value] = name
    if sorted(numbers) != list(range(len(numbers))):
        raise ResultFolderError("dataset.json", "label numbers are not 0..N-1 without gaps")
    return dict(sorted(numbers.items()))


def input_channels(dataset: dict) -> int:
    """Number of input channels (``channel_names``, or the older ``modality``)."""
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise ResultFolderError("dataset.json", "has no 'channel_names'")
    return len(channels)


@dataclass(frozen=True)
class ResultFolder:
    """A read nnU-Net v2 result folder: plans, dataset, and one checkpoint per fold."""

    plans: dict
    dataset: dict
    checkpoints: dict[str, dict]       # "fold_0" -> the loaded checkpoint dict
    files: dict[str, Path]             # "fold_0" -> its checkpoint file

    @property
    def configuration_name(self) -> str:  # noqa: D102
        return next(iter(self.checkpoints.values()))["init_args"]["configuration"]

    @property
    def trainer_name(self) -> str:  # noqa: D102
        return next(iter(self.checkpoints.values()))["trainer_name"]


def find_result_folder(root: Path, depth: int = 3) -> Path | None:
    """``root`` itself, or the one folder at most ``depth`` levels below it, holding plans.json + dataset.json."""
    candidates = [root] if (root / "plans.json").is_file() else []
    if not candidates:
        for level in range(1, depth + 1):
            pattern = "/".join(["*"] * level) + "/plans.json"
            candidates += [p.parent for p in sorted(root.glob(pattern)) if (p.parent / "dataset.json").is_file()]
    if len(candidates) > 1:
        raise ResultFolderError("plans.json", f"{len(candidates)} nnU-Net result folders found; keep one")
    return candidates[0] if candidates else None


def load_checkpoint(path: Path) -> dict:
    """An nnU-Net v2 ``checkpoint_final.pth``, read without running arbitrary pickled code.

    A truncated, foreign or incomplete file is refused naming the file and what is wrong.
    """
    name = f"{path.parent.name}/{path.name}"
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
        raise ResultFolderError(name, f"not a readable nnU-Net checkpoint ({str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(checkpoint, dict):
        raise ResultFolderError(name, f"not an nnU-Net checkpoint (a {type(checkpoint).__name__}, not a dict)")
    missing = [k for k in ("network_weights", "init_args", "trainer_name") if k not in checkpoint]
    if missing:
        raise ResultFolderError(name, f"not an nnU-Net v2 checkpoint (missing {', '.join(missing)})")
    if not isinstance(checkpoint["init_args"], dict) or "configuration" not in checkpoint["init_args"]:
        raise ResultFolderError(name, "init_args has no 'configuration'")
    return checkpoint


def read_result_folder(folder: Path) -> ResultFolder:
    """Plans, dataset and every ``fold_*/checkpoint_final.pth`` of an nnU-Net v2 result folder."""
    plans, dataset = read_json(folder / "plans.json"), read_json(folder / "dataset.json")
    files = {p.parent.name: p for p in sorted(folder.glob(f"fold_*/{CHECKPOINT_NAME}"))}
    if not files:
        raise ResultFolderError(f"fold_*/{CHECKPOINT_NAME}", "no checkpoint in the nnU-Net result folder")
    checkpoints = {fold: load_checkpoint(path) for fold, path in files.items()}
    configurations = {c["init_args"]["configuration"] for c in checkpoints.values()}
    if len(configurations) != 1:
        raise ResultFolderError(f"fold_*/{CHECKPOINT_NAME}", f"folds trained different configurations {configurations}")
    return ResultFolder(plans, dataset, checkpoints, files)


def load_weights(network: nn.Module, checkpoint: dict, name: str) -> None:
    """Load ``network_weights`` as nnU-Net does (``module.`` / ``_orig_mod.`` prefixes dropped), strictly."""
    state = {key.removeprefix("module.").replace("_orig_mod.", ""): value
             for key, value in checkpoint["network_weights"].items()}
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{label} {keys[:3]}{'...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ResultFolderError(name, "weights do not fit the network the plans describe: " + "; ".join(parts))
    network.load_state_dict(state, strict=True)
