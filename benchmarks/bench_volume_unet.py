"""3D U-Net whole-volume speed, all backends in one run: ONNX Runtime fp32, int8, PyTorch eager.

The volume is the shared 3 mm CT (``../shared/data/ct/example_ct.nii.gz``, 122 x 101 x 112);
each backend runs the same whole segmentation (reorient, CTNormalization, Gaussian sliding
window at step 0.5, argmax, masks) through ``engine.analysis.volume.unet.segment_ct``, so
only the patch model differs. The network is the dev pack's (dev plans, untrained, features
/4) or, with ``--full``, the dev plans at full width (32..320 features, the size of
TotalSegmentator's 3 mm model). int8 is reported kept only if its label masks agree with
fp32's at Dice >= 0.98 for every label either finds.

Published reference: TotalSegmentator ``--fast`` (3 mm) takes 1-4.5 min per CT on a laptop
CPU (lassoan/SlicerTotalSegmentator issue 1); its CTs are usually larger than this one.

    .venv/bin/python benchmarks/bench_volume_unet.py [--threads 2] [--rounds 1] [--full] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_CT = REPO.parent / "shared" / "data" / "ct" / "example_ct.nii.gz"
TOTALSEG_FAST_CPU_S = (60, 270)


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (wall time alone is noisy on a shared two-core machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class TorchRunner:
    """The torch network itself as the runtime's patch model (eager, inference mode)."""

    def __init__(self, network) -> None:  # noqa: ANN001
        self.network = network

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            return [self.network(torch.from_numpy(feeds["image"])).numpy()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="timed whole-volume runs per backend after a warm-up (median); 0: time the first run")
    parser.add_argument("--full", action="store_true", help="full-width network (TotalSegmentator size)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))

    import torch

    from engine.analysis.volume.unet import segment_ct
    from models import volume_unet

    torch.set_num_threads(args.threads)
    ct = volume_unet.ct_volume() if SHARED_CT.is_file() else None
    if ct is None:
        raise SystemExit(f"no CT at {SHARED_CT}")
    hu, spacing, orientation = ct
    divisor = 1 if args.full else volume_unet.DEV_FEATURE_DIVISOR
    network, config, labels, info = volume_unet.load_unet(None, divisor=divisor)
    spec = volume_unet.entry_common(config, labels, info) | {"id": "bench", "sha256": None}
    params = sum(p.numel() for p in network.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "unet.fp32.onnx", Path(tmp) / "unet.int8.onnx"
        started = time.perf_counter()
        volume_unet.export_network(network, config, fp32_path)
        export_s = time.perf_counter() - started
        from engine.analysis.volume.unet import UNetSpec, preprocess

        image, _ = preprocess(hu, spacing, UNetSpec.from_manifest(spec), orientation)
        started = time.perf_counter()
        volume_unet.quantize(fp32_path, int8_path, image)
        quantize_s = time.perf_counter() - started
        runners = {"onnxruntime-fp32": volume_unet.OrtRunner(fp32_path, args.threads),
                   "onnxruntime-int8": volume_unet.OrtRunner(int8_path, args.threads),
                   "pytorch-eager-fp32": TorchRunner(network)}
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        cpu: dict[str, list[float]] = {name: [] for name in runners}
        maps: dict[str, np.ndarray] = {}
        windows = 0
        cold: dict[str, tuple[float, float]] = {}
        for name, runner in runners.items():  # warm-up (arena allocation, first-run kernels); its masks kept
            start, start_cpu = time.perf_counter(), _cpu_seconds()
            result = segment_ct(hu, spacing, model=runner, spec=spec | {"precision": name}, orientation=orientation)
            cold[name] = (time.perf_counter() - start, _cpu_seconds() - start_cpu)
            maps[name], windows = result.label_map, result.windows
        if args.rounds == 0:  # --rounds 0: the first (cold) run is the figure (the full-width network is slow)
            for name, (wall, used) in cold.items():
                seconds[name].append(wall)
                cpu[name].append(used)
        for _ in range(args.rounds):  # interleaved rounds: machine noise hits every backend alike
            for name, runner in runners.items():
                start, start_cpu = time.perf_counter(), _cpu_seconds()
                segment_ct(hu, spacing, model=runner, spec=spec | {"precision": name}, orientation=orientation)
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(_cpu_seconds() - start_cpu)
        fp32_size, int8_size = fp32_path.stat().st_size, int8_path.stat().st_size
    dice = volume_unet.dice_per_label(maps["onnxruntime-fp32"], maps["onnxruntime-int8"], len(labels))
    eager_vs_ort = volume_unet.dice_per_label(maps["pytorch-eager-fp32"], maps["onnxruntime-fp32"], len(labels))
    below = {labels[k]: v for k, v in dice.items() if v < volume_unet.DICE_LIMIT}
    median = {name: float(np.median(v)) for name, v in seconds.items()}
    median_cpu = {name: float(np.median(v)) for name, v in cpu.items()}
    report = {
        "volume": {"file": SHARED_CT.name, "shape_zyx": list(hu.shape), "spacing_zyx": list(spacing),
                   "orientation": orientation, "windows": windows, "patch": list(config.patch_size)},
        "network": {"features_per_stage": config.arch_kwargs["features_per_stage"], "parameters": params,
                    "trained": False, "full_width": args.full},
        "threads": args.threads, "rounds": args.rounds,
        "s_per_volume": {k: round(v, 2) for k, v in median.items()},
        "cpu_s_per_volume": {k: round(v, 2) for k, v in median_cpu.items()},
        "ort_fp32_speedup_vs_eager": round(median["pytorch-eager-fp32"] / median["onnxruntime-fp32"], 2),
        "int8_speedup_vs_fp32": round(median["onnxruntime-fp32"] / median["onnxruntime-int8"], 2),
        "int8": {"kept": not below, "labels_compared": len(dice), "labels_below_limit": len(below),
                 "dice_limit": volume_unet.DICE_LIMIT, "dice_min": min(dice.values()) if dice else None,
                 "dice_median": float(np.median(list(dice.values()))) if dice else None},
        "eager_vs_ort_fp32_dice_min": min(eager_vs_ort.values()) if eager_vs_ort else None,
        "export_s": round(export_s, 1), "quantize_s": round(quantize_s, 1),
        "onnx_mb": {"fp32": round(fp32_size / 2**20, 1), "int8": round(int8_size / 2**20, 1)},
        "totalsegmentator_fast_cpu_s_published": list(TOTALSEG_FAST_CPU_S),
    }
    print(f"3D U-Net on {SHARED_CT.name} {list(hu.shape)} ({windows} window(s) of {list(config.patch_size)}), "
          f"{args.threads} threads, features {config.arch_kwargs['features_per_stage']} ({params / 1e6:.1f} M params)")
    for name, value in median.items():
        print(f"  {name:20s} {value:7.1f} s/volume wall, {median_cpu[name]:7.1f} s CPU (all threads)")
    print(f"  ORT fp32 vs eager: {report['ort_fp32_speedup_vs_eager']}x; int8 vs fp32: {report['int8_speedup_vs_fp32']}x; "
          f"int8 {'kept' if not below else 'rejected'}: {len(below)}/{len(dice)} labels below Dice "
          f"{volume_unet.DICE_LIMIT} (min {report['int8']['dice_min']})")
    print(f"  TotalSegmentator --fast on a laptop CPU (published): {TOTALSEG_FAST_CPU_S[0]}-{TOTALSEG_FAST_CPU_S[1]} s/volume")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
