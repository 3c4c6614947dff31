"""ONNX Runtime sessions: CUDA first when present, CPU otherwise; errors mapped to codes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.errors import ErrorCode, MedVisionError

log = logging.getLogger(__name__)

_OOM_MARKERS = ("out of memory", "cudaerrormemoryallocation", "cuda failure 2", "failed to allocate memory")


def choose_providers(allowed: tuple[str, ...]) -> list[str]:
    """The allowed providers this onnxruntime build offers, in preference order (CPU last)."""
    available = set(ort.get_available_providers())
    chosen = [p for p in allowed if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _error_code(exc: Exception) -> ErrorCode:
    text = str(exc).lower()
    return ErrorCode.GPU_OOM if any(m in text for m in _OOM_MARKERS) else ErrorCode.INFERENCE_ERROR


class OnnxModel:
    """One ONNX Runtime inference session over a verified model file."""

    fallback: str | None = None  # why another runtime the manifest named could not serve it

    def __init__(self, path: Path, *, threads: int, providers: tuple[str, ...], name: str) -> None:
        self.name = name
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=choose_providers(providers))
        except (RuntimeError, ValueError, ort.capi.onnxruntime_pybind11_state.Fail) as exc:
            code = ErrorCode.GPU_OOM if _error_code(exc) is ErrorCode.GPU_OOM else ErrorCode.MODEL_LOAD_ERROR
            raise MedVisionError(code, f"cannot load model {name}: {exc}") from exc
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        log.info("loaded %s on %s", name, self.providers[0])

    @property
    def device(self) -> str:
        """``cuda`` or ``cpu``: where this session actually runs."""
        return "cuda" if self.providers and self.providers[0] == "CUDAExecutionProvider" else "cpu"

    @property
    def backend(self) -> str:
        """``onnxruntime-cpu`` or ``onnxruntime-cuda``: the runtime that serves this model."""
        return f"onnxruntime-{self.device}"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model; failures become ``INFERENCE_ERROR`` (or ``GPU_OOM``)."""
        try:
            return self.session.run(None, feeds)
        except (RuntimeError, ValueError, ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument) as exc:
            raise MedVisionError(_error_code(exc), f"{self.name} failed: {exc}") from exc
