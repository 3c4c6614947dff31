"""Receive straight into the encrypted blob: pynetdicom's chunked C-STORE file is our blob writer.

With ``_config.STORE_RECV_CHUNKED_DATASET`` pynetdicom streams each incoming dataset
into a ``NamedTemporaryFile`` in the system temp dir, in plaintext, and leaves it behind
when the association aborts mid-transfer. :func:`install` points pynetdicom at
:class:`SpoolFile` instead: a :class:`~engine.store.blobs.BlobWriter` under the store's
blob root, so the bytes are sealed with AES-256-GCM and written as they arrive
(:data:`SPOOL_CHUNK_BYTES` chunks; only the unsealed tail stays in memory) and an
accepted instance only has its last chunk sealed, then is fsynced and renamed: no
second file, no second encryption pass, memory flat for any size.

Lifecycle: pynetdicom writes; :meth:`SpoolFile.reader` gives the ingest a plaintext
view to check the header; then :meth:`commit` (with the instance's index record:
fsync, rename) or :meth:`discard`. A
transfer cut off mid-dataset is discarded when its connection closes
(``handlers.on_closed``) or when the object is collected. A killed process leaves one
``*.tmp`` blob, swept at the next start (:func:`dicom_node.ingest.sweep_stale_blob_temps`).
"""

from __future__ import annotations

import threading
import uuid
import weakref
from functools import partial
from typing import Any

from pynetdicom import dimse_messages

from engine.store.blobs import BlobStore, BlobWriter

_lock = threading.Lock()

#: Plaintext bytes per sealed chunk of a received blob. Small enough that almost all of
#: an instance is sealed and written while it arrives (a CT slice of 512 kB leaves a
#: tail of a few bytes to seal in the C-STORE round trip, not the whole instance, as
#: 1 MiB chunks did); large enough that the 16-byte tag per chunk is noise (0.01%).
SPOOL_CHUNK_BYTES = 128 << 10


class SpoolFile:
    """The write side pynetdicom sees (``write``, ``file.flush``, ``name``, ``close``)."""

    def __init__(self, blobs: BlobStore, **_ignored: object) -> None:
        self.blob_id = uuid.uuid4().hex
        self.error: OSError | None = None
        self._writer: BlobWriter = blobs.writer(self.blob_id, chunk_size=SPOOL_CHUNK_BYTES)
        self.name = str(self._writer.tmp_path)  # pynetdicom unlinks it after the handler: best effort
        self.file = self  # pynetdicom calls ``.file.flush()`` after each fragment
        weakref.finalize(self, self._writer.abort)  # an aborted transfer leaves no file

    @property
    def size(self) -> int:
        return self._writer.size

    @property
    def sha256(self) -> str:
        return self._writer.sha256

    def write(self, data: bytes | memoryview) -> int:
        """Seal and write; a disk error is kept for the ingest to answer (0xA700), not
        raised into pynetdicom's decoder, which would drop the association."""
        if self.error is None:
            try:
                self._writer.write(data)
            except OSError as exc:
                self.error = exc
        return len(data)

    def flush(self) -> None:
        """Nothing to do: durability is :meth:`commit`'s fsync."""

    def close(self) -> None:
        """pynetdicom's close after the handler: the blob was committed or discarded."""

    def reader(self) -> Any:
        """A seekable plaintext view; raises the disk error the receive met, if any."""
        if self.error is not None:
            raise self.error
        return self._writer.reader()

    def commit(self, index: bytes | None = None) -> None:
        """Seal the tail (and the ``index`` record), fsync, rename: the blob now exists whole."""
        self._writer.commit(index)

    def discard(self) -> None:
        self._writer.abort()


def install(blobs: BlobStore) -> None:
    """Make pynetdicom's chunked receive write :class:`SpoolFile` blobs into ``blobs``.

    Process-wide (pynetdicom reads the factory from its module): one store per process.
    """
    with _lock:
        dimse_messages.NamedTemporaryFile = partial(SpoolFile, blobs)
