"""Similar-case search: exact (IndexFlatIP) vs HNSW on 100k clustered 768-d vectors.

Synthetic unit vectors around 1000 Gaussian cluster centres (so nearest neighbours are
well defined and recall means something), queries drawn the same way but not in the
index. Reported, single query at a time with ``faiss.omp_set_num_threads(threads)``:

* build time of both indexes (HNSW through the library's own chunked builder),
* p50/p95 latency of a top-10 search, flat vs HNSW (and HNSW through ``VectorIndex``),
* recall@10 of HNSW against the exact top-10 over all queries, for a sweep of efSearch,
* with ``--library``: a ReferenceLibrary whose encrypted database holds every vector,
  opened without an index file (recovery: read vectors, exact index, HNSW in the
  background), then the end-to-end ``search`` latency (FAISS + case lookups).

Targets: p50 < 5 ms and recall@10 >= 0.95 with the library defaults.

    .venv/bin/python benchmarks/bench_rag.py [--vectors 100000] [--threads 2] [--library] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.rag.index import (  # noqa: E402 - after the path tweak, like the other benchmarks
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    DEFAULT_HNSW_M,
    HnswParams,
    VectorIndex,
    build_hnsw,
    new_flat_index,
)

TARGET_P50_MS = 5.0
TARGET_RECALL = 0.95
TOP_K = 10


def clustered_vectors(
    count: int, queries: int, dimension: int, clusters: int, sigma: float, seed: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Index and query vectors around shared centres; also the mean within-cluster cosine."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimension), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        members = rng.integers(0, clusters, n)
        vectors = centres[members] + sigma * rng.standard_normal((n, dimension), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors, members

    data, members = draw(count)
    query, _ = draw(queries)
    same = data[members == members[0]]
    within = float((same @ same.T)[np.triu_indices(len(same), 1)].mean()) if len(same) > 1 else float("nan")
    return data, query, within


def latencies_ms(search, queries: np.ndarray, limit: int) -> np.ndarray:
    """Single-query latencies (ms) of ``search(query_row)`` over the first ``limit`` queries."""
    samples = []
    for row in queries[:limit]:
        started = time.perf_counter()
        search(row[None, :])
        samples.append(time.perf_counter() - started)
    return np.asarray(samples) * 1000


def interleaved_latencies(
    runners: dict[str, tuple], queries: np.ndarray, rounds: int
) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """Latencies per runner ``name -> (setup, search, per_round)``, measured in interleaved rounds.

    Interleaving spreads the noise of a shared machine over every runner alike; returns
    all samples and the median of each round.
    """
    samples: dict[str, list[float]] = {name: [] for name in runners}
    round_p50: dict[str, list[float]] = {name: [] for name in runners}
    for number in range(rounds):
        for name, (setup, search, per_round) in runners.items():
            setup()
            start = (number * per_round) % max(1, len(queries) - per_round)
            measured = latencies_ms(search, queries[start:], per_round)
            samples[name].extend(measured.tolist())
            round_p50[name].append(float(np.median(measured)))
    return {name: np.asarray(values) for name, values in samples.items()}, round_p50


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k found."""
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def summary(samples: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.median(samples)), "p95_ms": float(np.percentile(samples, 95))}


