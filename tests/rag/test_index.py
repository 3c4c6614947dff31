"""The FAISS index on its own: exact vs HNSW, the background switch, serialisation."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

import engine.rag.index as index_module
from engine.errors import MedVisionError
from engine.rag.index import FLAT, HNSW, HnswParams, VectorIndex

DIMENSION = 64


def clustered(count: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Unit vectors around random centres: neighbours are well defined."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIMENSION)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, count)] + 0.3 * rng.standard_normal((count, DIMENSION))
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_flat_search_is_exact_cosine() -> None:
    vectors = clustered(200)
    index = VectorIndex(DIMENSION, hnsw_threshold=10_000)
    index.add(np.arange(1000, 1200), vectors)
    scores, ids = index.search(vectors[:5], 3)
    expected = vectors[:5] @ vectors.T
    assert ids[:, 0].tolist() == list(range(1000, 1005))
    # Same answer as IndexIDMap2's own search (which the wrapper bypasses for speed).
    raw_scores, raw_ids = index._index.search(vectors[:5], 3)
    assert np.array_equal(raw_ids, ids) and np.allclose(raw_scores, scores)
    assert scores[:, 0] == pytest.approx(np.sort(expected, axis=1)[:, -1], abs=1e-5)
    assert index.kind == FLAT
    # ids already present, or given twice, are not added twice
    assert index.add(np.arange(1000, 1010), vectors[:10]) == 0
    assert index.add(np.array([7, 7, 1000]), vectors[:3]) == 1
    assert index.size == 201
    with pytest.raises(MedVisionError):
        HnswParams(m=1)


def test_hnsw_past_the_threshold_gives_the_same_top1_as_flat() -> None:
    vectors = clustered(600, seed=1)
    ids = np.arange(600) * 7 + 3
    flat = VectorIndex(DIMENSION, hnsw_threshold=10_000)
    flat.add(ids, vectors)
    approximate = VectorIndex(DIMENSION, hnsw_threshold=50)
    for start in range(0, 600, 25):  # grows past 50 while adding, like a build
        approximate.add(ids[start : start + 25], vectors[start : start + 25])
    assert approximate.wait_for_rebuild(timeout=60)
    assert approximate.kind == HNSW and approximate.size == 600
    queries = clustered(100, seed=2)
    _, flat_ids = flat.search(queries, 1)
    _, hnsw_ids = approximate.search(queries, 1)
    assert (flat_ids[:, 0] == hnsw_ids[:, 0]).mean() >= 0.99
    _, self_ids = approximate.search(vectors, 1)
    assert (self_ids[:, 0] == ids).all()
    scores, top10 = approximate.search(queries, 10)
    raw_scores, raw_top10 = approximate._index.search(queries, 10)
    assert np.array_equal(top10, raw_top10) and np.allclose(scores, raw_scores)


def test_searches_keep_working_on_the_old_index_during_the_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = clustered(300, seed=3)
    started, release = threading.Event(), threading.Event()
    real_build = index_module.build_hnsw

    def slow_build(*args: object, **kwargs: object) -> object:
        started.set()
        assert release.wait(timeout=30)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(index_module, "build_hnsw", slow_build)
    index = VectorIndex(DIMENSION, hnsw_threshold=100)
    try:
        index.add(np.arange(200), vectors[:200])
        assert started.wait(timeout=10)
        assert index.rebuilding and index.kind == FLAT
        # Search and add while the HNSW graph is being built.
        _, ids = index.search(vectors[:200], 1)
        assert (ids[:, 0] == np.arange(200)).all()
        index.add(np.arange(200, 300), vectors[200:])
        _, ids = index.search(vectors[250:251], 1)
        assert ids[0, 0] == 250
    finally:
        release.set()
    assert index.wait_for_rebuild(timeout=60)
    assert index.kind == HNSW and index.size == 300
    # Vectors added during the rebuild were replayed into the new index.
    _, ids = index.search(vectors, 1)
    assert (ids[:, 0] == np.arange(300)).all()


def test_serialised_index_round_trips_and_foreign_data_is_refused() -> None:
    vectors = clustered(120, seed=4)
    index = VectorIndex(DIMENSION, hnsw_threshold=50, hnsw=HnswParams(m=8, ef_construction=40, ef_search=32))
    index.add(np.arange(120), vectors)
    index.wait_for_rebuild(timeout=60)
    data = index.to_bytes({"generation": 3})
    fresh = VectorIndex(DIMENSION, hnsw_threshold=50)
    header, loaded = fresh.from_bytes(data)
    assert header["generation"] == 3 and header["kind"] == HNSW and header["ntotal"] == 120
    fresh.replace_index(loaded)
    del loaded  # the VectorIndex holds the only reference now
    _, ids = fresh.search(vectors[:10], 1)
    assert ids[:, 0].tolist() == list(range(10))
    with pytest.raises(ValueError):
        fresh.from_bytes(faiss.serialize_index(faiss.IndexFlatIP(DIMENSION)).tobytes())
    with pytest.raises(ValueError):
        VectorIndex(DIMENSION + 1).from_bytes(data)
    with pytest.raises(ValueError):
        fresh.from_bytes(data[: len(data) // 2])


def test_close_cancels_a_running_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "REBUILD_CHUNK", 16)
    index = VectorIndex(DIMENSION, hnsw_threshold=100)
    index.add(np.arange(2000), clustered(2000, seed=5))
    index.close(timeout=30)
    assert not index.rebuilding
    assert index.maybe_start_hnsw() is None  # closed: no new background work
