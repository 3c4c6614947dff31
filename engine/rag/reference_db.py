"""The reference-case database: cases, reports, diagnoses, labels, FAISS ids and builds.

A second SQLCipher file (``HOME/rag/reference.db``) opened with the main store's key
through :class:`engine.store.database.Database`, with its own migrations
(``engine/rag/migrations``). Each case is written in one transaction together with its
text, labels, FAISS id and embedding, so a crash leaves whole cases or none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ErrorCode, MedVisionError
from engine.rag.manifest import Annotation
from engine.store.database import Connection, Database
from engine.store.store import now_iso

MIGRATIONS_PACKAGE = "engine.rag"
# SQLite's default limit on host parameters is 999 on old builds: stay below it.
_MAX_PARAMS = 900

META_EMBEDDER_ID = "embedder_id"
META_DIMENSION = "dimension"
META_GENERATION = "generation"
META_CASE_COUNT = "case_count"
META_INDEX_BLOB = "index_blob"


def embedder_mismatch(library_embedder_id: str, embedder_id: str) -> MedVisionError:
    """The error for vectors from two different embedders meeting in one library."""
    return MedVisionError(
        ErrorCode.INVALID_ARGUMENT,
        f"The reference library was built with embedder '{library_embedder_id}', but the "
        f"current embedder is '{embedder_id}'. Embeddings of different models cannot be "
        "compared: rebuild the library with the current model (build(..., rebuild=True)).",
        reason="embedder_mismatch",
        library_embedder_id=library_embedder_id,
        embedder_id=embedder_id,
    )


@dataclass(frozen=True)
class NewCase:
    """A case ready to be written: identity, where it came from, text, labels, vector.

    ``origin_kind`` ('folder' or 'csv'), ``origin_dataset`` (the folder's or CSV's name)
    and ``origin_row`` (the CSV row) say where the case came from, with ``image_path``.
    """

    case_id: str
    source: str
    dedup_key: str
    sha256: str
    sop_instance_uid: str | None
    image_path: str
    modality: str | None
    image_type: str | None
    annotation: Annotation
    embedding: np.ndarray
    thumbnail: bytes | None = None
    origin_kind: str | None = None
    origin_dataset: str | None = None
    origin_row: int | None = None


@dataclass(frozen=True)
class LibraryState:
    """What tells a process its in-memory index is current.

    ``generation`` changes when the library is wiped, ``case_count`` when a case is
    added (cases are never deleted one by one); ``embedder_id`` is None while empty.
    """

    generation: int
    case_count: int
    embedder_id: str | None


class CaseIdConflict(MedVisionError):
    """A manifest's case_id is already used by another image."""


