"""What the audit trail costs: analyze_image and DICOM node receive, with and without it, same run.

Two engines over two fresh data directories, one with ``Settings.audit_enabled`` off
(the switch exists for this script only). ``analyze_image`` on RG1 (classify, warm) is
timed alternately on both, the order reversed every round (medians). Then two in-process
nodes, one per engine, take the same fresh series of CT-sized instances from DCMTK ``storescu`` over one association,
alternately, round after round (a fresh series each round, so nothing is a duplicate);
the median seconds per round give the throughput, with the spread of the rounds. On a busy
machine that spread is wider than the few percent to be measured, so the script also measures
the audit's own work and divides it by the call it rides on: one synchronous append (one
transaction with fsync, what ``analyze_image`` pays), the ingest's part (building and
queueing the record when an instance's rows are written) and the writer thread's work per record in its batches.

    .venv/bin/python benchmarks/bench_audit.py [--repeats 30] [--rounds 5] [--count 60]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench_dicom_node import make_series

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def overhead(on: float, off: float) -> str:
    return f"{(on - off) / off * 100:+.2f} %"


def bench_analyze(engines: dict, repeats: int) -> dict[str, float]:
    from pydicom.data import get_testdata_file

    rg1 = get_testdata_file("RG1_UNCR.dcm")
    runs = {}
    for name, engine in engines.items():
        session = engine.create_study_session("bench")["session_id"]
        image = engine.add_image_to_session(session, rg1, auto_analyze=False)["image_id"]
        runs[name] = (lambda e, s, i: lambda: e.analyze_image(s, i, segment=False))(engine, session, image)
    return alternating_ms(runs, repeats)


def alternating_ms(runs: dict, repeats: int) -> dict[str, float]:
    """Median ms of each callable, the order reversed every round (A B, B A, ...): the first call
    of a round was measured slower by several percent here, whichever engine made it."""
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(repeats):
        for name, run in (list(runs.items()) if index % 2 else list(reversed(runs.items()))):
            started = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_receive(engines: dict, work: Path, rounds: int, count: int) -> dict[str, list[float]]:
    from dicom_node.config import NodeConfig
    from dicom_node.scp import Node

    nodes = {name: Node(NodeConfig(port=0, analyze=False), engine).start() for name, engine in engines.items()}
    seconds: dict[str, list[float]] = {name: [] for name in nodes}
    try:
        for index in range(rounds + 1):  # round 0 warms both up and is not counted
            files = make_series(work / f"series{index}", count)
            order = list(nodes.items()) if index % 2 else list(reversed(nodes.items()))
            for name, node in order:
                started = time.perf_counter()
                result = subprocess.run(["storescu", "127.0.0.1", str(node.port), *map(str, files)],
                                        capture_output=True, text=True)
                elapsed = time.perf_counter() - started
                if result.returncode != 0:
                    raise RuntimeError(f"storescu failed: {result.stderr[-300:]}")
                if index:
                    seconds[name].append(elapsed)
            for file in files:
                file.unlink()
    finally:
        for node in nodes.values():
            node.stop()
    return seconds


def bench_append(engine, repeats: int = 300) -> tuple[float, float, float]:
    """(ms of one synchronous append, ms of the ingest's record_stored (build and queue), ms per record
    in the audit writer's batches of 50)."""
    from dicom_node.audit import record_stored
    from engine.store.audit import AuditEntry, AuditEvent

    log = engine.store.audit
    entry = AuditEntry("api", AuditEvent.QUERY, "E", "bench", session_id="s")
    started = time.perf_counter()
    for _ in range(repeats):
        log.record(entry)
    single = (time.perf_counter() - started) / repeats * 1000
    instance = {"record": {"study_instance_uid": "1.2.3", "sop_instance_uid": "1.2.3.4"}, "calling_ae": "BENCH",
                "received_at": "2026-01-01T00:00:00.000+00:00"}
    done = {"status": "stored", "session_id": "s", "image_id": "i"}
    started = time.perf_counter()
    for _ in range(repeats):
        record_stored(engine.store, instance, done)
    handler = (time.perf_counter() - started) / repeats * 1000
    log.flush()
    started = time.perf_counter()
    for _ in range(repeats // 50):
        log.append([entry] * 50)
    batched = (time.perf_counter() - started) / (repeats // 50 * 50) * 1000
    return single, handler, batched


def spread(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"rounds {low:.2f}-{high:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=60)
    args = parser.parse_args(argv)
    from engine.api import Engine
    from engine.config import Settings

    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        work = Path(tmp)
        engines = {audited: Engine(replace(Settings.from_env(work / f"home-{audited}"), threads=2,
                                           audit_enabled=audited == "audit on"))
                   for audited in ("audit on", "audit off")}
        try:
            analyze = bench_analyze(engines, args.repeats)
            receive = bench_receive(engines, work, args.rounds, args.count)
            single, handler, batched = bench_append(engines["audit on"])
            records = sum(1 for _ in engines["audit on"].audit.log.records())
            assert engines["audit on"].audit.log.verify().ok and engines["audit off"].audit.log.head() is None
        finally:
            for engine in engines.values():
                engine.close()
    on, off = analyze["audit on"], analyze["audit off"]
    print(f"analyze_image RG1 (classify, warm), median of {args.repeats}, order alternating:")
    print(f"  audit on {on:8.2f} ms   audit off {off:8.2f} ms   measured {overhead(on, off)}")
    print(f"  the audit's own work: one append {single:.3f} ms = {single / off * 100:.2f} % of the call")
    on, off = statistics.median(receive["audit on"]), statistics.median(receive["audit off"])
    per_instance = off / args.count * 1000
    print(f"node receive, {args.count} CT-sized instances per round, one storescu association, median of "
          f"{args.rounds} rounds:")
    print(f"  audit on {args.count / on:7.1f} instances/s ({spread(receive['audit on'])})   audit off "
          f"{args.count / off:7.1f} instances/s ({spread(receive['audit off'])})   measured {overhead(on, off)}")
    print(f"  the audit's own work per instance: queueing {handler:.3f} ms + writer {batched:.3f} ms = "
          f"{(handler + batched) / per_instance * 100:.2f} % of {per_instance:.2f} ms per instance")
    print(f"{records} records written, chain verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
