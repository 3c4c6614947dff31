"""Classical anatomy segmentation (body, lungs, airways, bone) of a 512 x 512 x 300 CT.

The volume is the shared example CT (``../shared/data/ct/example_ct.nii.gz``, 122 x 101 x
112 voxels of 3 mm) zoomed with ``scipy.ndimage.zoom(order=1)`` to 300 x 512 x 512
(z, y, x), the affine scaled to match: real anatomy at a clinical matrix size. Reports
the median wall and process CPU time of :func:`engine.analysis.volume.anatomy.segment_anatomy`
over ``--repeats`` runs after one warm-up, with the load average (the machine is shared:
compare wall times only on an idle one; the work is single-threaded numpy/scipy, so the
CPU time is what an idle core would take).

Target: < 5 s on 2 cores.

    .venv/bin/python benchmarks/bench_volume_segmentation.py [--repeats 3] [--shape 300 512 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.analysis.volume.anatomy import segment_anatomy  # noqa: E402
from tests.volumes.ct_reference import load_ct  # noqa: E402

TARGET_S = 5.0
SHARED_CT = REPO.parent / "shared" / "data" / "ct" / "example_ct.nii.gz"


def clinical_volume(shape: tuple[int, int, int], ct_path: Path = SHARED_CT) -> tuple[np.ndarray, np.ndarray]:
    """The shared CT zoomed (order 1) to ``shape`` (z, y, x), with its LPS affine scaled to match."""
    hu, affine = load_ct(ct_path)
    factors = [n / s for n, s in zip(shape, hu.shape, strict=True)]
    big = ndi.zoom(hu, factors, order=1).astype(np.float32)
    scale = np.diag([1 / factors[2], 1 / factors[1], 1 / factors[0], 1.0])
    return big, affine @ scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    hu, affine = clinical_volume(tuple(args.shape))
    print(f"volume {hu.shape} (z, y, x) built in {time.perf_counter() - started:.1f} s; "
          f"spacing_zyx {[round(float(v), 3) for v in np.linalg.norm(affine[:3, :3], axis=0)[::-1]]} mm")
    result = segment_anatomy(hu, affine)   # warm-up
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = segment_anatomy(hu, affine)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    median, cpu_median = statistics.median(times), statistics.median(cpu_times)
    load = os.getloadavg()[0]
    print(f"segment_anatomy: median wall {median:.2f} s, CPU {cpu_median:.2f} s over {args.repeats} runs "
          f"(wall {[round(t, 2) for t in times]}), target < {TARGET_S:g} s; grid factors {result.grid_factors}; "
          f"load average {load:.2f} (on a busy machine the CPU time is the better guide)")
    for structure in result.structures:
        print(f"  {structure.name:<10} {structure.volume_ml:10.1f} mL  {structure.note}")
    if args.json:
        args.json.write_text(json.dumps({"shape": list(hu.shape), "median_s": median, "runs_s": times,
                                         "cpu_median_s": cpu_median, "cpu_runs_s": cpu_times,
                                         "load_average": load, "target_s": TARGET_S,
                                         "result": result.to_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
