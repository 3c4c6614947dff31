"""A 300-slice 512 x 512 CT from the encrypted store: first slice, whole volume, reslice; against pydicom.

The series is written (uncompressed, one file per slice, synthetic int16 HU: speed does not
depend on the values) with ``tests/volumes/ctseries.py`` and added to a session file by
file (``Engine.add_image_to_session``: each file encrypted into the store). Then, warm (blobs
in the page cache), medians over ``--repeats`` interleaved runs, each on a fresh
``VolumeService`` (nothing cached in memory, as in a new process):

- ``list_series``: every stored image decrypted in memory and read up to its pixels, stacks planned;
- ``first slice, cold``: list + the middle slice decoded on its own (first slice on screen);
- ``first slice, listed``: the middle slice alone, the series already listed (the worklist showed it);
- ``whole volume``: list + every slice decrypted and decoded into one float32 (z, y, x) array;
- ``pydicom``: ``dcmread`` + ``pixel_array`` of each *plaintext* file, sorted, stacked, rescaled.

Reslice: a coronal and a sagittal plane of the cached volume copied out contiguous (what a
viewer draws), median over 50 planes each.

Targets: first slice < 300 ms, whole volume < 3 s, reslice < 30 ms.

    .venv/bin/python benchmarks/bench_volume_store.py [--slices 300] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_volume import pydicom_volume
from timing import interleaved_ms

REPO = Path(__file__).resolve().parents[1]
TARGETS_MS = {"first_cold": 300.0, "first_listed": 300.0, "volume": 3000.0, "reslice": 30.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from engine.api import Engine
    from engine.config import Settings
    from engine.services.volumes import VolumeCache, VolumeService
    from tests.volumes.ctseries import write_ct_series

    with tempfile.TemporaryDirectory(prefix="bench-volume-store-") as tmp:
        folder = Path(tmp) / "series"
        rng = np.random.default_rng(0)
        hu = rng.integers(-1024, 2000, size=(args.size, args.size, args.slices), dtype=np.int16)
        files = write_ct_series(folder, volume=(hu, np.diag([0.7, 0.7, 1.25, 1.0])))
        size_mb = sum(p.stat().st_size for p in files) / 2**20
        settings = Settings(home=Path(tmp) / "home", model_pack=Path(os.environ.get(
            "MEDVISION_MODEL_PACK", REPO / ".cache" / "modelpack-dev")), use_keyring=False)
        with Engine(settings) as engine:
            started = time.perf_counter()
            session_id = engine.create_study_session("bench")["session_id"]
            for path in files:
                engine.add_image_to_session(session_id, path, auto_analyze=False)
            intake_s = time.perf_counter() - started

            def fresh() -> VolumeService:
                return VolumeService(engine.store, VolumeCache(2 * 1024 * 2**20), limits=settings.limits)

            middle = args.slices // 2

            def first_cold() -> None:
                fresh().volume_slice(session_id, middle, prefetch=False)

            listed = fresh()
            listed.list_series(session_id)

            def first_listed() -> None:  # the service that listed the series (nothing assembled: prefetch off)
                listed.volume_slice(session_id, middle, prefetch=False)

            ours = fresh().volume(session_id)
            theirs = pydicom_volume(files)
            assert ours.voxels.shape == theirs.shape and np.array_equal(ours.voxels, theirs), "the volumes differ"
            assert ours.warnings == (), ours.warnings
            medians = interleaved_ms({
                "list": lambda: fresh().list_series(session_id),
                "first_cold": first_cold,
                "first_listed": first_listed,
                "volume": lambda: fresh().volume(session_id),
                "pydicom": lambda: pydicom_volume(files),
            }, args.repeats)
            service = fresh()
            service.volume(session_id)
            reslice = {}
            for plane in ("coronal", "sagittal"):
                samples = []
                for index in np.linspace(0, args.size - 1, 50).astype(int):
                    start = time.perf_counter()
                    image, _ = service.reslice(session_id, plane, int(index))
                    np.ascontiguousarray(image)
                    samples.append((time.perf_counter() - start) * 1000)
                reslice[plane] = float(np.median(samples))

    def verdict(value: float, key: str) -> str:
        return f"(target < {TARGETS_MS[key]:.0f} ms: {'met' if value < TARGETS_MS[key] else 'MISSED'})"

    print(f"{args.slices} slices of {args.size} x {args.size} (int16, uncompressed, {size_mb:.0f} MB) stored "
          f"encrypted in one session (intake {intake_s:.1f} s); median of {args.repeats}:")
    print(f"  list_series (headers)        {medians['list']:8.0f} ms")
    print(f"  first slice, cold            {medians['first_cold']:8.0f} ms   {verdict(medians['first_cold'], 'first_cold')}")
    print(f"  first slice, series listed   {medians['first_listed']:8.0f} ms   "
          f"{verdict(medians['first_listed'], 'first_listed')}")
    print(f"  whole volume from the store  {medians['volume']:8.0f} ms   {verdict(medians['volume'], 'volume')}")
    print(f"  pydicom, plaintext files     {medians['pydicom']:8.0f} ms   "
          f"(ratio store/pydicom {medians['volume'] / medians['pydicom']:.2f})")
    for plane, value in reslice.items():
        print(f"  reslice {plane:<9}            {value:8.2f} ms   {verdict(value, 'reslice')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