def bench_indexes(args: argparse.Namespace) -> tuple[dict, np.ndarray, np.ndarray, HnswParams]:
    """Flat vs HNSW on the synthetic vectors; returns the figures and the data for the library run."""
    data, queries, within = clustered_vectors(
        args.vectors, args.queries, args.dimension, args.clusters, args.sigma, args.seed
    )
    ids = np.arange(len(data), dtype=np.int64)
    report: dict = {"vectors": len(data), "dimension": args.dimension, "clusters": args.clusters,
                    "sigma": args.sigma, "within_cluster_cosine": within, "threads": args.threads,
                    "queries": len(queries), "top_k": TOP_K}
    print(f"{len(data)} vectors x {args.dimension}, {args.clusters} clusters (mean within-cluster "
          f"cosine {within:.2f}), {len(queries)} queries, top_k={TOP_K}, {args.threads} threads")

    started = time.perf_counter()
    flat = new_flat_index(args.dimension)
    flat.add_with_ids(data, ids)
    report["flat_build_s"] = time.perf_counter() - started
    started = time.perf_counter()
    _, truth = flat.search(queries, TOP_K)
    report["flat_batch_search_s"] = time.perf_counter() - started

    params = HnswParams(m=args.m, ef_construction=args.ef_construction, ef_search=args.ef_search)
    started = time.perf_counter()
    hnsw = build_hnsw(args.dimension, params, ids, data)
    report["hnsw_build_s"] = time.perf_counter() - started
    report["hnsw"] = {"m": params.m, "ef_construction": params.ef_construction, "ef_search": params.ef_search}
    print(f"build: flat {report['flat_build_s']:.2f} s, HNSW (M={params.m}, "
          f"efConstruction={params.ef_construction}) {report['hnsw_build_s']:.1f} s")

    graph = faiss.downcast_index(hnsw.index)
    efs = sorted({*args.sweep, params.ef_search})
    found_by_ef = {}
    for ef_search in efs:
        graph.hnsw.efSearch = ef_search
        found_by_ef[ef_search] = hnsw.search(queries, TOP_K)[1]
    library_hnsw = VectorIndex(args.dimension, hnsw_threshold=1, hnsw=params)
    library_hnsw.replace_index(hnsw)
    library_flat = VectorIndex(args.dimension, hnsw_threshold=len(data) + 1)
    library_flat.replace_index(flat)

    def set_ef(value: int):
        def setup() -> None:
            graph.hnsw.efSearch = value
        return setup

    def no_setup() -> None:
        graph.hnsw.efSearch = params.ef_search

    per_round = max(1, args.latency_queries // args.rounds)
    flat_per_round = max(1, args.flat_latency_queries // args.rounds)
    # The sweep times the HNSW graph itself; the rows below compare the raw FAISS call
    # (IndexIDMap2.search) with the library's path (VectorIndex.search).
    runners = {f"hnsw_ef{ef}": (set_ef(ef), lambda q: graph.search(q, TOP_K), per_round // 2) for ef in efs}
    runners["flat"] = (no_setup, lambda q: flat.search(q, TOP_K), flat_per_round)
    runners["vector_index_flat"] = (no_setup, lambda q: library_flat.search(q, TOP_K), flat_per_round)
    runners["hnsw"] = (no_setup, lambda q: hnsw.search(q, TOP_K), per_round)
    runners["vector_index"] = (no_setup, lambda q: library_hnsw.search(q, TOP_K), per_round)
    load_before = os.getloadavg()[0]
    samples, round_p50 = interleaved_latencies(runners, queries, args.rounds)
    report["load_average"] = [load_before, os.getloadavg()[0]]

    sweep = []
    print(f"efSearch sweep (recall over {len(queries)} queries; latency over {args.rounds} interleaved rounds):")
    for ef_search in efs:
        timing = summary(samples[f"hnsw_ef{ef_search}"])
        sweep.append({"ef_search": ef_search, "recall_at_10": recall_at_k(found_by_ef[ef_search], truth), **timing})
        mark = "  <- library default" if ef_search == params.ef_search else ""
        print(f"  HNSW efSearch={ef_search:4d}: recall@10 {sweep[-1]['recall_at_10']:.4f}, "
              f"p50 {timing['p50_ms']:.3f} ms, p95 {timing['p95_ms']:.3f} ms{mark}")
    report["hnsw_sweep"] = sweep
    timings = {name: summary(samples[name]) for name in ("flat", "vector_index_flat", "hnsw", "vector_index")}
    flat_timing, hnsw_timing = timings["vector_index_flat"], timings["vector_index"]
    _, library_found = library_hnsw.search(queries, TOP_K)
    recall = recall_at_k(library_found, truth)
    report.update(latency=timings, recall_at_10=recall, round_p50_ms=round_p50)
    print(f"latency top-{TOP_K}, one query at a time, {args.rounds} interleaved rounds "
          f"(load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")
    rows = (("flat, IndexIDMap2.search", "flat"), ("flat, VectorIndex.search", "vector_index_flat"),
            ("HNSW, IndexIDMap2.search", "hnsw"), ("HNSW, VectorIndex.search", "vector_index"))
    for label, name in rows:
        spread = round_p50[name]
        print(f"  {label:26s} p50 {timings[name]['p50_ms']:8.3f} ms  p95 {timings[name]['p95_ms']:8.3f} ms  "
              f"({len(samples[name])} queries; per-round p50 {min(spread):.3f}..{max(spread):.3f} ms)")
    print(f"  speed-up HNSW vs flat (VectorIndex, p50): {flat_timing['p50_ms'] / hnsw_timing['p50_ms']:.0f}x")
    print(f"recall@10 HNSW (efSearch={params.ef_search}, VectorIndex) vs exact: {recall:.4f}")
    report["targets"] = {
        "p50_ms": TARGET_P50_MS, "recall_at_10": TARGET_RECALL,
        "hnsw_p50_met": hnsw_timing["p50_ms"] < TARGET_P50_MS,
        "flat_p50_met": flat_timing["p50_ms"] < TARGET_P50_MS,
        "recall_met": recall >= TARGET_RECALL,
    }
    print(f"targets: HNSW p50 < {TARGET_P50_MS} ms: {'MET' if report['targets']['hnsw_p50_met'] else 'NOT MET'}; "
          f"recall@10 >= {TARGET_RECALL}: {'MET' if report['targets']['recall_met'] else 'NOT MET'}; "
          f"(flat p50 < {TARGET_P50_MS} ms: {'met' if report['targets']['flat_p50_met'] else 'not met'})")
    return report, data, queries, params


def bench_library(args: argparse.Namespace, data: np.ndarray, queries: np.ndarray, params: HnswParams) -> dict:
    """Recovery from the encrypted database and end-to-end ``ReferenceLibrary.search``."""
    from engine.rag.library import ReferenceLibrary
    from engine.rag.reference_db import META_CASE_COUNT, META_DIMENSION, META_EMBEDDER_ID
    from engine.store.store import now_iso

    def no_embedder(image: object) -> np.ndarray:
        raise RuntimeError("the benchmark never embeds images")

    embedder_id = "bench-synthetic"
    labels = ("Effusion", "Cardiomegaly", "Nodule")
    with tempfile.TemporaryDirectory() as tmp:
        home, key = Path(tmp), os.urandom(32)
        library = ReferenceLibrary(home, key, embedder=no_embedder, embedder_id=embedder_id,
                                   dimension=args.dimension, hnsw=params)
        started = time.perf_counter()
        # Bulk insert in one transaction (a real build commits case by case).
        with library._db.db.transaction() as tx:
            now = now_iso()
            for start in range(0, len(data), 5000):
                rows = range(start, min(start + 5000, len(data)))
                tx.executemany(
                    "INSERT INTO cases(case_id, source, dedup_key, sha256, embedding, embedder_id, created_at)"
                    " VALUES (?, 'custom', ?, ?, ?, ?, ?)",
                    [(f"case-{i}", f"sha256:{i:064x}", f"{i:064x}", data[i].tobytes(), embedder_id, now)
                     for i in rows],
                )
                tx.executemany("INSERT INTO reports(case_id, section, text) VALUES (?, 'findings', ?)",
                               [(f"case-{i}", f"Synthetic findings of case {i}.") for i in rows])
                tx.executemany("INSERT INTO labels(case_id, pathology, value) VALUES (?, ?, ?)",
                               [(f"case-{i}", labels[i % 3], (i % 3) - 1) for i in rows])
                tx.executemany("INSERT INTO index_entries(case_id) VALUES (?)", [(f"case-{i}",) for i in rows])
            for key_name, value in ((META_CASE_COUNT, len(data)), (META_EMBEDDER_ID, embedder_id),
                                    (META_DIMENSION, args.dimension)):
                tx.execute("INSERT OR REPLACE INTO library_meta(key, value) VALUES (?, ?)", (key_name, str(value)))
        insert_s = time.perf_counter() - started
        library.close()
        size_mb = sum(p.stat().st_size for p in home.rglob("*") if p.is_file()) / 1e6

        started = time.perf_counter()
        library = ReferenceLibrary(home, key, embedder=no_embedder, embedder_id=embedder_id,
                                   dimension=args.dimension, hnsw=params)
        open_s = time.perf_counter() - started
        recovery = library.index_recovery
        flat_timing = summary(latencies_ms(lambda q: library.search(q[0], top_k=TOP_K), queries,
                                           args.flat_latency_queries))
        started = time.perf_counter()
        library.wait_for_index()
        hnsw_wait_s = time.perf_counter() - started
        hnsw_timing = summary(latencies_ms(lambda q: library.search(q[0], top_k=TOP_K), queries,
                                           args.latency_queries))
        index_type = library.stats()["index_type"]
        library.close()
        started = time.perf_counter()
        library = ReferenceLibrary(home, key, embedder=no_embedder, embedder_id=embedder_id,
                                   dimension=args.dimension, hnsw=params)
        reopen_s = time.perf_counter() - started
        reopened_type, reopened_recovery = library.stats()["index_type"], library.index_recovery
        library.close()
    result = {"bulk_insert_s": insert_s, "data_mb": size_mb, "open_without_index_s": open_s,
              "recovery": recovery, "search_flat_during_rebuild": flat_timing,
              "hnsw_ready_after_s": hnsw_wait_s, "index_type": index_type, "search_hnsw": hnsw_timing,
              "reopen_with_saved_hnsw_s": reopen_s, "reopened_index_type": reopened_type,
              "reopened_recovery": reopened_recovery}
    print(f"library ({len(data)} cases, {size_mb:.0f} MB encrypted on disk):")
    print(f"  open without an index file: {open_s:.1f} s (recovery: {recovery}); HNSW ready "
          f"{hnsw_wait_s:.1f} s later in the background")
    print(f"  search (exact, during the rebuild) p50 {flat_timing['p50_ms']:.2f} ms, "
          f"p95 {flat_timing['p95_ms']:.2f} ms")
    print(f"  search ({index_type}) p50 {hnsw_timing['p50_ms']:.3f} ms, p95 {hnsw_timing['p95_ms']:.3f} ms "
          "(FAISS + case, report and label lookups + vote)")
    print(f"  reopen with the saved encrypted {reopened_type} index: {reopen_s:.1f} s "
          f"(recovery: {reopened_recovery})")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dimension", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=0.05, help="per-dimension noise around a centre")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=1000)
    parser.add_argument("--flat-latency-queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--m", type=int, default=DEFAULT_HNSW_M)
    parser.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION)
    parser.add_argument("--ef-search", type=int, default=DEFAULT_EF_SEARCH)
    parser.add_argument("--sweep", type=int, nargs="*", default=[16, 32, 64, 128])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--library", action="store_true", help="also time the encrypted ReferenceLibrary")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    report, data, queries, params = bench_indexes(args)  # the indexes are freed on return
    if args.library:
        report["library"] = bench_library(args, data, queries, params)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    targets = report["targets"]
    return 0 if targets["hnsw_p50_met"] and targets["recall_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
