"""Analysis results and the masks they (or the user) produced, per image."""

from __future__ import annotations

from engine.errors import ErrorCode, MedVisionError
from engine.events import EventKind
from engine.store.common import decode_row, dumps, new_id, now_iso
from engine.store.database import Database
from engine.store.events import EventLog


class AnalysisRepository:
    """The ``analyses`` table."""

    def __init__(self, db: Database, events: EventLog) -> None:
        self.db, self.events = db, events

    def add(self, session_id: str, image_id: str, kind: str, result: dict, *,
            analysis_id: str | None = None) -> dict:
        """Persist one analysis result (the full JSON plus the spec's columns), ``analysis.created``.

        ``analysis_id`` may be chosen by the caller, so that rows written in the same
        transaction (masks, annotations) can point at it.
        """
        analysis_id, stamp = analysis_id or new_id(), now_iso()
        trained = result.get("model_trained")
        report = result.get("report")
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO analyses (id, session_id, image_id, kind, classification, detections,"
                " segmentation, report, vqa_history, result, model_trained, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    analysis_id, session_id, image_id, kind,
                    dumps(result.get("classification")), dumps(result.get("detections")),
                    dumps(result.get("segmentation")),
                    report.get("text") if isinstance(report, dict) else report,
                    dumps(result.get("vqa_history", [])), dumps(result),
                    None if trained is None else int(bool(trained)), stamp,
                ),
            )
            self.events.append(tx, session_id, EventKind.ANALYSIS_CREATED,
                               {"analysis_id": analysis_id, "image_id": image_id, "kind": kind})
        return {"id": analysis_id, "created_at": stamp}

    def in_session(self, session_id: str, image_id: str | None = None) -> list[dict]:
        """Analyses of a session (or one image), oldest first."""
        if image_id is None:
            rows = self.db.query("SELECT * FROM analyses WHERE session_id = ? ORDER BY created_at, rowid", (session_id,))
        else:
            rows = self.db.query(
                "SELECT * FROM analyses WHERE session_id = ? AND image_id = ? ORDER BY created_at, rowid",
                (session_id, image_id),
            )
        return [decode_row(r) for r in rows]


class MaskRepository:
    """The ``masks`` table (RLE masks of an image)."""

    def __init__(self, db: Database, events: EventLog) -> None:
        self.db, self.events = db, events

    def add(self, session_id: str, image_id: str, masks: list[dict], *, source: str,
            analysis_id: str | None = None, model_id: str | None = None) -> list[str]:
        """Store RLE masks (``{"label", "rle", "area_px"}``, optional ``id``) in one transaction."""
        stamp, ids = now_iso(), []
        with self.db.transaction() as tx:
            for mask in masks:
                mask_id = mask.get("id") or new_id()
                tx.execute(
                    "INSERT INTO masks (id, session_id, image_id, analysis_id, label, source, rle, area_px,"
                    " model_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (mask_id, session_id, image_id, analysis_id, mask["label"], source, dumps(mask["rle"]),
                     int(mask["area_px"]), model_id, stamp),
                )
                ids.append(mask_id)
            self.events.append(tx, session_id, EventKind.MASKS_CREATED,
                               {"image_id": image_id, "source": source, "mask_ids": ids, "analysis_id": analysis_id})
        return ids

    def of_image(self, session_id: str, image_id: str, source: str | None = None,
                 analysis_id: str | None = None) -> list[dict]:
        """Stored masks of an image, oldest first (optionally of one source or analysis)."""
        sql, params = "SELECT * FROM masks WHERE session_id = ? AND image_id = ?", [session_id, image_id]
        if source is not None:
            sql, params = sql + " AND source = ?", [*params, source]
        if analysis_id is not None:
            sql, params = sql + " AND analysis_id = ?", [*params, analysis_id]
        return [decode_row(r) for r in self.db.query(sql + " ORDER BY created_at, rowid", tuple(params))]

    def get(self, session_id: str, mask_id: str) -> dict:
        """One stored mask."""
        rows = self.db.query("SELECT * FROM masks WHERE id = ? AND session_id = ?", (mask_id, session_id))
        if not rows:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no mask {mask_id!r} in this session")
        return decode_row(rows[0])