class ReferenceDatabase:
    """Typed access to the reference database."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.db = Database(path, key, migrations_package=MIGRATIONS_PACKAGE)

    def close(self) -> None:
        """Close every connection."""
        self.db.close()

    # -- metadata ----------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        """All ``library_meta`` entries."""
        return {row["key"]: row["value"] for row in self.db.query("SELECT key, value FROM library_meta")}

    def state(self) -> LibraryState:
        """Generation, case count and embedder: one cheap query, run on every search."""
        rows = self.db.query(
            "SELECT (SELECT value FROM library_meta WHERE key = ?) AS generation,"
            " (SELECT value FROM library_meta WHERE key = ?) AS case_count,"
            " (SELECT value FROM library_meta WHERE key = ?) AS embedder_id",
            (META_GENERATION, META_CASE_COUNT, META_EMBEDDER_ID),
        )
        row = rows[0]
        count = int(row["case_count"] or 0)
        return LibraryState(int(row["generation"] or 0), count, row["embedder_id"] if count else None)

    @staticmethod
    def _set_meta(tx: Connection, key: str, value: str | int) -> None:
        tx.execute(
            "INSERT INTO library_meta(key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )

    @staticmethod
    def _get_meta(tx: Connection, key: str) -> str | None:
        row = tx.execute("SELECT value FROM library_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def swap_index_blob(self, blob_id: str) -> str | None:
        """Record the encrypted index file now in use; returns the one it replaces."""
        with self.db.transaction() as tx:
            previous = self._get_meta(tx, META_INDEX_BLOB)
            self._set_meta(tx, META_INDEX_BLOB, blob_id)
        return previous

    # -- cases -------------------------------------------------------------------------
    def find_case(self, dedup_key: str) -> dict[str, Any] | None:
        """The case with this dedup key (``case_id``, ``build_id``, ``image_path``), if any."""
        rows = self.db.query(
            "SELECT case_id, build_id, image_path FROM cases WHERE dedup_key = ?", (dedup_key,)
        )
        return rows[0] if rows else None

    def insert_case(self, case: NewCase, *, build_id: int, embedder_id: str) -> int | None:
        """Write a case with everything that belongs to it; returns its FAISS id.

        Returns None when the dedup key is already present (another writer was faster).

        Raises
        ------
        CaseIdConflict
            The case id is taken by a different image.
        MedVisionError
            INVALID_ARGUMENT (``reason="embedder_mismatch"``) when the library holds
            vectors of another embedder; DATABASE_ERROR when the write fails.
        """
        vector = np.ascontiguousarray(case.embedding, dtype="<f4")
        annotation = case.annotation
        with self.db.transaction() as tx:
            count = int(self._get_meta(tx, META_CASE_COUNT) or 0)
            library_embedder = self._get_meta(tx, META_EMBEDDER_ID)
            if count and library_embedder not in (None, embedder_id):
                raise embedder_mismatch(library_embedder, embedder_id)
            if tx.execute("SELECT 1 FROM cases WHERE dedup_key = ?", (case.dedup_key,)).fetchone():
                return None
            if tx.execute("SELECT 1 FROM cases WHERE case_id = ?", (case.case_id,)).fetchone():
                raise CaseIdConflict(
                    ErrorCode.INVALID_ARGUMENT,
                    f"case_id '{case.case_id}' is already used by another image in the library.",
                    case_id=case.case_id,
                )
            tx.execute(
                "INSERT INTO cases(case_id, source, dedup_key, sop_instance_uid, sha256, image_path,"
                " modality, image_type, embedding, embedder_id, build_id, created_at, thumbnail,"
                " origin_kind, origin_dataset, origin_row)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (case.case_id, case.source, case.dedup_key, case.sop_instance_uid, case.sha256,
                 case.image_path, case.modality, case.image_type, vector.tobytes(), embedder_id,
                 build_id, now_iso(), case.thumbnail, case.origin_kind, case.origin_dataset,
                 case.origin_row),
            )
            tx.executemany(
                "INSERT INTO reports(case_id, section, text) VALUES (?, ?, ?)",
                [(case.case_id, section, text) for section, text in annotation.report.items()],
            )
            tx.executemany(
                "INSERT INTO diagnoses(case_id, diagnosis) VALUES (?, ?)",
                [(case.case_id, diagnosis) for diagnosis in annotation.diagnoses],
            )
            tx.executemany(
                "INSERT INTO labels(case_id, pathology, value) VALUES (?, ?, ?)",
                [(case.case_id, name, int(value)) for name, value in annotation.labels.items()],
            )
            faiss_id = tx.execute(
                "INSERT INTO index_entries(case_id) VALUES (?)", (case.case_id,)
            ).lastrowid
            self._set_meta(tx, META_CASE_COUNT, count + 1)
            if library_embedder != embedder_id:
                self._set_meta(tx, META_EMBEDDER_ID, embedder_id)
                self._set_meta(tx, META_DIMENSION, len(vector))
            tx.execute(
                "UPDATE builds SET added = added + 1, updated_at = ? WHERE id = ?", (now_iso(), build_id)
            )
        return int(faiss_id)

    def wipe(self) -> None:
        """Delete every case (a rebuild); the generation changes so other processes reload."""
        with self.db.transaction() as tx:
            generation = int(self._get_meta(tx, META_GENERATION) or 0)
            tx.execute("DELETE FROM index_entries")
            tx.execute("DELETE FROM labels")
            tx.execute("DELETE FROM diagnoses")
            tx.execute("DELETE FROM reports")
            tx.execute("DELETE FROM cases")
            tx.execute("DELETE FROM library_meta WHERE key IN (?, ?)", (META_EMBEDDER_ID, META_DIMENSION))
            self._set_meta(tx, META_CASE_COUNT, 0)
            self._set_meta(tx, META_GENERATION, generation + 1)
            tx.execute(
                "UPDATE builds SET status = 'interrupted', updated_at = ? WHERE status = 'running'",
                (now_iso(),),
            )

    def faiss_ids(self) -> np.ndarray:
        """Every FAISS id in the database (int64, ascending)."""
        cursor = self.db.connection().execute("SELECT faiss_id FROM index_entries ORDER BY faiss_id")
        return np.fromiter((row[0] for row in cursor), dtype=np.int64)

    def vectors(self, dimension: int, faiss_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` from the database: all of them, or those of ``faiss_ids``.

        Rows whose embedding has the wrong length are skipped (they cannot be indexed).
        """
        sql = (
            "SELECT e.faiss_id, c.embedding FROM index_entries e JOIN cases c ON c.case_id = e.case_id"
        )
        if faiss_ids is None:
            batches: Iterable[list[int]] = [[]]
        else:
            wanted = [int(i) for i in faiss_ids]
            batches = [wanted[i : i + _MAX_PARAMS] for i in range(0, len(wanted), _MAX_PARAMS)]
        ids: list[int] = []
        chunks: list[bytes] = []
        expected = dimension * 4
        conn = self.db.connection()
        for batch in batches:
            if faiss_ids is None:
                cursor = conn.execute(sql + " ORDER BY e.faiss_id")
            else:
                cursor = conn.execute(
                    sql + f" WHERE e.faiss_id IN ({','.join('?' * len(batch))})", batch
                )
            for faiss_id, blob in cursor:
                if blob is not None and len(blob) == expected:
                    ids.append(faiss_id)
                    chunks.append(blob)
        # Read-only view of the joined bytes (FAISS only reads it): no second copy.
        joined = b"".join(chunks)
        chunks.clear()
        vectors = np.frombuffer(joined, dtype="<f4").astype(np.float32, copy=False)
        vectors = vectors.reshape(len(ids), dimension)
        return np.asarray(ids, dtype=np.int64), vectors

    def thumbnails(self, case_ids: list[str]) -> dict[str, bytes]:
        """PNG previews by case id (cases without one, or unknown ids, are left out)."""
        if not case_ids:
            return {}
        marks = ",".join("?" * len(case_ids))
        rows = self.db.query(
            f"SELECT case_id, thumbnail FROM cases WHERE thumbnail IS NOT NULL AND case_id IN ({marks})",
            tuple(case_ids),
        )
        return {row["case_id"]: bytes(row["thumbnail"]) for row in rows}

    def fetch_cases(self, faiss_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Case details by FAISS id: case id, source, modality, where it came from (``image_path``,
        ``origin_kind``, ``origin_dataset``, ``origin_row``), report sections, diagnoses, labels."""
        if not faiss_ids:
            return {}
        marks = ",".join("?" * len(faiss_ids))
        rows = self.db.query(
            "SELECT e.faiss_id, c.case_id, c.source, c.modality, c.image_type, c.image_path, c.origin_kind,"
            " c.origin_dataset, c.origin_row FROM index_entries e"
            f" JOIN cases c ON c.case_id = e.case_id WHERE e.faiss_id IN ({marks})",
            tuple(faiss_ids),
        )
        cases = {row["faiss_id"]: {**row, "report": {}, "diagnoses": [], "labels": {}} for row in rows}
        by_case = {case["case_id"]: case for case in cases.values()}
        if not by_case:
            return {}
        case_marks = ",".join("?" * len(by_case))
        case_ids = tuple(by_case)
        for row in self.db.query(
            f"SELECT case_id, section, text FROM reports WHERE case_id IN ({case_marks}) ORDER BY id",
            case_ids,
        ):
            by_case[row["case_id"]]["report"][row["section"]] = row["text"]
        for row in self.db.query(
            f"SELECT case_id, diagnosis FROM diagnoses WHERE case_id IN ({case_marks}) ORDER BY id",
            case_ids,
        ):
            by_case[row["case_id"]]["diagnoses"].append(row["diagnosis"])
        for row in self.db.query(
            f"SELECT case_id, pathology, value FROM labels WHERE case_id IN ({case_marks}) ORDER BY id",
            case_ids,
        ):
            by_case[row["case_id"]]["labels"][row["pathology"]] = int(row["value"])
        return cases

    # -- builds ------------------------------------------------------------------------
    def start_build(
        self, *, source: str, manifest_sha256: str, data_name: str, embedder_id: str, total: int
    ) -> tuple[int, bool]:
        """Adopt an unfinished build of the same manifest, or start a new one.

        Returns ``(build_id, resumed)``.
        """
        with self.db.transaction() as tx:
            row = tx.execute(
                "SELECT id FROM builds WHERE manifest_sha256 = ? AND embedder_id = ?"
                " AND status IN ('running', 'interrupted') ORDER BY id DESC LIMIT 1",
                (manifest_sha256, embedder_id),
            ).fetchone()
            now = now_iso()
            if row is not None:
                tx.execute(
                    "UPDATE builds SET status = 'running', total = ?, updated_at = ? WHERE id = ?",
                    (total, now, row[0]),
                )
                return int(row[0]), True
            cursor = tx.execute(
                "INSERT INTO builds(source, manifest_sha256, data_name, embedder_id, status, total,"
                " started_at, updated_at) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (source, manifest_sha256, data_name, embedder_id, total, now, now),
            )
            return int(cursor.lastrowid), False

    def finish_build(self, build_id: int, *, status: str, skipped_duplicates: int, failed: int) -> None:
        """Record the end of a build run (``completed`` or ``interrupted``)."""
        now = now_iso()
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE builds SET status = ?, skipped_duplicates = ?, failed = ?, updated_at = ?,"
                " finished_at = ? WHERE id = ?",
                (status, skipped_duplicates, failed, now, now if status == "completed" else None, build_id),
            )

    # -- statistics --------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        """Counts per source and per label value, and the latest builds."""
        sources = {
            row["source"]: row["n"]
            for row in self.db.query("SELECT source, count(*) AS n FROM cases GROUP BY source ORDER BY source")
        }
        labels: dict[str, dict[str, int]] = {}
        names = {1: "positive", 0: "negative", -1: "uncertain"}
        for row in self.db.query(
            "SELECT pathology, value, count(*) AS n FROM labels GROUP BY pathology, value ORDER BY pathology"
        ):
            entry = labels.setdefault(row["pathology"], {"positive": 0, "negative": 0, "uncertain": 0})
            entry[names[row["value"]]] = row["n"]
        builds = self.db.query(
            "SELECT id, source, data_name, status, total, added, skipped_duplicates, failed, started_at,"
            " finished_at FROM builds ORDER BY id DESC LIMIT 5"
        )
        reports = self.db.query("SELECT count(DISTINCT case_id) AS n FROM reports")[0]["n"]
        return {"sources": sources, "labels": labels, "cases_with_reports": reports, "builds": builds}
