"""Shared by the benchmark scripts: interleaved medians (two shared cores make single runs noisy)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def interleaved_ms(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms of each callable: one warm-up each, then ``repeats`` rounds timed alternately."""
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(values)) for name, values in samples.items()}
