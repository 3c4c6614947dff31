"""Packaging figures: frozen vs. venv cold start to first paint, plus the build/install
timings the packaging tests recorded (.cache/packaging/timings.json).

    .venv/bin/python benchmarks/bench_packaging.py [--runs 5] [--app DIR]

"Cold" runs drop the page cache first when allowed (root, /proc/sys/vm/drop_caches);
otherwise they are first-in-a-row runs and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDED_TARGETS_S = {"bundle_install_plus_first_analysis_s": 180}


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def first_paint(cmd: list[str], cold: bool, home: Path) -> tuple[float, bool]:
    """Launch -> the desktop main window's first paint (``--exit-after-paint`` line)."""
    dropped = drop_caches() if cold else False
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen"),
           "MEDVISION_HOME": str(home), "MEDVISION_KEYRING": "0"}
    env.setdefault("MEDVISION_MODEL_PACK", str(REPO / ".cache" / "modelpack-dev"))
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=home)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - started
    _, err = proc.communicate(timeout=120)
    if not line.startswith("first_paint_ms="):
        raise SystemExit(f"{cmd[0]}: no first paint reported: {line!r} {err[-2000:]}")
    return elapsed, dropped


def find_app() -> Path | None:
    candidates = sorted((REPO / ".cache" / "packaging").glob("frozen-*/dist/medvision")) + [
        REPO / ".cache" / "frozen" / "dist" / "medvision"]
    return next((c for c in candidates if (c / "medvision").is_file()), None)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--app", type=Path, help="frozen app folder (default: the cached test build)")
    args = parser.parse_args()
    app = args.app or find_app()
    if app is None:
        raise SystemExit("no frozen app: run packaging/freeze.sh or the packaging tests first")
    variants = {
        "frozen": [str(app / "medvision"), "desktop", "--exit-after-paint"],
        "venv": [sys.executable, "-m", "desktop", "--exit-after-paint"],
    }
    results = {}
    home = Path(tempfile.mkdtemp(prefix="bench-packaging-"))
    for name, cmd in variants.items():
        cold, dropped = first_paint(cmd, cold=True, home=home)
        warm = [first_paint(cmd, cold=False, home=home)[0] for _ in range(args.runs)]
        results[name] = {"cold_s": round(cold, 3), "page_cache_dropped": dropped,
                         "warm_median_s": round(statistics.median(warm), 3),
                         "warm_min_s": round(min(warm), 3), "warm_max_s": round(max(warm), 3)}
    print(f"desktop first paint (launch -> main window painted), {args.runs} warm runs each")
    for name, row in results.items():
        print(f"  {name:7s} cold {row['cold_s']:.2f} s (cache dropped: {row['page_cache_dropped']}), "
              f"warm median {row['warm_median_s']:.2f} s [{row['warm_min_s']:.2f}-{row['warm_max_s']:.2f}]")
    ratio = results["frozen"]["warm_median_s"] / results["venv"]["warm_median_s"]
    print(f"  frozen / venv warm median: {ratio:.2f}x   target: frozen < 3 s")
    timings = REPO / ".cache" / "packaging" / "timings.json"
    if timings.is_file():
        print("recorded by tests/packaging:")
        for key, value in sorted(json.loads(timings.read_text()).items()):
            target = RECORDED_TARGETS_S.get(key)
            verdict = "" if target is None else f"   target < {target:.0f} s: {'met' if value < target else 'MISSED'}"
            print(f"  {key:40s} {value:8.1f} s{verdict}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
