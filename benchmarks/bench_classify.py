"""Classifier speed, both sides in one run: torchxrayvision eager vs our ONNX fp32 vs int8.

Also the end-to-end warm ``analyze`` of RG1_UNCR.dcm through the Engine (decode the
15-bit 1955x1841 file, store it encrypted, preprocess, infer, persist) and the cold
``medvision analyze`` command (process start to result). Medians; backends are timed
in interleaved rounds so machine noise hits all of them alike.

    .venv/bin/python benchmarks/bench_classify.py [--threads 2] [--rounds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import interleaved_ms


def _median_ms(samples: list[float]) -> float:
    return float(np.median(samples) * 1000)


def bench_backends(pack: Path, threads: int, rounds: int, per_round: int) -> dict:
    import torch
    from pydicom.data import get_testdata_file

    from engine.analysis.preprocess import classifier_tensor
    from engine.imaging import decode_image
    from engine.inference.modelpack import ModelPack
    from engine.inference.onnx import OnnxModel
    from models.calibration import load_calibration
    from models.classifier import load_densenet

    torch.set_num_threads(threads)
    tensor = classifier_tensor(decode_image(get_testdata_file("RG1_UNCR.dcm")))
    modelpack = ModelPack.load(pack)
    if modelpack.trained:
        raise SystemExit("point --pack at a dev pack: the eager side rebuilds the dev weights")
    # The dev builder is deterministic: this is the very network the pack exported.
    eager, _ = load_densenet(None, load_calibration())
    eager.eval()
    sessions = {
        precision: OnnxModel(modelpack.path(entry), threads=threads, providers=("CPUExecutionProvider",),
                             name=entry.id)
        for precision in ("fp32", "int8")
        if (entry := modelpack.for_task("classify", precision)) and entry.precision == precision
    }
    torch_input = torch.from_numpy(tensor)

    def run_eager() -> None:
        with torch.inference_mode():
            eager(torch_input)

    with torch.inference_mode():
        reference = eager(torch_input).numpy()
    fp32_logits = sessions["fp32"].run({"image": tensor})[0]
    print(f"(same weights: max |logit| difference ORT fp32 vs eager {np.abs(fp32_logits - reference).max():.2e})")
    runners = {"torch_eager": run_eager}
    for precision, model in sessions.items():
        runners[f"ort_{precision}"] = lambda m=model: m.run({"image": tensor})
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():  # warm-up
        for _ in range(3):
            run()
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
    return {name: _median_ms(values) for name, values in samples.items()}


def bench_end_to_end(pack: Path, threads: int, repeats: int) -> dict:
    from pydicom.data import get_testdata_file

    from engine.api import Engine
    from engine.config import Settings

    rg1 = get_testdata_file("RG1_UNCR.dcm")
    home = Path(tempfile.mkdtemp(prefix="mv-bench-"))
    try:
        os.environ["MEDVISION_KEYRING"] = "0"
        settings = Settings(home=home, model_pack=pack, threads=threads, providers=("CPUExecutionProvider",))
        with Engine(settings) as engine:
            session = engine.create_study_session("bench")["session_id"]
            engine.add_image_to_session(session, rg1)  # warm: models loaded, matrices cached
            totals, parts = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                result = engine.add_image_to_session(session, rg1)
                totals.append(time.perf_counter() - start)
                parts.append(result["auto_analysis"]["timings_ms"] | result["timings_ms"])
        breakdown = {key: float(np.median([p[key] for p in parts])) for key in
                     ("decode", "store", "preprocess", "inference", "persist")}
        return {"warm_analyze_ms": _median_ms(totals), "breakdown_ms": breakdown}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def bench_decode(repeats: int) -> dict:
    """RG1 (CR, 15-bit, MONOCHROME1, 1955 x 1841): decode from bytes, then the display rendering."""
    from pydicom.data import get_testdata_file

    from engine.imaging import decode_image

    data = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
    image = decode_image(data, filename="RG1_UNCR.dcm")
    return interleaved_ms({"decode_ms": lambda: decode_image(data, filename="RG1_UNCR.dcm"),
                           "display_ms": image.display}, repeats)


def bench_cold_cli(pack: Path, threads: int, repeats: int) -> dict:
    from pydicom.data import get_testdata_file

    exe = Path(sys.executable).parent / "medvision"
    home = Path(tempfile.mkdtemp(prefix="mv-bench-cli-"))
    env = os.environ | {"MEDVISION_HOME": str(home), "MEDVISION_MODEL_PACK": str(pack),
                        "MEDVISION_THREADS": str(threads), "MEDVISION_KEYRING": "0"}
    try:
        samples = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            subprocess.run([str(exe), "analyze", get_testdata_file("RG1_UNCR.dcm"), "--json", str(home / "r.json")],
                           check=True, env=env, capture_output=True)
            samples.append(time.perf_counter() - start)
        return {"cold_cli_ms": _median_ms(samples[1:]), "first_run_ms": samples[0] * 1000}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default=os.environ.get("MEDVISION_MODEL_PACK", ".cache/modelpack-dev"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    pack = Path(args.pack).resolve()

    backends = bench_backends(pack, args.threads, args.rounds, args.per_round)
    e2e = bench_end_to_end(pack, args.threads, args.repeats)
    cold = bench_cold_cli(pack, args.threads, 5)
    decode = bench_decode(args.repeats)

    eager = backends["torch_eager"]
    print(f"DenseNet-121, batch 1, 224x224, {args.threads} threads, median of {args.rounds * args.per_round}")
    for name, ms in backends.items():
        print(f"  {name:<12} {ms:8.2f} ms   speed-up vs eager {eager / ms:5.2f}x")
    if "ort_fp32" in backends and "ort_int8" in backends:
        print(f"  int8 vs fp32: {backends['ort_fp32'] / backends['ort_int8']:.2f}x")
    print(f"End-to-end warm analyze of RG1 (decode+store+preprocess+infer+persist): {e2e['warm_analyze_ms']:.1f} ms")
    print("  " + ", ".join(f"{k} {v:.1f} ms" for k, v in e2e["breakdown_ms"].items()))
    print(f"RG1 decode from bytes {decode['decode_ms']:.1f} ms, display rendering {decode['display_ms']:.1f} ms")
    print(f"Cold CLI `medvision analyze RG1` (process start to result): {cold['cold_cli_ms']:.0f} ms "
          f"(first run, new database: {cold['first_run_ms']:.0f} ms)")
    best_ort = min(v for k, v in backends.items() if k.startswith("ort_"))
    checks = {
        "ORT >= 3x eager": eager / best_ort >= 3.0,
        "int8 faster than fp32": backends.get("ort_int8", 1e9) < backends.get("ort_fp32", 0),
        "warm analyze < 300 ms": e2e["warm_analyze_ms"] < 300,
        "cold CLI < 3 s": cold["cold_cli_ms"] < 3000,
        "RG1 decode < 80 ms": decode["decode_ms"] < 80,
        "RG1 display < 50 ms": decode["display_ms"] < 50,
    }
    for name, ok in checks.items():
        print(f"  target {name}: {'met' if ok else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"backends_ms": backends, **e2e, **cold, **decode, "targets": checks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
