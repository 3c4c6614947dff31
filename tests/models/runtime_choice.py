"""The check every builder's runtime choice passes: each kept file measured on every CPU runtime."""

from __future__ import annotations

from collections.abc import Callable

from models import classifier


def assert_runtime_choice(entries: list[dict], figure: str = "max_abs_dp",
                           passes: Callable[[float], bool] = lambda dp: dp <= classifier.PARITY_LIMIT,
                           reference: float = 0.0) -> None:
    """Each file measured on every CPU runtime (parity vs ORT fp32); default = fastest passing choice."""
    fastest = {}
    for entry in entries:
        rows = entry["benchmark"]["runtimes"]
        assert [(r["runtime"], r["inference_precision"]) for r in rows][1:] == [("openvino", "fp32"),
                                                                                ("openvino", "bf16")]
        for row in (r for r in rows if r["available"]):
            assert row["median_ms"] > 0 and row["passes"] is passes(row[figure])
        passing = [r for r in rows if r.get("passes")]
        chosen = min(passing, key=lambda r: r["median_ms"]) if passing else rows[0]
        assert entry["runtime"] == chosen["runtime"]
        assert entry.get("inference_precision") == (chosen["inference_precision"]
                                                    if chosen["runtime"] == "openvino" else None)
        fastest[entry["id"]] = chosen["median_ms"] if passing else float("inf")
    assert entries[0]["benchmark"]["runtimes"][0][figure] == reference  # the reference against itself
    assert [e["id"] for e in entries if e["default"]] == [min(fastest, key=fastest.get)]
