"""Series -> volume: a 300-slice 512 x 512 CT series assembled, against pydicom reading the same files.

The series is written first (uncompressed, one CT Image Storage file per slice, names and
InstanceNumbers shuffled, synthetic int16 HU: speed does not depend on the values) with
the test helper ``tests/volumes/ctseries.py``. Then, warm (the files in the page cache),
medians over ``--repeats`` interleaved runs of:

- ``medvision``: ``load_volume(folder)``: headers, stacks, geometry checks, pixels decoded and
  rescaled into one float32 (z, y, x) array, every warning;
- ``pydicom``: ``dcmread`` + ``pixel_array`` of each file, sorted by ImagePositionPatient z,
  stacked with ``np.stack`` and rescaled to float32 (no checks at all): what a script does;
- ``pydicom, preallocated``: headers read and sorted first, then each file's pixels rescaled
  into one preallocated float32 array (still no checks): pydicom used with care.

Target: the whole volume ready in < 3 s.

    .venv/bin/python benchmarks/bench_volume.py [--slices 300] [--size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from timing import interleaved_ms

TARGET_MS = 3000.0
REPO = Path(__file__).resolve().parents[1]


def pydicom_volume(files: list[Path]) -> np.ndarray:
    """What a script does with pydicom alone: read every file, sort by z, stack, rescale."""
    import pydicom

    datasets = [pydicom.dcmread(path) for path in files]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    stacked = np.stack([ds.pixel_array for ds in datasets]).astype(np.float32)
    return stacked * float(datasets[0].RescaleSlope) + float(datasets[0].RescaleIntercept)


def pydicom_preallocated(files: list[Path]) -> np.ndarray:
    """pydicom used with care: headers sorted first, then each file's pixels rescaled into one float32 array."""
    import pydicom

    headers = sorted((float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]), p) for p in files)
    volume = None
    for z, (_, path) in enumerate(headers):
        ds = pydicom.dcmread(path)
        if volume is None:
            volume = np.empty((len(files), ds.Rows, ds.Columns), np.float32)
        np.add(ds.pixel_array, np.float32(ds.RescaleIntercept), out=volume[z], dtype=np.float32)
    return volume


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from engine.imaging.volume import load_volume
    from tests.volumes.ctseries import write_ct_series

    with tempfile.TemporaryDirectory(prefix="bench-volume-") as tmp:
        folder = Path(tmp) / "series"
        rng = np.random.default_rng(0)
        hu = rng.integers(-1024, 2000, size=(args.size, args.size, args.slices), dtype=np.int16)
        files = write_ct_series(folder, volume=(hu, np.diag([0.7, 0.7, 1.25, 1.0])))
        size_mb = sum(p.stat().st_size for p in files) / 2**20
        ours = load_volume(folder)
        theirs = pydicom_volume(files)
        assert ours.voxels.shape == theirs.shape and np.array_equal(ours.voxels, theirs), "the two volumes differ"
        assert ours.warnings == (), ours.warnings
        assert np.array_equal(pydicom_preallocated(files), theirs)
        medians = interleaved_ms({"medvision": lambda: load_volume(folder),
                                  "pydicom": lambda: pydicom_volume(files),
                                  "preallocated": lambda: pydicom_preallocated(files)}, args.repeats)
    print(f"{args.slices} slices of {args.size} x {args.size} (int16, uncompressed, {size_mb:.0f} MB), "
          f"median of {args.repeats}:")
    print(f"  medvision load_volume   {medians['medvision']:8.0f} ms   (target < {TARGET_MS:.0f} ms: "
          f"{'met' if medians['medvision'] < TARGET_MS else 'MISSED'})")
    print(f"  pydicom read+stack      {medians['pydicom']:8.0f} ms")
    print(f"  pydicom, preallocated   {medians['preallocated']:8.0f} ms")
    print(f"  ratio medvision/pydicom {medians['medvision'] / medians['pydicom']:8.2f}   "
          f"(/ preallocated {medians['medvision'] / medians['preallocated']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
