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


def timed_outputs(models: list[OnnxModel | OpenVinoModel], images: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Each model's first output for each image and its median ms per image (batch 1).

    The models take turns image by image (after one warm-up run each), so the machine's
    noise over the measurement falls on every candidate alike.
    """
    for model in models:
        model.run({model.input_names[0]: images[:1]})
    outputs: list[list[np.ndarray]] = [[] for _ in models]
    times: list[list[float]] = [[] for _ in models]
    for index in range(len(images)):
        for position, model in enumerate(models):
            start = time.perf_counter()
            outputs[position].append(model.run({model.input_names[0]: images[index:index + 1]})[0][0])
            times[position].append((time.perf_counter() - start) * 1000)
    return [(np.stack(out), float(np.median(ms))) for out, ms in zip(outputs, times, strict=True)]


def choose_runtimes(entries: list[dict], out_dir: Path, holdout: np.ndarray, *, threads: int,
                    parity: Callable[[np.ndarray, np.ndarray], dict], passes: Callable[[dict], bool],
                    rule: str) -> list[dict]:
    """Measure every candidate on every entry's file; record them and choose runtimes and the default.

    ``entries`` are one task's manifest entries, the fp32 one first (its ONNX Runtime outputs
    are the reference); ``parity(reference, outputs)`` gives the recorded figures and
    ``passes(figures)`` whether they are within the limits. Returns the same entries.
    """
    candidates: list[tuple[int, dict, OnnxModel | OpenVinoModel | None]] = []
    for position, entry in enumerate(entries):
        for runtime, precision in CANDIDATES:
            row = {"runtime": runtime, "inference_precision": precision or entry["precision"]}
            try:
                candidates.append((position, row, load_candidate(out_dir / entry["file"], runtime, precision,
                                                                 threads)))
            except RuntimeUnavailable as exc:
                candidates.append((position, row | {"available": False, "reason": str(exc)}, None))
    loaded = [model for _, _, model in candidates if model is not None]
    measured = iter(timed_outputs(loaded, holdout))
    del loaded
    reference: np.ndarray | None = None
    rows: list[list[dict]] = [[] for _ in entries]
    best: list[tuple[float, int]] = []
    for position, row, model in candidates:
        if model is None:
            rows[position].append(row)
            continue
        outputs, median_ms = next(measured)
        if reference is None:
            reference = outputs  # ONNX Runtime on the fp32 file: CANDIDATES[0] of entries[0]
        figures = parity(reference, outputs)
        ok = bool(passes(figures))
        rows[position].append(row | {"available": True, "median_ms": round(median_ms, 2), "passes": ok} | figures)
        if ok:
            best.append((round(median_ms, 2), position))
    candidates.clear()
    for entry, entry_rows in zip(entries, rows, strict=True):
        passing = [r for r in entry_rows if r.get("passes")]
        entry["benchmark"] = dict(entry.get("benchmark") or {}) | {
            "runtimes": entry_rows, "runtime_rule": rule, "runtime_samples": int(len(holdout)),
            "runtime_timing": "candidates take turns image by image"}
        chosen = min(passing, key=lambda r: r["median_ms"]) if passing else entry_rows[0]
        entry["runtime"] = chosen["runtime"]
        if chosen["runtime"] == "openvino":
            entry["inference_precision"] = chosen["inference_precision"]
        log.info("%s: runtime %s %s (%s)", entry["id"], chosen["runtime"], chosen["inference_precision"],
                 ", ".join(f"{r['runtime']}-{r['inference_precision']} {r.get('median_ms', '-')} ms"
                           for r in entry_rows))
    if best:
        fastest = min(best)[1]
        for position, entry in enumerate(entries):
            entry["default"] = position == fastest
    return entries
