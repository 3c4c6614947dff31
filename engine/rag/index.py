"""The FAISS vector index of the reference library: exact while small, HNSW past a size.

Vectors are L2-normalised float32, so the inner product is the cosine similarity.
Below ``hnsw_threshold`` vectors the index is ``IndexIDMap2(IndexFlatIP)`` (exact);
once it reaches the threshold an ``IndexIDMap2(IndexHNSWFlat(d, M, METRIC_INNER_PRODUCT))``
is built in a background thread from a snapshot of the vectors, while searches and
additions keep using the exact index; vectors added meanwhile are replayed into the
new index, which is then swapped in under the lock. The ids are the database's
``index_entries.faiss_id``.

The serialised form (:meth:`VectorIndex.to_bytes`) is a small JSON header plus
``faiss.serialize_index``; the library encrypts it before it touches the disk.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from engine.errors import ErrorCode, MedVisionError

log = logging.getLogger(__name__)

DEFAULT_DIMENSION = 768
DEFAULT_HNSW_THRESHOLD = 20_000
# Tuned with benchmarks/bench_rag.py (100k normalised 768-d vectors, 2 threads): with
# 1000 clusters recall@10 is 1.000 from efSearch 64; with 100 large clusters (harder:
# neighbours inside a cluster are set by noise) 0.975 at 64 and 0.998 at 128. 128 keeps
# that margin for real embeddings at p50 < 1 ms per query (flat: ~60 ms).
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 80
DEFAULT_EF_SEARCH = 128
# Vectors per add() call while building HNSW, so a cancel is noticed quickly.
REBUILD_CHUNK = 2048

INDEX_MAGIC = b"MVRAGIX1"
_HEADER_LENGTH = struct.Struct(">I")
FLAT, HNSW = "flat", "hnsw"


@dataclass(frozen=True)
class HnswParams:
    """HNSW graph parameters: ``m`` links per node, build and search beam widths."""

    m: int = DEFAULT_HNSW_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    ef_search: int = DEFAULT_EF_SEARCH

    def __post_init__(self) -> None:
        for name, low in (("m", 2), ("ef_construction", 1), ("ef_search", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MedVisionError(
                    ErrorCode.INVALID_ARGUMENT, f"HNSW {name} must be an integer of at least {low}."
                )


@dataclass
class _Rebuild:
    """A background HNSW build: its thread, cancel flag and the additions to replay."""

    thread: threading.Thread | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def new_flat_index(dimension: int) -> faiss.Index:
    """An empty exact inner-product index with external ids."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def new_hnsw_index(dimension: int, params: HnswParams) -> faiss.Index:
    """An empty HNSW inner-product index with external ids."""
    graph = faiss.IndexHNSWFlat(dimension, params.m, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = params.ef_construction
    graph.hnsw.efSearch = params.ef_search
    return faiss.IndexIDMap2(graph)


def build_hnsw(
    dimension: int, params: HnswParams, ids: np.ndarray, vectors: np.ndarray,
    cancel: threading.Event | None = None,
) -> faiss.Index | None:
    """Build an HNSW index over ``vectors`` in chunks; None if ``cancel`` was set."""
    index = new_hnsw_index(dimension, params)
    for start in range(0, len(ids), REBUILD_CHUNK):
        if cancel is not None and cancel.is_set():
            return None
        stop = start + REBUILD_CHUNK
        index.add_with_ids(vectors[start:stop], ids[start:stop])
    return index


def faiss_ids_of(index: faiss.Index) -> np.ndarray:
    """The external ids of an ``IndexIDMap2`` (int64, in insertion order)."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def _kind_of(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index)
    return HNSW if isinstance(inner, faiss.IndexHNSWFlat) else FLAT


class VectorIndex:
    """Thread-safe FAISS index with ids, switching from exact to HNSW past a size.

    Parameters
    ----------
    dimension:
        Vector length (768 for RAD-DINO).
    hnsw_threshold:
        Size from which the index is HNSW; below it search is exact.
    hnsw:
        HNSW parameters (M, efConstruction, efSearch).
    on_swap:
        Called (from the rebuild thread, outside the lock) after an HNSW rebuild is
        swapped in, e.g. to persist the new index.
    """

    def __init__(
        self,
        dimension: int = DEFAULT_DIMENSION,
        *,
        hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
        hnsw: HnswParams | None = None,
        on_swap: Callable[[], None] | None = None,
    ) -> None:
        if hnsw_threshold < 1:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "hnsw_threshold must be at least 1.")
        self.dimension = dimension
        self.hnsw_threshold = hnsw_threshold
        self.hnsw = hnsw or HnswParams()
        self.on_swap = on_swap
        self._lock = threading.RLock()
        self._index = new_flat_index(dimension)
        self._ids: set[int] = set()
        self._rebuild: _Rebuild | None = None
        self._closed = False
        self.version = 0  # bumped on every change; the library saves when it moved

    # -- state -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of vectors."""
        return int(self._index.ntotal)

    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or ``"hnsw"``."""
        return _kind_of(self._index)

    @property
    def rebuilding(self) -> bool:
        """True while a background HNSW build is under way."""
        return self._rebuild is not None

    def ids(self) -> np.ndarray:
        """The ids in the index (int64, unordered)."""
        with self._lock:
            return np.fromiter(self._ids, dtype=np.int64, count=len(self._ids))

    def __contains__(self, faiss_id: int) -> bool:
        return int(faiss_id) in self._ids

    # -- changes -----------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> int:
        """Add vectors under their ids, skipping ids already present; returns how many were added.

        May start the background HNSW rebuild when the size reaches the threshold.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dimension)
        ids, first = np.unique(ids, return_index=True)  # an id given twice is added once
        vectors = vectors[first]
        with self._lock:
            fresh = np.array([i not in self._ids for i in ids.tolist()], dtype=bool)
            if not fresh.any():
                return 0
            ids, vectors = ids[fresh], vectors[fresh]
            self._index.add_with_ids(vectors, ids)
            self._ids.update(ids.tolist())
            if self._rebuild is not None:
                self._rebuild.pending.append((ids.copy(), vectors.copy()))
            self.version += 1
        self.maybe_start_hnsw()
        return int(len(ids))

    def reset(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole content (exact index; HNSW follows in the background if large)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dimension)
        fresh = new_flat_index(self.dimension)
        if len(ids):
            fresh.add_with_ids(vectors, ids)
        with self._lock:
            self._cancel_rebuild_locked()
            self._index = fresh
            self._ids = set(ids.tolist())
            self.version += 1
        self.maybe_start_hnsw()

    def replace_index(self, index: faiss.Index) -> None:
        """Adopt a deserialised FAISS index (checked by :meth:`from_bytes`)."""
        ids = faiss_ids_of(index)
        self._apply_ef_search(index)
        with self._lock:
            self._cancel_rebuild_locked()
            self._index = index
            self._ids = set(ids.tolist())
            self.version += 1

    # -- search ------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products and ids per query row; missing hits have id -1.

        Searches the inner index and maps positions to ids with numpy, rather than
        calling ``IndexIDMap2.search``: that one translates labels in an OpenMP
        parallel loop, and on a busy machine waiting for the second OpenMP thread at
        its barrier costs a scheduler time slice per query (measured: p50 0.3 ms ->
        12-16 ms for a single HNSW query with 2 threads on a loaded 2-core machine).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        with self._lock:
            count = int(self._index.ntotal)
            if count == 0:
                empty = np.full((len(queries), k), -1, dtype=np.int64)
                return np.zeros((len(queries), k), dtype=np.float32), empty
            scores, positions = faiss.downcast_index(self._index.index).search(queries, k)
            # A view of the id map (no copy); used before the lock is released.
            id_map = faiss.rev_swig_ptr(self._index.id_map.data(), count)
            ids = np.where(positions >= 0, id_map[np.clip(positions, 0, count - 1)], -1)
        return scores, ids.astype(np.int64, copy=False)

    # -- HNSW switch -------------------------------------------------------------------
    def maybe_start_hnsw(self) -> threading.Thread | None:
        """Start the background HNSW build if the exact index reached the threshold."""
        with self._lock:
            if (self._closed or self._rebuild is not None or self.size < self.hnsw_threshold
                    or self.kind == HNSW):
                return None
            count = self.size
            ids = faiss_ids_of(self._index)
            vectors = self._index.index.reconstruct_n(0, count)
            job = _Rebuild()
            job.thread = threading.Thread(
                target=self._run_rebuild, args=(job, ids, vectors), name="rag-hnsw-rebuild", daemon=True
            )
            self._rebuild = job
        log.info("reference index reached %d vectors: building HNSW in the background", count)
        job.thread.start()
        return job.thread

    def _run_rebuild(self, job: _Rebuild, ids: np.ndarray, vectors: np.ndarray) -> None:
        try:
            built = build_hnsw(self.dimension, self.hnsw, ids, vectors, job.cancel)
        except (RuntimeError, MemoryError) as exc:
            log.error("building the HNSW index failed (%s); staying on the exact index", exc)
            built = None
        with self._lock:
            if self._rebuild is not job:
                return
            self._rebuild = None
            if built is None or job.cancel.is_set():
                return
            for pending_ids, pending_vectors in job.pending:
                built.add_with_ids(pending_vectors, pending_ids)
            self._index = built
            self.version += 1
        log.info("reference index switched to HNSW (%d vectors)", built.ntotal)
        if self.on_swap is not None:
            self.on_swap()

    def wait_for_rebuild(self, timeout: float | None = None) -> bool:
        """Wait for a background rebuild to finish; True if none is running afterwards."""
        job = self._rebuild
        if job is not None and job.thread is not None:
            job.thread.join(timeout)
        return self._rebuild is None

    def _cancel_rebuild_locked(self) -> None:
        if self._rebuild is not None:
            self._rebuild.cancel.set()
            self._rebuild = None

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop a background rebuild (it notices within one chunk) and wait for it."""
        with self._lock:
            self._closed = True
            job = self._rebuild
            self._cancel_rebuild_locked()
        if job is not None and job.thread is not None and job.thread is not threading.current_thread():
            job.thread.join(timeout)

    def _apply_ef_search(self, index: faiss.Index) -> None:
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSWFlat):
            inner.hnsw.efSearch = self.hnsw.ef_search

    # -- persistence -------------------------------------------------------------------
    def to_bytes(self, metadata: dict[str, Any]) -> bytes:
        """Header (``metadata`` plus kind, dimension, size) and the FAISS serialisation."""
        with self._lock:
            header = dict(metadata, kind=self.kind, dimension=self.dimension, ntotal=self.size)
            payload = faiss.serialize_index(self._index)
        encoded = json.dumps(header, sort_keys=True).encode()
        return INDEX_MAGIC + _HEADER_LENGTH.pack(len(encoded)) + encoded + payload.tobytes()

    def from_bytes(self, data: bytes) -> tuple[dict[str, Any], faiss.Index]:
        """Parse :meth:`to_bytes` output; the index is checked but not adopted.

        Raises
        ------
        ValueError
            Unknown format, or an index that does not match this one's dimension/metric.
        """
        if not data.startswith(INDEX_MAGIC):
            raise ValueError("not a MedVision reference index")
        start = len(INDEX_MAGIC)
        try:
            (length,) = _HEADER_LENGTH.unpack_from(data, start)
        except struct.error as exc:
            raise ValueError("the index header is truncated") from exc
        start += _HEADER_LENGTH.size
        header = json.loads(data[start : start + length])
        if not isinstance(header, dict) or start + length >= len(data):
            raise ValueError("the index header is malformed")
        payload = np.frombuffer(data, dtype=np.uint8, offset=start + length)
        try:
            index = faiss.deserialize_index(payload)
        except RuntimeError as exc:
            raise ValueError(f"FAISS cannot read the index ({exc})") from exc
        # deserialize_index returns the owning, already downcast object: never downcast it
        # again (the copy would not own the C++ index and could outlive it).
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError("the index has no id map")
        inner = faiss.downcast_index(index.index)
        if not isinstance(inner, faiss.IndexFlatIP | faiss.IndexHNSWFlat):
            raise ValueError(f"unexpected index type {type(inner).__name__}")
        if index.d != self.dimension or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("the index dimension or metric does not match")
        if index.ntotal != index.id_map.size() or header.get("ntotal") != index.ntotal:
            raise ValueError("the index header and content disagree")
        return header, index
