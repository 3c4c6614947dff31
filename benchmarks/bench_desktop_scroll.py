"""Desktop volume panel: stack scroll frames/s with window/level at 512 x 512, and MPR reslice ms.

The shared example CT (``../shared/data/ct/example_ct.nii.gz``, real HU) is resampled in-plane
(nearest neighbour) to 512 x 512, written as a DICOM CT series with the test helper
``tests/volumes/ctseries.py`` and stored in a session of a fresh encrypted store. The volume
panel (:class:`desktop.panels.mpr.MprPanel`, offscreen) assembles it through
``Engine.get_volume``; then, with the volume cached:

- ``scroll_fps``: frames/s of ``step("axial", 1)`` (one slice windowed into a new pixmap, the
  other two planes' crosshairs moved) each followed by a synchronous repaint of all three
  views (target >= 30);
- ``window_level_fps``: frames/s of a new window on all three planes, repainted (>= 30);
- ``reslice_ms``: median ms of ``Engine.volume_slice(plane="coronal"|"sagittal")`` from the
  cached volume (the engine's reslice, a strided view, copied contiguous here), and of the panel's own reslice + render of a
  coronal plane (target < 30 ms).

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/bench_desktop_scroll.py [--slices 112] [--frames 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"scroll_fps": 30.0, "window_level_fps": 30.0, "reslice_ms": 30.0}


def resampled_ct(size: int, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """The shared example CT resampled (nearest neighbour) to ``size`` x ``size`` in-plane, ``slices`` long."""
    from tests.volumes.ctseries import example_ct

    data, affine = example_ct()
    ni, nj, nk = data.shape
    ii = np.linspace(0, ni - 1, size).round().astype(int)
    jj = np.linspace(0, nj - 1, size).round().astype(int)
    kk = np.arange(slices) % nk
    out = np.asarray(data)[ii][:, jj][:, :, kk]
    scaled = affine.copy()
    scaled[:3, 0] *= ni / size
    scaled[:3, 1] *= nj / size
    return out, scaled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=112)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--shot", type=Path, default=None, help="save a screenshot of the panel here")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("MEDVISION_KEYRING", "0")
    sys.path.insert(0, str(REPO))
    from desktop.panels.mpr import MprPanel
    from desktop.qt import QApplication
    from desktop.worker import wait_idle
    from engine.api import Engine
    from tests.volumes.ctseries import write_ct_series

    app = QApplication.instance() or QApplication([])
    pack = Path(os.environ.get("MEDVISION_MODEL_PACK", REPO / ".cache" / "modelpack-dev"))
    with tempfile.TemporaryDirectory() as tmp, Engine(home=Path(tmp) / "home", model_pack=pack) as engine:
        files = write_ct_series(Path(tmp) / "ct", volume=resampled_ct(args.size, args.slices), seed=11)
        session_id = engine.create_study_session("scroll")["session_id"]
        started = time.perf_counter()
        for path in files:
            engine.add_image_to_session(session_id, path, auto_analyze=False)
        store_s = time.perf_counter() - started
        panel = MprPanel()
        panel.engine = engine
        panel.resize(1500, 560)
        panel.show()
        started = time.perf_counter()
        panel.load(session_id)
        while panel.volume is None:
            app.processEvents()
            wait_idle(100)
        assemble_s = time.perf_counter() - started
        views = list(panel.views.values())

        def paint() -> None:
            for view in views:
                view.viewport().repaint()

        panel.apply_preset("Lung")
        paint()
        started = time.perf_counter()
        for _ in range(args.frames):
            panel.step("axial", 1, wrap=True)
            paint()
        scroll_fps = args.frames / (time.perf_counter() - started)
        started = time.perf_counter()
        for frame in range(args.frames):
            panel.set_window(-600 + frame, 1500 - frame)
            paint()
        wl_fps = args.frames / (time.perf_counter() - started)

        def timed(fn) -> float:  # noqa: ANN001
            samples = []
            for index in range(0, args.size, max(1, args.size // 40)):
                start = time.perf_counter()
                fn(index)
                samples.append((time.perf_counter() - start) * 1000)
            return statistics.median(samples)

        engine_coronal = timed(lambda i: np.ascontiguousarray(engine.volume_slice(session_id, i, plane="coronal")[0]))
        engine_sagittal = timed(lambda i: np.ascontiguousarray(engine.volume_slice(session_id, i, plane="sagittal")[0]))
        coronal = panel.views["coronal"]
        panel_coronal = timed(lambda i: (panel.set_position((panel.position[0], i, panel.position[2])),
                                         coronal.viewport().repaint()))
        if args.shot:
            panel.set_position(tuple(n // 2 for n in panel.volume.voxels.shape))
            panel.apply_preset("Soft tissue (mediastinum, abdomen)")
            panel.grab().save(str(args.shot))
        panel.close()
        wait_idle(60000)
    z, y, x = args.slices, args.size, args.size
    print(f"volume {x} x {y} x {z} (example CT resampled), stored in {store_s:.1f} s, assembled in {assemble_s:.1f} s")
    print(f"  scroll with W/L        {scroll_fps:7.1f} frames/s   (target >= {TARGETS['scroll_fps']:.0f})")
    print(f"  window/level, 3 planes {wl_fps:7.1f} frames/s   (target >= {TARGETS['window_level_fps']:.0f})")
    print(f"  engine reslice coronal {engine_coronal:7.2f} ms, sagittal {engine_sagittal:.2f} ms")
    print(f"  panel coronal reslice + W/L + paint {panel_coronal:7.2f} ms (target < {TARGETS['reslice_ms']:.0f})")
    ok = (scroll_fps >= TARGETS["scroll_fps"] and wl_fps >= TARGETS["window_level_fps"]
          and max(engine_coronal, engine_sagittal, panel_coronal) < TARGETS["reslice_ms"])
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
