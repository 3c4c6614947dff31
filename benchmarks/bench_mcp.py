"""MCP tool-call overhead over stdio: round trip through the server minus the engine call itself.

A session with RG1 and a few annotations is built in a fresh data dir. Then the same
cheap tools (get_session_status, get_annotations) are timed in-process on an ``Engine``
and through ``python -m engine.mcp`` with the SDK's stdio client. Percentiles over
``--calls`` calls after a warm-up; overhead = MCP p50 - engine p50. That round trip
includes the SDK client's own check of each result against the tool's output schema
(``jsonschema.validate``, which re-checks the schema itself every call); it is timed
apart on the same results and shown as "client check", a cost of this client, not of
the server.

Target: overhead < 10 ms p50.

    .venv/bin/python benchmarks/bench_mcp.py [--pack DIR] [--calls 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import jsonschema
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parents[1]
TARGET_MS = 10.0
TOOLS = ("get_session_status", "get_annotations")


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p90 in milliseconds."""
    deciles = statistics.quantiles(samples, n=10)
    return statistics.median(samples) * 1000, deciles[8] * 1000


def time_sync(call: Callable[[], object], calls: int) -> list[float]:
    for _ in range(20):
        call()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


async def time_async(call: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    for _ in range(20):
        await call()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


def prepare(home: Path, pack: Path, rg1: Path) -> tuple[str, dict[str, list[float]]]:
    """The session, and the in-process timings of each tool."""
    from engine.api import Engine

    with Engine(home=home, model_pack=pack) as engine:
        session_id = engine.create_study_session("bench")["session_id"]
        engine.add_image_to_session(session_id, rg1, auto_analyze=False)
        for index in range(5):
            engine.add_annotation(session_id, annotation_type="bbox", coordinates=[10 * index, 10, 100, 100],
                                  label=f"region {index}")
        return session_id, {tool: time_sync(lambda tool=tool: getattr(engine, tool)(session_id), args.calls)
                            for tool in TOOLS}


async def over_stdio(home: Path, pack: Path, rg1: Path, session_id: str) -> tuple[dict, dict]:
    """Round trips of each tool, and the client's schema check of one of its results."""
    env = {**os.environ, "MEDVISION_HOME": str(home), "MEDVISION_MODEL_PACK": str(pack), "PYTHONPATH": str(REPO)}
    parameters = StdioServerParameters(command=sys.executable, args=["-m", "engine.mcp", "--root", str(rg1.parent)],
                                       env=env, cwd=str(REPO))
    async with stdio_client(parameters) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        schemas = {t.name: t.outputSchema for t in (await client.list_tools()).tools}
        results, checks, last = {}, {}, {}
        for tool in TOOLS:
            async def call(tool: str = tool) -> None:
                result = await client.call_tool(tool, {"session_id": session_id})
                assert not result.isError, result.content
                last[tool] = result.structuredContent
            results[tool] = await time_async(call, args.calls)
            checks[tool] = time_sync(lambda tool=tool: jsonschema.validate(last[tool], schemas[tool]), args.calls)
        return results, checks


def main() -> int:
    pack = Path(args.pack or os.environ.get("MEDVISION_MODEL_PACK", REPO / ".cache" / "modelpack-dev"))
    rg1 = Path(get_testdata_file("RG1_UNCR.dcm"))
    os.environ.setdefault("MEDVISION_KEYRING", "0")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        session_id, engine_samples = prepare(home, pack, rg1)
        mcp_samples, check_samples = anyio.run(over_stdio, home, pack, rg1, session_id)
    print(f"{'tool':<22}{'engine p50':>12}{'engine p90':>12}{'MCP p50':>10}{'MCP p90':>10}{'overhead p50':>14}"
          f"{'client check p50':>18}")
    worst = 0.0
    for tool in TOOLS:
        engine_p50, engine_p90 = percentiles(engine_samples[tool])
        mcp_p50, mcp_p90 = percentiles(mcp_samples[tool])
        overhead = mcp_p50 - engine_p50
        worst = max(worst, overhead)
        print(f"{tool:<22}{engine_p50:>10.2f}ms{engine_p90:>10.2f}ms{mcp_p50:>8.2f}ms{mcp_p90:>8.2f}ms"
              f"{overhead:>12.2f}ms{percentiles(check_samples[tool])[0]:>16.2f}ms")
    verdict = "PASS" if worst < TARGET_MS else "FAIL"
    print(f"overhead p50 (worst tool) {worst:.2f} ms, target < {TARGET_MS:g} ms: {verdict} ({args.calls} calls each)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", help="model pack directory (default: MEDVISION_MODEL_PACK or the dev pack)")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per tool")
    args = parser.parse_args()
    sys.exit(main())
