"""Shared steps of every ONNX model build: export, static QDQ quantization, timing, parity."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

log = logging.getLogger(__name__)

OPSET = 17


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, *, input_name: str,
                output_names: list[str]) -> None:
    """Export with a dynamic batch axis.

    Uses the TorchScript exporter on purpose: it names nodes after the module path
    (``/features/denseblock1/...``), which the quantization recipes select layers by,
    and it exports DenseNet in under a second where the torch.export-based one takes
    about ten. torch 2.9+ marks it deprecated; that warning is silenced here only.
    """
    module.eval()
    dynamic = {input_name: {0: "batch"}} | {name: {0: "batch"} for name in output_names}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example,), str(path), input_names=[input_name], output_names=output_names,
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
        )
    onnx.checker.check_model(str(path))


def export_onnx_graph(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], path: Path, *,
                      input_names: list[str], output_names: list[str],
                      dynamic_axes: dict[str, dict[int, str]] | None = None) -> None:
    """Export a module with several inputs and explicit dynamic axes (TorchScript exporter).

    The general form of :func:`export_onnx` for graphs such as SAM's prompt decoder
    (six inputs, a dynamic point count): same exporter, opset and check. Tracer
    warnings are the caller's to filter; the exporter's deprecation warning is
    silenced here only.
    """
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, examples, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes or {}, opset_version=OPSET, dynamo=False,
        )
    onnx.checker.check_model(str(path))


class _ArrayReader(CalibrationDataReader):
    def __init__(self, input_name: str, batch: np.ndarray) -> None:
        self._items = iter([{input_name: batch[i : i + 1]} for i in range(len(batch))])

    def get_next(self) -> dict | None:
        return next(self._items, None)


def quantize_qdq(fp32_path: Path, int8_path: Path, calibration: np.ndarray, *, input_name: str,
                 exclude: Callable[[onnx.NodeProto], bool] | None = None,
                 op_types: list[str] | None = None, symbolic_shapes: bool = True) -> dict:
    """Static QDQ int8 (uint8 activations, per-channel int8 weights, MinMax calibration).

    ``exclude`` picks nodes kept in fp32 (typically the first conv and the classifier
    head, the layers most sensitive to quantization). ``symbolic_shapes=False`` skips
    ONNX Runtime's symbolic shape inference, which gives up on graphs with dynamic
    spatial axes (the 3D U-Net). Returns the recipe for the manifest.
    """
    prepared = int8_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=not symbolic_shapes)
    graph = onnx.load(str(prepared)).graph
    excluded = [n.name for n in graph.node if exclude and exclude(n)]
    types = op_types or ["Conv"]
    quantize_static(
        str(prepared), str(int8_path), _ArrayReader(input_name, calibration),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=types,
        nodes_to_exclude=excluded,
    )
    prepared.unlink(missing_ok=True)
    return {
        "method": "static_qdq",
        "activations": "uint8",
        "weights": "int8 per-channel",
        "calibration": "minmax",
        "calibration_samples": int(len(calibration)),
        "op_types": types,
        "excluded_nodes": excluded,
    }


def cpu_session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session configured like the runtime's."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_latency_ms(run: Callable[[], object], *, warmup: int = 5, repeats: int = 30) -> float:
    """Median wall time of ``run`` in milliseconds after a warm-up."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples) * 1000)
