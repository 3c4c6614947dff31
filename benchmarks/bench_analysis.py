"""Analysis tools, both sides in one run: RAD-DINO fp32 vs int8, PSPNet, analyze_with_rag(full).

- RAD-DINO at 518x518: median ms of the fp32 and int8 ONNX graphs on RG1, the ratio,
  and the cosine between their embeddings (int8 is the default only if >= 1.3x faster
  and cos >= 0.99, the rule the pack builder applied).
- PSPNet organ segmentation at 512: median ms of the pack's default variant, and the
  int8 candidate's figures the builder recorded when it rejected or kept it.
- ``analyze_with_rag(mode="full")`` on RG1 through the Engine, warm (models loaded), with
  a small reference library built from pydicom-data files: total and per-stage ms.

    .venv/bin/python benchmarks/bench_analysis.py [--pack DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_ms(run, repeats: int) -> float:  # noqa: ANN001
    run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples) * 1000)


def bench_models(pack: Path, threads: int, repeats: int) -> dict:
    from pydicom.data import get_testdata_file

    from engine.analysis.embedding import display_region, pixel_values
    from engine.analysis.preprocess import xrv_tensor
    from engine.imaging import decode_image
    from engine.inference.modelpack import ModelPack
    from engine.inference.onnx import OnnxModel

    modelpack = ModelPack.load(pack)
    decoded = decode_image(get_testdata_file("RG1_UNCR.dcm"))
    figures: dict = {}
    embed = {e.precision: e for e in modelpack.entries if e.task == "embed"}
    tensor = pixel_values(display_region(decoded), embed["fp32"].spec["input"])
    vectors = {}
    for precision, entry in sorted(embed.items()):
        model = OnnxModel(modelpack.path(entry), threads=threads, providers=("CPUExecutionProvider",), name=entry.id)
        feeds = {entry.spec["input"]["name"]: tensor}
        figures[f"rad_dino_{precision}_ms"] = _median_ms(lambda m=model, f=feeds: m.run(f), repeats)
        vector = model.run(feeds)[0][0]
        vectors[precision] = vector / np.linalg.norm(vector)
    if {"fp32", "int8"} <= set(vectors):
        figures["rad_dino_int8_speedup"] = figures["rad_dino_fp32_ms"] / figures["rad_dino_int8_ms"]
        figures["rad_dino_int8_cosine"] = float(vectors["fp32"] @ vectors["int8"])
    seg = modelpack.for_task("organ_seg")
    model = OnnxModel(modelpack.path(seg), threads=threads, providers=("CPUExecutionProvider",), name=seg.id)
    seg_tensor = xrv_tensor(decoded, int(seg.spec["input"]["resolution"]))
    figures[f"pspnet_{seg.precision}_ms"] = _median_ms(lambda: model.run({seg.spec["input"]["name"]: seg_tensor}),
                                                       max(3, repeats // 2))
    quant = seg.spec.get("quantization") or {}
    figures["pspnet_int8_candidate"] = {k: quant.get(k) for k in ("int8_kept", "reason", "fp32_median_ms",
                                                                    "int8_median_ms", "speedup")}
    return figures


def reference_library(cases: Path) -> Path:
    """A small reference library (five pydicom-data files and a cases CSV) in ``cases``; the CSV's path."""
    from pydicom.data import get_testdata_file

    cases.mkdir(parents=True)
    rows = []
    for name in ("RG1_J2KI.dcm", "RG3_UNCR.dcm", "MR2_UNCR.dcm", "CT_small.dcm", "US1_UNCR.dcm"):
        shutil.copy(get_testdata_file(name), cases / name)
        rows.append({"image_path": name, "impression": f"reference {name}", "Cardiomegaly": "0"})
    with open(cases / "cases.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return cases / "cases.csv"


def bench_rag_full(pack: Path, threads: int, repeats: int) -> dict:
    from pydicom.data import get_testdata_file

    from engine.api import Engine
    from engine.config import Settings

    home = Path(tempfile.mkdtemp(prefix="mv-bench-rag-"))
    try:
        library = reference_library(home / "cases")
        settings = Settings(home=home, model_pack=pack, threads=threads, providers=("CPUExecutionProvider",),
                            use_keyring=False)
        with Engine(settings) as engine:
            engine.build_rag_index(data_path=library)
            session = engine.create_study_session("bench")["session_id"]
            image = engine.add_image_to_session(session, get_testdata_file("RG1_UNCR.dcm"), auto_analyze=False)
            engine.analyze_with_rag(session, image["image_id"], mode="full")  # warm-up: loads every model
            totals, stages = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                result = engine.analyze_with_rag(session, image["image_id"], mode="full")
                totals.append(time.perf_counter() - start)
                stages.append(result["metadata"]["stages_ms"])
        keys = stages[0].keys()
        return {"rag_full_ms": float(np.median(totals) * 1000),
                "stages_ms": {k: float(np.median([s[k] for s in stages])) for k in keys}}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default=os.environ.get("MEDVISION_MODEL_PACK", ".cache/modelpack-dev"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    pack = Path(args.pack).resolve()
    models = bench_models(pack, args.threads, args.repeats)
    rag = bench_rag_full(pack, args.threads, max(3, args.repeats // 2))
    print(f"{args.threads} threads, batch 1, medians")
    if "rad_dino_int8_ms" in models:
        print(f"RAD-DINO 518: fp32 {models['rad_dino_fp32_ms']:.0f} ms, int8 {models['rad_dino_int8_ms']:.0f} ms, "
              f"int8 {models['rad_dino_int8_speedup']:.2f}x faster, cosine {models['rad_dino_int8_cosine']:.5f}")
    for key, value in models.items():
        if key.startswith("pspnet_") and key.endswith("_ms"):
            print(f"PSPNet 512 ({key.split('_')[1]}): {value:.0f} ms")
    print(f"PSPNet int8 candidate (from the pack build): {models['pspnet_int8_candidate']}")
    print(f"analyze_with_rag(full) on RG1, warm: {rag['rag_full_ms']:.0f} ms  stages: "
          + ", ".join(f"{k} {v:.0f}" for k, v in rag["stages_ms"].items()))
    checks = {
        "RAD-DINO int8 rule (>= 1.3x and cos >= 0.99)": models.get("rad_dino_int8_speedup", 0) >= 1.3
        and models.get("rad_dino_int8_cosine", 0) >= 0.99,
        "analyze_with_rag(full) < 5 s": rag["rag_full_ms"] < 5000,
    }
    for name, ok in checks.items():
        print(f"  target {name}: {'met' if ok else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({**models, **rag, "targets": checks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
