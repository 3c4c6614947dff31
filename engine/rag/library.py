"""The reference-case library: build it from images and reports, search it by embedding.

One :class:`ReferenceLibrary` per Engine. Files, all under ``HOME/rag``:

* ``reference.db`` - SQLCipher, same key as the main store: cases, report sections,
  diagnoses, labels, the embedding of every case (float32) and its FAISS id, builds.
* ``index/<xx>/<id>.mvb`` - the FAISS index, serialised and sealed with AES-256-GCM by
  :class:`engine.store.blobs.BlobStore` (temp -> fsync -> rename). The database is the
  truth: an index file that is missing, corrupt or stale is rebuilt (or topped up)
  from the database's vectors when the library opens, and every search first checks
  (one small query) whether another process added cases or wiped the library.

Similarity is ``max(0, cosine)`` (:func:`engine.rag.aggregate.similarity_from_cosine`);
the label vote is :func:`engine.rag.aggregate.aggregate_labels`. An empty library is a
normal state (fresh install): search returns no results and a note, not an error.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import numbers
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.errors import ErrorCode, MedVisionError
from engine.imaging import DecodedImage, decode_image
from engine.rag.aggregate import aggregate_labels, similarity_from_cosine
from engine.rag.index import (
    DEFAULT_DIMENSION,
    DEFAULT_HNSW_THRESHOLD,
    HnswParams,
    VectorIndex,
    faiss_ids_of,
)
from engine.rag.manifest import (
    InvalidAnnotation,
    Manifest,
    ManifestEntry,
    case_identity,
    load_manifest,
)
from engine.rag.reference_db import (
    META_GENERATION,
    META_INDEX_BLOB,
    CaseIdConflict,
    NewCase,
    ReferenceDatabase,
    embedder_mismatch,
)
from engine.store.blobs import BlobStore

log = logging.getLogger(__name__)

RAG_DIR = "rag"
DATABASE_NAME = "reference.db"
INDEX_DIR = "index"
SUPPORTED_SOURCES = ("custom",)
# Public datasets the spec names: they need a licence and a download, never possible here.
DATASET_SOURCES = {
    "mimic-cxr": "MIMIC-CXR needs credentialed PhysioNet access and a download",
    "chexpert": "CheXpert needs a Stanford AIMI data-use agreement and a download",
    "eurorad": "EURORAD cases need a download",
}
MAX_TOP_K = 100
#: Longest side of a reference case's stored preview (PNG), in pixels.
THUMBNAIL_SIDE = 160
SIMILARITY_DECIMALS = 6
# Unreferenced index files younger than this may belong to a save in another process.
ORPHAN_INDEX_AGE_S = 600.0
# What an embedder (ONNX Runtime, numpy) raises on bad input; it is reported per case.
EMBEDDER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, ArithmeticError, RuntimeError, OSError, IndexError, KeyError,
)
EMPTY_LIBRARY_NOTE = (
    "The reference library is empty: build it first (build_rag_index with source='custom' "
    "and a CSV of images and reports)."
)

Embedder = Callable[[DecodedImage], np.ndarray]
ProgressCallback = Callable[[int, int, str], None]


def derived_case_id(source: str, dedup_key: str) -> str:
    """A stable case id for a manifest row without one: ``<source>-<16 hex of sha256(dedup key)>``."""
    return f"{source}-{hashlib.sha256(dedup_key.encode()).hexdigest()[:16]}"


def _failure(file: str, error: MedVisionError) -> dict[str, str]:
    return {"file": file, "code": error.code.value, "message": error.message}


class ReferenceLibrary:
    """Similar-case search over an encrypted library of reference images and reports.

    Parameters
    ----------
    home:
        The data directory; the library lives in ``home / "rag"``.
    key:
        The store's raw 256-bit key (the reference database uses it; the index too unless
        ``blob_key`` is given).
    blob_key:
        The key the index blobs derive from: the store's data key (envelope encryption).
    embedder:
        ``DecodedImage -> (dimension,)`` float32 vector, L2-normalised (RAD-DINO in the
        engine). Called for every image a build adds.
    embedder_id:
        Identifies the embedder (model id + sha256). A library holds vectors of one
        embedder only; with another one, search and build refuse until the library
        is rebuilt (``build(..., rebuild=True)``).
    dimension:
        Length of the embedder's vectors.
    hnsw_threshold:
        Index size from which search switches from exact to HNSW.
    hnsw:
        HNSW parameters (defaults tuned by ``benchmarks/bench_rag.py``).
    """

    def __init__(
        self,
        home: Path,
        key: bytes,
        *,
        embedder: Embedder,
        embedder_id: str,
        dimension: int = DEFAULT_DIMENSION,
        hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
        hnsw: HnswParams | None = None,
        blob_key: bytes | None = None,
    ) -> None:
        if not callable(embedder):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "embedder must be callable.")
        if not isinstance(embedder_id, str) or not embedder_id.strip():
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "embedder_id must be a non-empty string.")
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "dimension must be a positive integer.")
        self.home = Path(home)
        self.root = self.home / RAG_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self.embedder_id = embedder_id.strip()
        self.dimension = dimension
        self._embedder = embedder
        self._db = ReferenceDatabase(self.root / DATABASE_NAME, key)
        self._blobs = BlobStore(self.root / INDEX_DIR, key if blob_key is None else blob_key)
        self._index = VectorIndex(
            dimension, hnsw_threshold=hnsw_threshold, hnsw=hnsw, on_swap=self._save_index_logged
        )
        self._generation = 0
        self._saved_version = -1
        self._save_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._closed = False
        self.index_recovery: str | None = None
        try:
            self._load_index()
        except BaseException:
            self._index.close()
            self._db.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop a background index rebuild, save the index if it changed, close the database."""
        if self._closed:
            return
        self._closed = True
        self._index.close()
        try:
            self._save_index_if_changed()
        except MedVisionError as err:
            log.warning("saving the reference index at close failed: %s", err.code.value)
        self._db.close()

    def __enter__(self) -> ReferenceLibrary:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- index persistence -------------------------------------------------------------
    def _load_index(self) -> None:
        """Open the encrypted index file and reconcile it with the database.

        Outcomes (kept in :attr:`index_recovery`): None (file current), ``"topped_up"``
        (cases added after the last save were added from the database), or
        ``"missing"`` / ``"corrupt"`` / ``"stale"`` (index rebuilt from the database).
        """
        meta = self._db.meta()
        generation = int(meta.get(META_GENERATION, 0))
        db_ids = self._db.faiss_ids()
        blob_id = meta.get(META_INDEX_BLOB)
        recovery: str | None = None
        loaded = None
        if blob_id is None or not self._blobs.path_for(blob_id).is_file():
            recovery = "missing" if len(db_ids) or blob_id is not None else None
        else:
            try:
                header, loaded = self._index.from_bytes(self._blobs.read_bytes(blob_id))
            except MedVisionError as err:
                log.warning("the reference index file is unreadable (%s)", err.message)
                recovery = "corrupt"
            except (ValueError, OSError) as exc:
                log.warning("the reference index file is unreadable (%s)", type(exc).__name__)
                recovery = "corrupt"
            else:
                file_ids = np.sort(faiss_ids_of(loaded))
                if header.get("generation") != generation or np.setdiff1d(file_ids, db_ids).size:
                    loaded, recovery = None, "stale"
        if loaded is not None:
            self._index.replace_index(loaded)
            missing = np.setdiff1d(db_ids, file_ids)
            if missing.size:
                self._index.add(*self._db.vectors(self.dimension, missing))
                recovery = "topped_up"
        else:
            self._index.reset(*self._db.vectors(self.dimension) if len(db_ids) else _no_vectors(self.dimension))
        self._generation = generation
        self.index_recovery = recovery
        if recovery is None:
            self._saved_version = self._index.version
        else:
            log.warning(
                "reference index %s: %s from the database (%d vectors)", recovery,
                "completed" if recovery == "topped_up" else "rebuilt", self._index.size,
            )
        # A large library recovered as an exact index switches to HNSW in the background and
        # saves it then; otherwise the recovered index is saved now.
        self._index.maybe_start_hnsw()
        if recovery is not None and not self._index.rebuilding:
            self._save_index()
        self._sweep_orphan_index_files()

    def _save_index(self) -> None:
        """Encrypt and write the index under a new id, point the database at it, drop the old file."""
        with self._save_lock:
            version = self._index.version
            data = self._index.to_bytes({"generation": self._generation, "embedder_id": self.embedder_id})
            blob_id = uuid.uuid4().hex
            self._blobs.write_bytes(blob_id, data)
            try:
                previous = self._db.swap_index_blob(blob_id)
            except MedVisionError:
                self._blobs.delete(blob_id)
                raise
            if previous and previous != blob_id:
                self._blobs.delete(previous)
            self._saved_version = version

    def _save_index_if_changed(self) -> None:
        if self._index.version != self._saved_version:
            self._save_index()

    def _save_index_logged(self) -> None:
        """Save after a background HNSW swap; a failure only costs a rebuild at next start."""
        try:
            self._save_index()
        except MedVisionError as err:
            log.warning("saving the reference index after the HNSW switch failed: %s", err.code.value)

    def _sweep_orphan_index_files(self) -> None:
        """Remove index files no one points at (left by a crash between write and swap)."""
        current = self._db.meta().get(META_INDEX_BLOB)
        cutoff = time.time() - ORPHAN_INDEX_AGE_S
        root = self._blobs.root
        if not root.exists():
            return
        for path in [*root.glob("*/*.mvb"), *root.glob("*/*.tmp")]:
            try:
                if path.stem != current and path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError as exc:
                log.warning("cannot remove an old reference index file (%s)", exc.strerror)

    def _sync(self) -> None:
        """Catch up with changes other processes (or threads) committed; refuse another embedder."""
        state = self._db.state()
        if state.embedder_id is not None and state.embedder_id != self.embedder_id:
            raise embedder_mismatch(state.embedder_id, self.embedder_id)
        if state.generation == self._generation and state.case_count == self._index.size:
            return
        with self._sync_lock:
            state = self._db.state()
            if state.generation == self._generation and state.case_count == self._index.size:
                return
            db_ids = self._db.faiss_ids()
            have = self._index.ids()
            if state.generation != self._generation or np.setdiff1d(have, db_ids).size:
                vectors = self._db.vectors(self.dimension) if len(db_ids) else _no_vectors(self.dimension)
                self._index.reset(*vectors)
                self._generation = state.generation
                return
            missing = np.setdiff1d(db_ids, have)
            if missing.size:
                self._index.add(*self._db.vectors(self.dimension, missing))

    # -- embedding ---------------------------------------------------------------------
    def embed(self, image: DecodedImage) -> np.ndarray:
        """The embedder's vector for ``image``, checked and L2-normalised.

        Raises
        ------
        MedVisionError
            INFERENCE_ERROR when the embedder fails or returns a vector of the wrong
            shape, with non-finite values or all zeros (or the embedder's own error).
        """
        try:
            raw = self._embedder(image)
        except MedVisionError:
            raise
        except EMBEDDER_ERRORS as exc:
            raise MedVisionError(
                ErrorCode.INFERENCE_ERROR, f"The embedder failed ({type(exc).__name__}).",
                cause=type(exc).__name__,
            ) from exc
        return self._unit_vector(raw, ErrorCode.INFERENCE_ERROR, "The embedder's output")

    def _unit_vector(self, vector: Any, code: ErrorCode, what: str) -> np.ndarray:
        try:
            array = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise MedVisionError(code, f"{what} is not a numeric vector.") from exc
        if array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        if array.shape != (self.dimension,):
            raise MedVisionError(
                code, f"{what} must have shape ({self.dimension},), not {tuple(array.shape)}.",
                shape=list(array.shape), dimension=self.dimension,
            )
        if not np.isfinite(array).all():
            raise MedVisionError(code, f"{what} contains NaN or infinite values.")
        norm = float(np.linalg.norm(array))
        if norm < 1e-12:
            raise MedVisionError(code, f"{what} is all zeros and has no direction.")
        return (array / norm).astype(np.float32)

    # -- build -------------------------------------------------------------------------
    def build(
        self,
        source: str = "custom",
        data_path: str | Path | None = None,
        reports_csv: str | Path | None = None,
        progress: ProgressCallback | None = None,
        rebuild: bool = False,
    ) -> dict[str, Any]:
        """Add the images of a manifest to the library (incremental, resumable).

        Each image is read, recognised by its dedup key (SOP Instance UID for DICOM,
        else the file's SHA-256), decoded, embedded and written in its own transaction
        with its report sections, diagnoses, labels and FAISS id, then added to the
        index. Images already in the library are skipped without decoding. A build
        killed half-way stays recorded as unfinished; running the same manifest again
        adopts it and adds only what is missing. Bad files are reported in ``failed``
        and never stop the build.

        Parameters
        ----------
        source:
            Only ``"custom"``: the workstation is offline, public datasets cannot be
            fetched (``INVALID_ARGUMENT`` says how to import them as custom data).
        data_path:
            A CSV (``image_path`` relative to it, report columns, ``diagnoses``, label
            columns) or a folder of DICOM/PNG/JPEG images (see :mod:`engine.rag.manifest`).
        reports_csv:
            With a folder: the reports CSV, keyed by ``file_name`` or ``sop_instance_uid``.
        progress:
            ``progress(done, total, message)`` after each image (and once with 0 at the
            start). An exception it raises stops the build, which stays resumable.
        rebuild:
            Delete every case first (needed after changing the embedder).

        Returns
        -------
        dict
            ``build_id``, ``status``, ``resumed`` (an interrupted build was adopted),
            counts ``added``, ``already_done`` (added by the interrupted run),
            ``skipped_duplicates``, ``failed`` (``[{file, code, message}]``) and ``total``
            (rows in the manifest; ``added + already_done + skipped_duplicates +
            len(failed) == total``), plus ``index_size``, ``index_type``,
            ``label_columns``, ``ignored_columns``, ``unmatched_report_rows``,
            ``build_time_s``.

        Raises
        ------
        MedVisionError
            INVALID_ARGUMENT (source, arguments, unreadable CSV, a build already running
            in this process, or an embedder mismatch without ``rebuild``),
            FILE_NOT_FOUND (data_path), DATABASE_ERROR / DISK_FULL.
        """
        started = time.perf_counter()
        self._check_open()
        self._check_source(source)
        if data_path is None:
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT,
                "data_path is required: a CSV of images and reports, or a folder of images.",
            )
        if progress is not None and not callable(progress):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "progress must be callable.")
        if not isinstance(rebuild, bool):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "rebuild must be true or false.")
        manifest = load_manifest(Path(data_path), Path(reports_csv) if reports_csv is not None else None)
        if not self._build_lock.acquire(blocking=False):
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT, "A reference-library build is already running; wait for it."
            )
        try:
            if rebuild:
                self._wipe()
            self._sync()
            return self._run_build(source, manifest, progress, started)
        finally:
            self._build_lock.release()

    def _run_build(
        self, source: str, manifest: Manifest, progress: ProgressCallback | None, started: float
    ) -> dict[str, Any]:
        total = len(manifest.entries)
        build_id, resumed = self._db.start_build(
            source=source, manifest_sha256=manifest.fingerprint, data_name=manifest.data_name,
            embedder_id=self.embedder_id, total=total,
        )
        counts = {"added": 0, "already_done": 0, "skipped_duplicates": 0}
        failed: list[dict[str, str]] = []
        status = "interrupted"
        try:
            if progress is not None:
                progress(0, total, "resuming an interrupted build" if resumed else "starting")
            for done, entry in enumerate(manifest.entries, start=1):
                outcome, error = self._ingest(entry, manifest, source, build_id)
                if error is not None:
                    failed.append(_failure(entry.file, error))
                    message = f"failed {entry.file}: {error.code.value}"
                else:
                    counts[outcome] += 1
                    message = f"{outcome.replace('_', ' ')} {entry.file}"
                if progress is not None:
                    progress(done, total, message)
            status = "completed"
        finally:
            try:
                self._db.finish_build(
                    build_id, status=status, skipped_duplicates=counts["skipped_duplicates"],
                    failed=len(failed),
                )
                self._save_index_if_changed()
            except MedVisionError as err:
                if status == "completed":
                    raise
                log.warning("recording the interrupted build failed: %s", err.code.value)
        log.info(
            "reference build %d %s: %d added, %d resumed, %d duplicates, %d failed",
            build_id, status, counts["added"], counts["already_done"], counts["skipped_duplicates"],
            len(failed),
        )
        return {
            "build_id": build_id,
            "source": source,
            "status": status,
            "resumed": resumed,
            **counts,
            "failed": failed,
            "total": total,
            "index_size": self._index.size,
            "index_type": self._index.kind,
            "index_rebuilding": self._index.rebuilding,
            "label_columns": list(manifest.label_columns),
            "ignored_columns": list(manifest.ignored_columns),
            "unmatched_report_rows": manifest.unmatched_report_rows(),
            "build_time_s": round(time.perf_counter() - started, 3),
        }

    def _ingest(
        self, entry: ManifestEntry, manifest: Manifest, source: str, build_id: int
    ) -> tuple[str, MedVisionError | None]:
        """Add one image; returns ``(outcome, error)`` with outcome a key of the counts."""
        if isinstance(entry.annotation, InvalidAnnotation) and entry.annotation.error is not None:
            return "failed", entry.annotation.error
        try:
            data = _read_image_file(entry)
        except MedVisionError as err:
            return "failed", err
        identity = case_identity(data)
        annotation = manifest.annotation_for(entry, identity.sop_instance_uid)
        existing = self._db.find_case(identity.dedup_key)
        if existing is not None:
            mine = existing["build_id"] == build_id and existing["image_path"] == entry.file
            return ("already_done" if mine else "skipped_duplicates"), None
        if isinstance(annotation, InvalidAnnotation) and annotation.error is not None:
            return "failed", annotation.error
        try:
            decoded = decode_image(data, filename=Path(entry.file).name)
            vector = self.embed(decoded)
        except MedVisionError as err:
            return "failed", err
        case = NewCase(
            case_id=annotation.case_id or derived_case_id(source, identity.dedup_key),
            source=source,
            dedup_key=identity.dedup_key,
            sha256=identity.sha256,
            sop_instance_uid=identity.sop_instance_uid,
            image_path=entry.file,
            modality=decoded.modality,
            image_type=decoded.image_type,
            annotation=annotation,
            embedding=vector,
            thumbnail=thumbnail_png(decoded),
            origin_kind=manifest.kind,
            origin_dataset=manifest.data_name,
            origin_row=entry.row,
        )
        try:
            faiss_id = self._db.insert_case(case, build_id=build_id, embedder_id=self.embedder_id)
        except CaseIdConflict as err:
            return "failed", err
        if faiss_id is None:
            return "skipped_duplicates", None
        self._index.add(np.array([faiss_id], dtype=np.int64), vector[None, :])
        return "added", None

    def _wipe(self) -> None:
        """Delete every case and empty the index (``build(rebuild=True)``)."""
        with self._sync_lock:
            self._db.wipe()
            self._index.reset(*_no_vectors(self.dimension))
            self._generation = self._db.state().generation
        log.info("reference library wiped for a rebuild with embedder %s", self.embedder_id)

    @staticmethod
    def _check_source(source: object) -> None:
        if source in SUPPORTED_SOURCES:
            return
        if isinstance(source, str) and source.lower() in DATASET_SOURCES:
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT,
                f"source '{source}' cannot be built here: MedVision runs offline and never "
                f"downloads data ({DATASET_SOURCES[source.lower()]}). Download it on a connected "
                "machine, write a CSV (image_path, report/findings/impression, diagnoses, label "
                "columns) and build with source='custom'.",
                source=source,
            )
        raise MedVisionError(
            ErrorCode.INVALID_ARGUMENT,
            f"unknown source {source!r}; supported: {', '.join(SUPPORTED_SOURCES)}.",
            source=str(source),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise MedVisionError(ErrorCode.DATABASE_ERROR, "the reference library is closed")

    # -- search ------------------------------------------------------------------------
    def search(
        self,
        vector: np.ndarray,
        top_k: int = 5,
        include_reports: bool = True,
        min_similarity: float = 0.0,
    ) -> dict[str, Any]:
        """The ``top_k`` most similar reference cases and their similarity-weighted labels.

        Parameters
        ----------
        vector:
            The query embedding, ``(dimension,)`` (or ``(1, dimension)``), from the same
            embedder as the library; it is L2-normalised here.
        top_k:
            1..100. Fewer results come back when the library is smaller or cases fall
            below ``min_similarity``.
        include_reports:
            Return each case's report sections (``report``); when False ``report`` is
            None (``findings``, diagnoses and labels are always returned).
        min_similarity:
            0..1; cases below it are dropped after the top-k search.

        Returns
        -------
        dict
            ``results``: ``[{"case_id", "similarity", "report" ({section: text} or
            None), "findings" (the findings section or None), "diagnoses" [str],
            "labels" {name: -1|0|1}, "source", "modality", "origin", "source_name"}]``,
            most similar first; similarity = ``max(0, cosine)``. ``origin`` says where the
            case came from (:func:`case_origin`), ``source_name`` the same in words
            (:func:`origin_name`).
            ``aggregated_labels``: see :func:`engine.rag.aggregate.aggregate_labels`
            (score = sum of similarities of positive cases / sum over positive and
            negative cases; uncertain cases counted, not weighted).
            ``search_metadata``: ``index_size``, ``index_type``, ``search_time_ms``
            (FAISS), ``total_time_ms``, ``top_k``, ``min_similarity``, ``embedder_id``,
            ``similarity``, and ``note`` when the library is empty or nothing passed
            ``min_similarity``. An empty library is not an error.

        Raises
        ------
        MedVisionError
            INVALID_ARGUMENT for a bad vector, ``top_k`` or ``min_similarity``, or when
            the library was built with another embedder (``reason="embedder_mismatch"``).
        """
        started = time.perf_counter()
        self._check_open()
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 1 <= top_k <= MAX_TOP_K:
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT, f"top_k must be an integer from 1 to {MAX_TOP_K}.", top_k=repr(top_k)
            )
        if (isinstance(min_similarity, bool) or not isinstance(min_similarity, numbers.Real)
                or not math.isfinite(min_similarity) or not 0.0 <= min_similarity <= 1.0):
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT, "min_similarity must be a number from 0 to 1.",
                min_similarity=repr(min_similarity),
            )
        if not isinstance(include_reports, bool):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "include_reports must be true or false.")
        top_k, min_similarity = int(top_k), float(min_similarity)
        query = self._unit_vector(vector, ErrorCode.INVALID_ARGUMENT, "The query vector")
        self._sync()
        metadata: dict[str, Any] = {
            "index_size": self._index.size,
            "index_type": self._index.kind,
            "search_time_ms": 0.0,
            "total_time_ms": 0.0,
            "top_k": top_k,
            "min_similarity": min_similarity,
            "embedder_id": self.embedder_id,
            "similarity": "max(0, cosine)",
        }
        results: list[dict[str, Any]] = []
        if metadata["index_size"] == 0:
            metadata["note"] = EMPTY_LIBRARY_NOTE
        else:
            search_started = time.perf_counter()
            cosines, ids = self._index.search(query[None, :], min(top_k, metadata["index_size"]))
            metadata["search_time_ms"] = round((time.perf_counter() - search_started) * 1000, 3)
            hits = [(int(i), float(c)) for i, c in zip(ids[0], cosines[0], strict=True) if i >= 0]
            cases = self._db.fetch_cases([faiss_id for faiss_id, _ in hits])
            for faiss_id, cosine in hits:
                case = cases.get(faiss_id)
                similarity = round(float(similarity_from_cosine(cosine)), SIMILARITY_DECIMALS)
                if case is None or similarity < min_similarity:
                    continue
                results.append({
                    "case_id": case["case_id"],
                    "similarity": similarity,
                    "report": dict(case["report"]) if include_reports else None,
                    "findings": case["report"].get("findings"),
                    "diagnoses": list(case["diagnoses"]),
                    "labels": dict(case["labels"]),
                    "source": case["source"],
                    "modality": case["modality"],
                    "origin": (origin := case_origin(case)),
                    "source_name": origin_name(origin),
                })
            results.sort(key=lambda result: (-result["similarity"], result["case_id"]))
            if not results:
                metadata["note"] = f"No reference case reached min_similarity {min_similarity}."
        metadata["total_time_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return {
            "results": results,
            "aggregated_labels": aggregate_labels(results),
            "search_metadata": metadata,
        }

    def thumbnails(self, case_ids: list[str]) -> dict[str, bytes]:
        """PNG previews of reference cases by case id (see :func:`thumbnail_png`)."""
        self._check_open()
        if not isinstance(case_ids, list | tuple) or not all(isinstance(c, str) for c in case_ids) \
                or len(case_ids) > MAX_TOP_K:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"case_ids must be a list of at most {MAX_TOP_K} ids.")
        return self._db.thumbnails(list(case_ids))

    # -- statistics --------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Size, index type, embedder (and whether it matches), counts per source and label, builds."""
        self._check_open()
        state = self._db.state()
        details = self._db.statistics()
        mismatch = state.embedder_id is not None and state.embedder_id != self.embedder_id
        return {
            "cases": state.case_count,
            "index_size": self._index.size,
            "index_type": self._index.kind,
            "index_rebuilding": self._index.rebuilding,
            "index_recovery": self.index_recovery,
            "hnsw_threshold": self._index.hnsw_threshold,
            "hnsw": {
                "m": self._index.hnsw.m,
                "ef_construction": self._index.hnsw.ef_construction,
                "ef_search": self._index.hnsw.ef_search,
            },
            "dimension": self.dimension,
            "embedder_id": state.embedder_id,
            "current_embedder_id": self.embedder_id,
            "embedder_mismatch": mismatch,
            "generation": state.generation,
            **details,
        }

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for a background HNSW rebuild (if any); True when none is running."""
        return self._index.wait_for_rebuild(timeout)


ORIGIN_UNKNOWN = "source unknown"


def case_origin(case: dict[str, Any]) -> dict[str, Any]:
    """Where a stored case came from, as a search result carries it.

    ``{"kind", "dataset", "file", "row"}``: ``kind`` is ``"folder"`` (``file`` relative to
    the folder given to the build, ``dataset`` that folder's name), ``"csv"`` (``dataset``
    the CSV's name, ``row`` its row, the header being row 1, ``file`` the image path as the
    CSV wrote it, a base name when it was absolute) or ``"unknown"`` (a case added before
    the library recorded origins: everything else None). Never an absolute path.
    """
    kind = case.get("origin_kind")
    if kind not in ("folder", "csv"):
        return {"kind": "unknown", "dataset": None, "file": None, "row": None}
    row = case.get("origin_row")
    return {"kind": kind, "dataset": case.get("origin_dataset"), "file": case.get("image_path"),
            "row": int(row) if kind == "csv" and row is not None else None}


def origin_name(origin: dict[str, Any]) -> str:
    """:func:`case_origin` in words: ``chest/a.dcm (folder studies)``, ``cases.csv row 3: images/a.png``,
    or ``source unknown``."""
    if origin["kind"] == "folder":
        return f"{origin['file']} (folder {origin['dataset']})"
    if origin["kind"] == "csv":
        where = f"{origin['dataset']} row {origin['row']}" if origin["row"] is not None else origin["dataset"]
        return f"{where}: {origin['file']}" if origin["file"] else where
    return ORIGIN_UNKNOWN


def thumbnail_png(image: DecodedImage, side: int = THUMBNAIL_SIDE) -> bytes:
    """The image as the viewer first shows it (its window, MONOCHROME1 inverted), longest
    side ``side`` px, as PNG: a few kB per case."""
    preview = Image.fromarray(image.display())
    preview.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    preview.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _no_vectors(dimension: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros((0, dimension), dtype=np.float32)


def _read_image_file(entry: ManifestEntry) -> bytes:
    """The bytes of a manifest's image, as a coded error when it cannot be read."""
    try:
        return entry.path.read_bytes()
    except FileNotFoundError as exc:
        raise MedVisionError(
            ErrorCode.FILE_NOT_FOUND, f"File '{entry.file}' does not exist.", file=entry.file
        ) from exc
    except OSError as exc:
        raise MedVisionError(
            ErrorCode.FILE_NOT_FOUND, f"File '{entry.file}' cannot be read ({exc.strerror}).",
            file=entry.file,
        ) from exc
