"""Study sessions: create, list, summarise, switch the current image, delete with what derives from them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.config import SESSION_SOURCES, RetentionPolicy
from engine.errors import ErrorCode, MedVisionError
from engine.services.images import ImageService, image_summary
from engine.services.interactive import InteractiveService
from engine.services.volumes import VolumeService
from engine.store import Store

#: The most JSON a session's free ``metadata`` may hold (64 kB): room for study notes and
#: identifiers, not a place to park files.
MAX_METADATA_BYTES = 64 * 1024


class SessionService:
    """Sessions and their lifetime: retention (purge, pins) and erasure with everything derived from them."""

    def __init__(self, store: Store, images: ImageService, interactive: InteractiveService,
                 retention: RetentionPolicy, volumes: VolumeService | None = None) -> None:
        self.store, self.images, self.interactive, self.volumes = store, images, interactive, volumes
        self.retention = retention

    def create(self, name: str | None = None, metadata: dict[str, Any] | None = None, source: str = "file") -> dict:
        """Create a new analysis session; ``source`` (file, mcp, dicom) selects its retention period."""
        if metadata is not None and not isinstance(metadata, dict):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "metadata must be an object")
        if metadata:
            try:
                size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False,
                                      allow_nan=False).encode("utf-8"))
            except (TypeError, ValueError) as exc:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "metadata must be plain JSON (no NaN, Infinity or lone "
                                     "surrogates)",
                                     reason="invalid_metadata") from exc
            if size > MAX_METADATA_BYTES:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                     f"metadata is {size} bytes of JSON; at most {MAX_METADATA_BYTES} are kept",
                                     reason="metadata_too_large", limit_bytes=MAX_METADATA_BYTES)
        session = self.store.create_session(name, metadata, source=source)
        return {"session_id": session["id"], "name": session["name"], "created_at": session["created_at"]}

    def list(self, limit: int = 100) -> list[dict]:
        """Sessions, newest first."""
        return [
            {"session_id": s["id"], "name": s["name"], "images": s["image_count"],
             "created_at": s["created_at"], "updated_at": s["updated_at"], "source": s["source"],
             "pinned": bool(s["pinned"]), "last_active_at": s["last_active_at"]}
            for s in self.store.list_sessions(limit)
        ]

    def status(self, session_id: str) -> dict:
        """Summary of a session: its images, the current one, annotation and analysis counts.

        ``series`` lists the volume series with their stacks (one entry per stack, for a worklist or
        an image strip); each image of a stack carries its ``series_uid``, ``stack`` and ``z``.
        """
        session = self.store.get_session(session_id)
        analysed = {a["image_id"] for a in self.store.list_analyses(session_id)}
        marks = self.volumes.image_stacks(session_id) if self.volumes else {}
        images = [image_summary(i) | {"analyzed": i["id"] in analysed}
                  | (marks.get(i["id"]) or {"series_uid": i["series_instance_uid"], "stack": None, "z": None})
                  for i in self.store.list_images(session_id)]
        series = self.volumes.list_series(session_id)["series"] if self.volumes else []
        return {
            "session_id": session_id,
            "name": session["name"],
            "created_at": session["created_at"],
            "updated_at": session["updated_at"],
            "images": images,
            "series": [{**entry, "stacks": [{k: v for k, v in stack.items() if k not in ("affine_lps", "image_ids")}
                                            for stack in entry["stacks"]]} for entry in series],
            "current_image": session["current_image_id"],
            "total_annotations": self.store.count("annotations", session_id),
            "total_analyses": self.store.count("analyses", session_id),
            "priors": (session["metadata"] or {}).get("priors", []),
        }

    def delete(self, session_id: str) -> dict:
        """Erase a session: its rows, image and export blobs, cached embeddings, masks, outbox items."""
        removed = self.store.delete_session(session_id)
        if removed is None:  # only a purge (expired_before) skips a session; a plain delete never does
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"session {session_id!r} was not erased")
        self._forget(session_id, removed)
        return {"session_id": session_id, "deleted": True, "images": len(removed["image_ids"]),
                "files": removed["files"]}

    def _forget(self, session_id: str, removed: dict) -> None:
        self.images.cache.forget(removed["image_ids"])
        self.interactive.forget(removed["image_ids"])
        if self.volumes:
            self.volumes.forget(session_id, removed["image_ids"])

    def set_pinned(self, session_id: str, pinned: bool = True) -> dict:
        """Pin a session (kept whatever the retention policy says) or unpin it."""
        session = self.store.set_session_pinned(session_id, pinned)
        return {"session_id": session_id, "pinned": bool(session["pinned"]), "source": session["source"]}

    def purge_expired(self, dry_run: bool = False, now: datetime | None = None) -> dict:
        """Erase every unpinned session inactive for longer than its source's retention period.

        Each expired session leaves a tombstone, so asking for it later answers
        ``SESSION_EXPIRED``. ``dry_run`` lists what would go and changes nothing."""
        self.store.finish_erasures()  # one whose file removal failed earlier in this process is retried
        moment = now or datetime.now(UTC)
        cutoffs = {source: (moment - timedelta(seconds=age)).isoformat(timespec="milliseconds")
                   for source in SESSION_SOURCES
                   if (age := self.retention.max_age_s(source)) is not None}
        candidates = self.store.expired_sessions(cutoffs)
        purged = []
        for candidate in candidates:
            if dry_run:
                purged.append(candidate)
                continue
            try:
                removed = self.store.delete_session(candidate["id"], expired_before=cutoffs[candidate["source"]])
            except MedVisionError as exc:
                if exc.code in (ErrorCode.SESSION_NOT_FOUND, ErrorCode.SESSION_EXPIRED):
                    continue  # another process erased it first
                raise
            if removed is not None:  # None: touched or pinned since it was listed
                self._forget(candidate["id"], removed)
                purged.append(candidate)
        return {"dry_run": dry_run, "policy": self.retention.describe(),
                "sessions": [{"session_id": c["id"], "source": c["source"], "last_active_at": c["last_active_at"]}
                             for c in purged]}

    def switch_image(self, session_id: str, image_id: str) -> dict:
        """Move the session's focus to another of its images."""
        self.store.get_session(session_id)
        self.store.set_current_image(session_id, image_id)
        return {"session_id": session_id, "current_image": image_id,
                "image": image_summary(self.store.get_image(image_id))}
