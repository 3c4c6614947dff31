"""The CPU runtime of each model chosen by measurement on the calibration hold-out images.

Every file a builder keeps is run by each candidate runtime the engine offers
(ONNX Runtime; OpenVINO at fp32 and at bf16 inference precision, on fp32 and int8 QDQ files
alike), exactly as the engine loads it. Each candidate's per-image median latency and its
parity against ONNX Runtime fp32 (the reference) are recorded in the entry's
``benchmark.runtimes``; each entry names its fastest passing candidate (``runtime``,
``inference_precision``), and the pack default becomes the entry whose choice is fastest.
A candidate that cannot run here (no openvino, no bf16 in this CPU) is recorded with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.inference.onnx import OnnxModel
from engine.inference.openvino_runtime import OpenVinoModel, RuntimeUnavailable

log = logging.getLogger(__name__)

#: (runtime, inference precision) pairs tried on every kept file; ONNX Runtime first.
CANDIDATES: tuple[tuple[str, str | None], ...] = (("onnxruntime", None), ("openvino", "fp32"), ("openvino", "bf16"))


def load_candidate(path: Path, runtime: str, precision: str | None, threads: int) -> OnnxModel | OpenVinoModel:
    """The engine's session for one candidate (``RuntimeUnavailable`` where OpenVINO cannot serve it)."""
    if runtime == "openvino":
        return OpenVinoModel(path, threads=threads, precision=precision or "fp32", name=path.name)
    return OnnxModel(path, threads=threads, providers=("CPUExecutionProvider",), name=path.name)


def timed_outputs(model: OnnxModel | OpenVinoModel, images: np.ndarray) -> tuple[np.ndarray, float]:
    """The first output for each image (batch 1, after one warm-up run) and the median ms per image."""
    name = model.input_names[0]
    model.run({name: images[:1]})
    outputs, times = [], []
    for index in range(len(images)):
        start = time.perf_counter()
        outputs.append(model.run({name: images[index:index + 1]})[0][0])
        times.append((time.perf_counter() - start) * 1000)
    return np.stack(outputs), float(np.median(times))


def choose_runtimes(entries: list[dict], out_dir: Path, holdout: np.ndarray, *, threads: int,
                    parity: Callable[[np.ndarray, np.ndarray], dict], passes: Callable[[dict], bool],
                    rule: str) -> list[dict]:
    """Measure every candidate on every entry's file; record them and choose runtimes and the default.

    ``entries`` are one task's manifest entries, the fp32 one first (its ONNX Runtime outputs
    are the reference); ``parity(reference, outputs)`` gives the recorded figures and
    ``passes(figures)`` whether they are within the limits. Returns the same entries.
    """
    reference: np.ndarray | None = None
    best: list[tuple[float, int]] = []
    for position, entry in enumerate(entries):
        rows = []
        for runtime, precision in CANDIDATES:
            row = {"runtime": runtime, "inference_precision": precision or entry["precision"]}
            try:
                model = load_candidate(out_dir / entry["file"], runtime, precision, threads)
            except RuntimeUnavailable as exc:
                rows.append(row | {"available": False, "reason": str(exc)})
                continue
            outputs, median_ms = timed_outputs(model, holdout)
            del model
            if reference is None:
                reference = outputs  # ONNX Runtime on the fp32 file: CANDIDATES[0] of entries[0]
            figures = parity(reference, outputs)
            ok = bool(passes(figures))
            rows.append(row | {"available": True, "median_ms": round(median_ms, 2), "passes": ok} | figures)
            if ok:
                best.append((round(median_ms, 2), position, len(rows) - 1))
        passing = [r for r in rows if r.get("passes")]
        entry["benchmark"] = dict(entry.get("benchmark") or {}) | {
            "runtimes": rows, "runtime_rule": rule, "runtime_samples": int(len(holdout))}
        chosen = min(passing, key=lambda r: r["median_ms"]) if passing else rows[0]
        entry["runtime"] = chosen["runtime"]
        if chosen["runtime"] == "openvino":
            entry["inference_precision"] = chosen["inference_precision"]
        log.info("%s: runtime %s %s (%s)", entry["id"], chosen["runtime"], chosen["inference_precision"],
                 ", ".join(f"{r['runtime']}-{r['inference_precision']} {r.get('median_ms', '-')} ms" for r in rows))
    if best:
        fastest = min(best)[1]
        for position, entry in enumerate(entries):
            entry["default"] = position == fastest
    return entries
