"""OpenVINO CPU sessions over the pack's ONNX files, with a clean fall-back to ONNX Runtime.

A manifest entry may name ``"runtime": "openvino"`` (and ``"inference_precision": "bf16"``):
OpenVINO compiles the same verified ONNX file (fp32 or int8 QDQ) for the CPU. Where the
``openvino`` package is missing, the CPU lacks the instruction set the precision needs (bf16:
``BF16`` in ``OPTIMIZATION_CAPABILITIES``, i.e. AVX512_BF16 or AMX), or compiling fails, the
entry runs on ONNX Runtime instead; the reason is logged and kept on the model
(``fallback``), and every model says which backend ran (``backend``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from engine.errors import ErrorCode, MedVisionError
from engine.inference.onnx import OnnxModel

log = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "openvino")
# inference precision -> (OpenVINO hint, the CPU capability it needs or None)
_PRECISIONS = {"fp32": ("f32", None), "bf16": ("bf16", "BF16"), "fp16": ("f16", "FP16")}


class RuntimeUnavailable(Exception):
    """OpenVINO cannot serve this entry here (the message says why)."""


def _core():
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeUnavailable(f"openvino is not installed ({exc})") from exc
    return openvino.Core()


class OpenVinoModel:
    """One compiled OpenVINO CPU model with the :class:`OnnxModel` calling interface."""

    device = "cpu"
    fallback: str | None = None

    def __init__(self, path: Path, *, threads: int, precision: str, name: str) -> None:
        if precision not in _PRECISIONS:
            raise RuntimeUnavailable(f"unknown inference precision {precision!r}")
        hint, capability = _PRECISIONS[precision]
        core = _core()
        if capability is not None:
            capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if capability not in capabilities:
                raise RuntimeUnavailable(f"this CPU lacks {capability} (has {', '.join(capabilities)})")
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": int(threads)}
        try:
            self.compiled = core.compile_model(str(path), "CPU", config)
        except RuntimeError as exc:
            raise RuntimeUnavailable(f"openvino cannot compile {name}: {exc}") from exc
        self.name = name
        self.precision = precision
        self.backend = f"openvino-{precision}"
        self.providers = ["OpenVINO-CPU"]
        self.input_names = [next(iter(i.get_names())) for i in self.compiled.inputs]
        self.output_names = [next(iter(o.get_names())) for o in self.compiled.outputs]
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        log.info("loaded %s on OpenVINO CPU (%s)", name, precision)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model (one request at a time); failures become ``INFERENCE_ERROR``."""
        try:
            with self._lock:
                results = self._request.infer(feeds)
                return [np.array(results[out]) for out in self.compiled.outputs]
        except (RuntimeError, ValueError, TypeError) as exc:
            raise MedVisionError(ErrorCode.INFERENCE_ERROR, f"{self.name} failed: {exc}") from exc


def load_model(path: Path, spec: dict, *, threads: int, providers: tuple[str, ...],
               name: str) -> OnnxModel | OpenVinoModel:
    """The session ``spec`` asks for (``runtime``/``inference_precision``), ONNX Runtime as fall-back."""
    runtime = spec.get("runtime") or "onnxruntime"
    if runtime == "openvino":
        precision = spec.get("inference_precision") or "fp32"
        try:
            return OpenVinoModel(path, threads=threads, precision=precision, name=name)
        except RuntimeUnavailable as exc:
            reason = f"openvino-{precision} unavailable: {exc}"
            log.warning("%s: %s; running it on ONNX Runtime", name, reason)
            model = OnnxModel(path, threads=threads, providers=providers, name=name)
            model.fallback = reason
            return model
    return OnnxModel(path, threads=threads, providers=providers, name=name)


def runtime_info(model: OnnxModel | OpenVinoModel) -> dict:
    """What a result cites about the session that ran: device, backend, and any fall-back reason."""
    return {"device": model.device, "backend": model.backend, "backend_fallback": model.fallback}
