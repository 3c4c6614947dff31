"""Encrypted store: SQLCipher database (sessions, images, analyses, annotations,
interactions, events outbox, jobs) and encrypted blob files, in one data directory."""

from engine.store.blobs import BlobStore
from engine.store.database import Database, schema_version
from engine.store.keys import resolve_key
from engine.store.store import Store, new_id, now_iso

__all__ = ["BlobStore", "Database", "Store", "new_id", "now_iso", "resolve_key", "schema_version"]
