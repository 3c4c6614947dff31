"""CPU runtimes per model, in one run: ONNX Runtime vs OpenVINO (fp32, bf16) on each file of the pack
(fp32 and int8 QDQ), plus torchxrayvision eager DenseNet-121 as the classifier's baseline.

For every model and candidate: the median ms per image (batch 1, interleaved rounds so machine
noise hits all alike) and parity against ONNX Runtime fp32 on the calibration hold-out images
(classifier max |dp|; organ segmentation worst per-label mask Dice at 0.5; RAD-DINO embedding cosine). Point --pack at a dev
pack (the eager side rebuilds the dev weights): build one with
``medvision models build --dev --only classifier,segmentation --out /tmp/pack``.

    .venv/bin/python benchmarks/bench_runtimes.py --pack /tmp/pack [--threads 2] [--rounds 5] [--tasks classify] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from timing import interleaved_ms

PARITY = {
    "classify": lambda ref, out: {"max_abs_dp": float(np.abs(1 / (1 + np.exp(-out)) - 1 / (1 + np.exp(-ref))).max())},
    "organ_seg": lambda ref, out: {"dice_worst": float(_dice(ref > 0, out > 0).min())},
    "embed": lambda ref, out: {"cosine_min": float(((ref * out).sum(axis=1) / (np.linalg.norm(ref, axis=1)
                                                                            * np.linalg.norm(out, axis=1))).min())},
}


def _dice(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    from models.segmentation import dice_per_label

    return dice_per_label(reference, candidate).mean(axis=0)


def bench_task(pack, task: str, holdout: np.ndarray, threads: int, rounds: int,  # noqa: ANN001 - a ModelPack
               baseline: dict | None = None) -> dict:
    """Every candidate on every file of ``task`` (and ``baseline`` runners) timed in the same rounds."""
    from engine.inference.openvino_runtime import RuntimeUnavailable
    from models.runtimes import CANDIDATES, load_candidate

    entries = sorted((e for e in pack.entries if e.task == task), key=lambda e: e.precision != "fp32")
    models, skipped = {}, {}
    for entry in entries:
        for runtime, precision in CANDIDATES:
            name = f"{entry.precision}-file/{runtime}" + (f"-{precision}" if precision else "")
            try:
                models[name] = load_candidate(pack.path(entry), runtime, precision, threads)
            except RuntimeUnavailable as exc:
                skipped[name] = str(exc)
    one = holdout[:1]
    runs = {n: (lambda m=m: m.run({m.input_names[0]: one})) for n, m in models.items()} | (baseline or {})
    medians = interleaved_ms(runs, rounds)
    outputs = {n: np.stack([m.run({m.input_names[0]: holdout[i:i + 1]})[0][0] for i in range(len(holdout))])
               for n, m in models.items()}
    reference = outputs["fp32-file/onnxruntime"]
    rows = {n: {"median_ms": round(medians[n], 1)} | {k: round(v, 4) for k, v in PARITY[task](reference, o).items()}
            for n, o in outputs.items()}
    return {"candidates": rows, "unavailable": skipped, "parity_samples": int(len(holdout)),
            "baseline_ms": {n: round(medians[n], 1) for n in baseline or {}}}


def eager_runner(threads: int, tensor: np.ndarray):  # noqa: ANN201 - a callable
    """torchxrayvision eager DenseNet-121 with the dev pack's very weights (the dev build is deterministic)."""
    import torch

    from models.calibration import load_calibration
    from models.classifier import load_densenet

    torch.set_num_threads(threads)
    eager, _ = load_densenet(None, load_calibration())
    eager.eval()
    torch_input = torch.from_numpy(tensor)

    def run() -> None:
        with torch.inference_mode():
            eager(torch_input)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", default="classify,organ_seg,embed",
                        help="comma-separated: classify, organ_seg, embed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from engine.inference.modelpack import ModelPack
    from models.calibration import load_images

    pack = ModelPack.load(args.pack)
    images = load_images()
    report = {"threads": args.threads, "rounds": args.rounds}
    for task, resolution, views in (("classify", 224, 30), ("organ_seg", 512, 6)):
        if task in args.tasks.split(",") and any(e.task == task for e in pack.entries):
            holdout = images.xrv_set(resolution, augmented=views).holdout
            baseline = {"torchxrayvision-eager": eager_runner(args.threads, holdout[:1])} if task == "classify" else {}
            report[task] = bench_task(pack, task, holdout, args.threads, args.rounds, baseline)
    if "embed" in args.tasks.split(",") and any(e.task == "embed" for e in pack.entries):
        from models.embedding import check_tensors

        report["embed"] = bench_task(pack, "embed", check_tensors(images.by_role("holdout")), args.threads,
                                     max(2, args.rounds // 2))
    if "classify" in report:
        eager = report["classify"]["baseline_ms"]["torchxrayvision-eager"]
        for row in report["classify"]["candidates"].values():
            row["speedup_vs_eager"] = round(eager / row["median_ms"], 2)
    for task in ("classify", "organ_seg", "embed"):
        if task in report:
            print(f"{task} (median ms per image at {args.threads} threads; parity vs ORT fp32):")
            for name, row in report[task]["candidates"].items():
                print(f"  {name:28s} " + "  ".join(f"{k} {v}" for k, v in row.items()))
            for name, why in report[task]["unavailable"].items():
                print(f"  {name:28s} unavailable: {why}")
    if "classify" in report:
        print(f"torchxrayvision eager DenseNet-121: {report['classify']['baseline_ms']['torchxrayvision-eager']} ms")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
