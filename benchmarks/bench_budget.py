"""Where the milliseconds of ``analyze_with_rag(mode="full")`` on RG1 go, warm: a budget table.

Each warm run's nested timings (the classifier's, the organ segmentation's and the
embedding's own preprocess / inference / postprocess figures, the analysis's decode and
persist, the library search) are laid out as rows, each marked model time (a runtime's
``run``) or not, with its median ms and share of the total; what no timing covers is the
``rest`` row (merging, the prompt, JSON, the stored record). The issue's rule: any
non-model row over 10 % of the total is a target. The agent's per-step budget comes from
its traces: ``benchmarks/bench_agent.py --sections agent``.

    .venv/bin/python benchmarks/bench_budget.py [--pack DIR] [--threads 2] [--runs 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_analysis import reference_library  # noqa: E402

#: analyze_with_rag(full) warm on RG1 (issue 19).
TARGET_MS = 1500.0


def budget_rows(result: dict) -> dict[str, tuple[float, bool]]:
    """``{row: (ms, is_model_time)}`` of one ``analyze_with_rag`` result."""
    stages = result["metadata"]["stages_ms"]
    classify = result["classification"]["timings_ms"]
    segment = result["segmentation"]["timings_ms"]
    embed = result["similar_cases"]["search_metadata"]["embedding_timings_ms"]
    rows = {
        "classify: preprocess": (classify["preprocess"], False),
        "classify: inference": (classify["inference"], True),
        "segment: preprocess": (segment["preprocess"], False),
        "segment: inference": (segment["inference"], True),
        "segment: masks, RLE, CTR": (segment["postprocess"], False),
    }
    covered = sum(ms for ms, _ in rows.values())
    rows["analysis: decode, quality, persist"] = (stages["analyze_total"] - covered, False)
    rows["embed: preprocess"] = (embed["preprocess"], False)
    rows["embed: inference"] = (embed["inference"], True)
    rows["library search"] = (stages["rag_search"] - embed["preprocess"] - embed["inference"], False)
    rows["rest: merge, prompt, JSON, store"] = (stages["total"] - stages["analyze_total"] - stages["rag_search"], False)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default=os.environ.get("MEDVISION_MODEL_PACK", ".cache/modelpack-dev"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()

    from pydicom.data import get_testdata_file

    from engine.api import Engine
    from engine.config import Settings

    with tempfile.TemporaryDirectory(prefix="mv-bench-budget-") as tmp:
        home = Path(tmp)
        settings = Settings(home=home, model_pack=Path(args.pack).resolve(), threads=args.threads,
                            providers=("CPUExecutionProvider",), use_keyring=False)
        with Engine(settings) as engine:
            engine.build_rag_index(data_path=reference_library(home / "cases"))
            session = engine.create_study_session("bench")["session_id"]
            image = engine.add_image_to_session(session, get_testdata_file("RG1_UNCR.dcm"), auto_analyze=False)
            engine.analyze_with_rag(session, image["image_id"], mode="full")  # loads every model
            runs = [engine.analyze_with_rag(session, image["image_id"], mode="full") for _ in range(args.runs)]
    tables = [budget_rows(r) for r in runs]
    totals = [r["metadata"]["stages_ms"]["total"] for r in runs]
    total = float(np.median(totals))
    backends = {key: (runs[0][key] or {}).get("model", {}) for key in ("classification", "segmentation")}
    backends["embedding"] = runs[0]["similar_cases"].get("model", {})
    print(f"analyze_with_rag(full) on RG1, warm, {args.threads} threads, {args.runs} runs, "
          f"load average {os.getloadavg()[0]:.1f}")
    for key, model in backends.items():
        print(f"  {key}: {model.get('id')} on {model.get('backend') or model.get('device')}")
    print(f"  {'row':<38}{'median ms':>10}{'share':>8}  kind")
    figures = {}
    for row in tables[0]:
        ms = float(np.median([t[row][0] for t in tables]))
        model_time = tables[0][row][1]
        share = ms / total
        flag = "" if model_time or share <= 0.10 else "  > 10 % (target)"
        figures[row] = {"ms": round(ms, 1), "share": round(share, 3), "model": model_time}
        print(f"  {row:<38}{ms:>10.1f}{share:>8.1%}  {'model' if model_time else 'other'}{flag}")
    model_ms = sum(v["ms"] for v in figures.values() if v["model"])
    print(f"  {'total':<38}{total:>10.1f}   (runs {', '.join(f'{t:.0f}' for t in totals)})")
    print(f"  model time {model_ms:.0f} ms ({model_ms / total:.0%}), other {total - model_ms:.0f} ms "
          f"({(total - model_ms) / total:.0%})")
    print(f"  target < {TARGET_MS:.0f} ms: {'met' if total < TARGET_MS else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"total_ms": total, "runs_ms": totals, "rows": figures,
                                               "backends": backends}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
