"""Encrypted store: SQLCipher database and encrypted blob files of one data directory, one repository per aggregate."""

from engine.store.blobs import BlobStore
from engine.store.common import new_id, now_iso
from engine.store.database import Database, schema_version
from engine.store.events import EventLog
from engine.store.keys import resolve_key
from engine.store.store import Store

__all__ = ["BlobStore", "Database", "EventLog", "Store", "new_id", "now_iso", "resolve_key", "schema_version"]
