"""A DICOM SEG of 5 structures over a 300-slice 512 x 512 CT: built and encoded, in seconds.

The label map is the classical segmentation of the shared example CT zoomed to 300 x 512 x 512
(:func:`bench_volume_segmentation.clinical_volume`), with a 20 mm tube painted as airways down the
midline (the shared CT holds no trachea, and the target counts 5 structures). The 300 source
headers are built in memory (CT Image Storage, positions from the affine; what
:func:`engine.imaging.volume.assemble.header_datasets` returns without pixels). Timed:
:func:`engine.export.volume_seg.volume_segmentation` plus writing the file's bytes, median wall
and process CPU over ``--repeats`` runs after one warm-up, with the load average.

Target: < 5 s.

    .venv/bin/python benchmarks/bench_volume_seg.py [--repeats 3] [--shape 300 512 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_volume_segmentation import clinical_volume  # noqa: E402

from engine.analysis.volume.anatomy import LABELS, StructureResult, segment_anatomy  # noqa: E402
from engine.export.dicom_common import dicom_bytes  # noqa: E402
from engine.export.volume_seg import volume_segmentation  # noqa: E402

TARGET_S = 5.0


def source_headers(affine: np.ndarray, shape: tuple[int, int, int]) -> list[Dataset]:
    """One CT header per slice (no pixels), positioned by the LPS affine."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row, column = affine[:3, 0] / spacing[0], affine[:3, 1] / spacing[1]
    headers = []
    for z in range(shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, generate_uid(), "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.StudyID, ds.StudyDate, ds.StudyTime = "Bench^Seg", "B-1", "1", "20260101", "120000"
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *column)]
        ds.ImagePositionPatient = [float(v) for v in affine[:3, :3] @ [0, 0, z] + affine[:3, 3]]
        ds.SliceThickness = float(spacing[2])
        headers.append(ds)
    return headers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    hu, affine = clinical_volume(tuple(args.shape))
    result = segment_anatomy(hu, affine)
    labels = np.array(result.labels)
    z, y, x = labels.shape
    yy, xx = np.ogrid[:y, :x]
    tube = (yy - y * 0.4) ** 2 + (xx - x / 2) ** 2 <= (10 / float(np.linalg.norm(affine[:3, 0]))) ** 2
    labels[z // 3:, tube] = LABELS["airways"]
    structures = tuple(StructureResult(s.name, True, 1, 1.0) for s in result.structures)
    result = dataclasses.replace(result, labels=labels, structures=structures)
    headers = source_headers(affine, labels.shape)

    def run() -> tuple[int, int]:
        seg = volume_segmentation(result, headers)
        return len(seg.SegmentSequence), len(dicom_bytes(seg))

    segments, size = run()  # warm-up
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    median, cpu_median = statistics.median(times), statistics.median(cpu_times)
    load = os.getloadavg()[0]
    print(f"SEG of {segments} segments over {z} slices of {y} x {x} ({size / 1e6:.1f} MB): median wall "
          f"{median:.2f} s, CPU {cpu_median:.2f} s over {args.repeats} runs (wall {[round(t, 2) for t in times]}), "
          f"target < {TARGET_S:g} s; load average {load:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"shape": [z, y, x], "segments": segments, "bytes": size, "median_s": median,
                                         "runs_s": times, "cpu_median_s": cpu_median, "cpu_runs_s": cpu_times,
                                         "load_average": load, "target_s": TARGET_S}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
