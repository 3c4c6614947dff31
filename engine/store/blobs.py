"""Encrypted blob files: received instances and kept artefacts, never plaintext on disk.

Format (``MVB1``): a 16-byte header (magic, 8-byte random nonce prefix, chunk size),
then chunks sealed with AES-256-GCM. Chunk ``i`` uses nonce ``prefix || i`` and the
associated data ``blob_id || i || final``, so chunks cannot be reordered, swapped
between blobs or truncated without the reader noticing. Streaming keeps memory flat
for large instances. Writes go temp file -> fsync -> rename -> fsync(dir), so a blob
that exists is whole.

``MVB2`` is the same with a sealed *index record* after the last chunk (nonce
``prefix || 0xFFFFFFFF``, associated data ``blob_id || "index"``) and its 4-byte length
at the very end: what the blob's database rows will say, written under the same fsync
as the content, so the blob alone is the durable record of a received instance
(:meth:`BlobStore.read_index`; the DICOM node indexes it after acknowledging it).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.errors import ErrorCode, MedVisionError
from engine.files import fsync_dir

MAGIC = b"MVB1"
MAGIC_INDEXED = b"MVB2"
CHUNK_SIZE = 1 << 20
_HEADER = struct.Struct(">4s8sI")
_INDEX_LENGTH = struct.Struct(">I")
_INDEX_CHUNK = 0xFFFFFFFF
#: An index record is a few kilobytes of JSON; a larger length is a damaged file.
MAX_INDEX_BYTES = 16 << 20
_TAG_BYTES = 16
_BLOB_ID = re.compile(r"^[0-9a-f]{16,64}$")


def derive_blob_key(store_key: bytes) -> bytes:
    """The AES key of blobs, derived (HKDF-SHA256) from the data key (:mod:`engine.store.envelope`)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"medvision blob v1").derive(
        store_key
    )


def scoped_blob_id(owner: str, key: str) -> str:
    """A blob id that starts with its owner's mark (32 hex digits of SHA-256 of ``owner``),
    so every blob of one owner (an image's cached embeddings) can be found and erased
    without knowing the keys they were stored under."""
    return owner_mark(owner) + hashlib.sha256(key.encode()).hexdigest()[:32]


def owner_mark(owner: str) -> str:
    """The first 32 hex digits of every :func:`scoped_blob_id` of ``owner``."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


def _aad(blob_id: str, index: int, final: bool) -> bytes:
    return blob_id.encode() + struct.pack(">I?", index, final)


def _index_aad(blob_id: str) -> bytes:
    return blob_id.encode() + b"index"


def _disk_error(exc: OSError) -> MedVisionError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return MedVisionError(ErrorCode.DISK_FULL, "no space left on the data disk")
    return MedVisionError(ErrorCode.DATABASE_ERROR, f"blob storage failed: {exc.strerror}")


def _damaged(blob_id: str) -> MedVisionError:
    return MedVisionError(ErrorCode.DATABASE_ERROR, f"blob {blob_id} failed its integrity check")


class BlobWriter:
    """Streams plaintext into one encrypted blob; use through :meth:`BlobStore.writer`."""

    def __init__(self, store: BlobStore, blob_id: str, chunk_size: int = CHUNK_SIZE) -> None:
        self._store = store
        self.blob_id = blob_id
        self.chunk_size = chunk_size
        self.size = 0
        self._sha = hashlib.sha256()
        self._pending = bytearray()
        self._index = 0
        self._prefix = os.urandom(8)
        self.final_path = store.path_for(blob_id)
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = self.final_path.with_suffix(".tmp")
        self._file = open(self.tmp_path, "wb")  # noqa: SIM115 - closed in commit/abort
        self._file.write(_HEADER.pack(MAGIC, self._prefix, chunk_size))
        self.committed = self._tail_sealed = False

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the plaintext written so far."""
        return self._sha.hexdigest()

    def write(self, data: bytes | memoryview) -> None:
        """Append plaintext; full chunks are sealed and written at once."""
        self._sha.update(data)
        self.size += len(data)
        self._pending += data
        while len(self._pending) > self.chunk_size:
            with memoryview(self._pending) as view:
                self._seal(view[: self.chunk_size], final=False)
            del self._pending[: self.chunk_size]  # from the front: no copy of the rest

    def _seal(self, chunk: bytes | memoryview, final: bool) -> None:
        nonce = self._prefix + struct.pack(">I", self._index)
        sealed = self._store._aes.encrypt(nonce, chunk, _aad(self.blob_id, self._index, final))
        self._file.write(sealed)
        self._index += 1

    @property
    def in_memory(self) -> bool:
        """Nothing sealed yet: all the plaintext is the unsealed tail."""
        return self._index == 0

    def reader(self) -> io.RawIOBase:
        """A seekable plaintext view of what was written so far: sealed chunks are
        decrypted from the temp file (opened only if one is read), the unsealed tail is
        a snapshot, so :meth:`commit` may run while the view is read when ``in_memory``."""
        self._file.flush()
        return _PartialReader(self)

    def seal_tail(self) -> None:
        """Seal and write the last chunk (once; nothing may be written after it)."""
        if self._tail_sealed:
            return
        self._seal(bytes(self._pending), final=True)
        self._pending.clear()
        self._tail_sealed = True

    def commit(self, index: bytes | None = None) -> None:
        """Seal the last chunk (and the ``index`` record, if given: ``MVB2``) and make the
        blob durable under its final name: one fsync of the file, one of its directory."""
        self.seal_tail()
        if index is not None:
            nonce = self._prefix + struct.pack(">I", _INDEX_CHUNK)
            sealed = self._store._aes.encrypt(nonce, index, _index_aad(self.blob_id))
            self._file.write(sealed + _INDEX_LENGTH.pack(len(sealed)))
            self._file.seek(0)
            self._file.write(MAGIC_INDEXED)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.final_path)
        fsync_dir(self.final_path.parent)
        self.committed = True

    def abort(self) -> None:
        """Drop the partial blob; nothing is left on disk. A committed blob is kept
        (delete it through :meth:`BlobStore.delete`)."""
        if self.committed:
            return
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass  # flushing the buffer failed too (disk full): the file is discarded anyway
        for path in (self.tmp_path, self.final_path):
            path.unlink(missing_ok=True)


class _PartialReader(io.RawIOBase):
    """Random-access plaintext of a :class:`BlobWriter` in progress (see ``reader``)."""

    def __init__(self, writer: BlobWriter) -> None:
        super().__init__()
        self._writer, self._pos = writer, 0
        self.size, self._sealed, self._tail = writer.size, writer._index, bytes(writer._pending)
        self._file: io.BufferedReader | None = None
        self._chunk_index, self._chunk = -1, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Never past the written size: a peer's absurd declared length reads short."""
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        parts = []
        while self._pos < end:
            index, offset = divmod(self._pos, self._writer.chunk_size)
            part = self._load(index)[offset : offset + end - self._pos]
            parts.append(part)
            self._pos += len(part)
        return b"".join(parts)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _load(self, index: int) -> bytes:
        if index >= self._sealed:
            return self._tail
        if index != self._chunk_index:
            writer = self._writer
            if self._file is None:
                self._file = open(writer.tmp_path, "rb")  # noqa: SIM115 - closed in close()
            self._file.seek(_HEADER.size + index * (writer.chunk_size + _TAG_BYTES))
            nonce = writer._prefix + struct.pack(">I", index)
            sealed = self._file.read(writer.chunk_size + _TAG_BYTES)
            self._chunk = writer._store._aes.decrypt(nonce, sealed, _aad(writer.blob_id, index, False))
            self._chunk_index = index
        return self._chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


class BlobStore:
    """A directory of encrypted blobs named by random ids (never by patient data)."""

    def __init__(self, root: Path, store_key: bytes) -> None:
        self.root = root
        self._aes = AESGCM(derive_blob_key(store_key))

    def path_for(self, blob_id: str) -> Path:
        """Where a blob lives; ids are checked so no path is ever built from peer data."""
        if not _BLOB_ID.match(blob_id):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "malformed blob id")
        return self.root / blob_id[:2] / f"{blob_id}.mvb"

    def writer(self, blob_id: str, *, chunk_size: int = CHUNK_SIZE) -> BlobWriter:
        """Start a streaming write; call ``commit()`` or ``abort()`` on the result. A smaller
        ``chunk_size`` seals more of a stream while it arrives and leaves less for the
        commit; readers take it from the blob's header."""
        if not 0 < chunk_size <= CHUNK_SIZE:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"blob chunk size must be 1..{CHUNK_SIZE} bytes")
        try:
            return BlobWriter(self, blob_id, chunk_size)
        except OSError as exc:
            raise _disk_error(exc) from exc

    def write_bytes(self, blob_id: str, data: bytes) -> tuple[int, str]:
        """Encrypt ``data`` durably; returns ``(size, sha256)``. Nothing is left on failure."""
        writer = self.writer(blob_id)
        try:
            for start in range(0, len(data), CHUNK_SIZE):
                writer.write(memoryview(data)[start : start + CHUNK_SIZE])
            writer.commit()
        except OSError as exc:
            writer.abort()
            raise _disk_error(exc) from exc
        except BaseException:
            writer.abort()
            raise
        return writer.size, writer.sha256

    def iter_chunks(self, blob_id: str) -> Iterator[bytes]:
        """Decrypt a blob chunk by chunk, verifying order, integrity and completeness."""
        handle = self._open(blob_id)
        try:
            prefix, chunk_size, end = self._layout(handle, blob_id)
            index, position = 0, _HEADER.size
            sealed = handle.read(min(chunk_size + _TAG_BYTES, end - position))
            while True:
                position += len(sealed)
                following = handle.read(min(chunk_size + _TAG_BYTES, end - position))
                final = not following
                nonce = prefix + struct.pack(">I", index)
                try:
                    yield self._aes.decrypt(nonce, sealed, _aad(blob_id, index, final))
                except InvalidTag as exc:
                    raise _damaged(blob_id) from exc
                if final:
                    return
                sealed, index = following, index + 1
        finally:
            handle.close()

    def read_index(self, blob_id: str) -> bytes | None:
        """The index record sealed in an ``MVB2`` blob (None for ``MVB1``); a record that
        fails its check raises ``DATABASE_ERROR``, a missing file ``FileNotFoundError``."""
        handle = open(self.path_for(blob_id), "rb")  # noqa: SIM115 - closed in finally
        try:
            if handle.read(len(MAGIC_INDEXED)) != MAGIC_INDEXED:
                return None
            handle.seek(0)
            prefix, _, end = self._layout(handle, blob_id)
            handle.seek(end)
            sealed = handle.read(MAX_INDEX_BYTES + 1)[: -_INDEX_LENGTH.size]
            try:
                return self._aes.decrypt(prefix + struct.pack(">I", _INDEX_CHUNK), sealed, _index_aad(blob_id))
            except InvalidTag as exc:
                raise _damaged(blob_id) from exc
        finally:
            handle.close()

    def _open(self, blob_id: str) -> io.BufferedReader:
        try:
            return open(self.path_for(blob_id), "rb")
        except FileNotFoundError as exc:
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"blob {blob_id} is missing") from exc

    @staticmethod
    def _layout(handle: io.BufferedReader, blob_id: str) -> tuple[bytes, int, int]:
        """``(nonce prefix, chunk size, end of the chunks)``; leaves ``handle`` after the header."""
        header = handle.read(_HEADER.size)
        if len(header) != _HEADER.size:
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"blob {blob_id} is truncated")
        magic, prefix, chunk_size = _HEADER.unpack(header)
        if magic not in (MAGIC, MAGIC_INDEXED):
            raise MedVisionError(ErrorCode.DATABASE_ERROR, f"blob {blob_id} has an unknown format")
        end = os.fstat(handle.fileno()).st_size
        if magic == MAGIC_INDEXED:
            handle.seek(end - _INDEX_LENGTH.size)
            (length,) = _INDEX_LENGTH.unpack(handle.read(_INDEX_LENGTH.size))
            end -= _INDEX_LENGTH.size + length
            if length > MAX_INDEX_BYTES or end < _HEADER.size:
                raise _damaged(blob_id)
            handle.seek(_HEADER.size)
        return prefix, chunk_size, end

    def read_bytes(self, blob_id: str) -> bytes:
        """The whole plaintext of a blob."""
        return b"".join(self.iter_chunks(blob_id))

    def delete(self, blob_id: str) -> None:
        """Remove a blob file if present."""
        self.path_for(blob_id).unlink(missing_ok=True)

    def ids_of_owner(self, owner: str) -> list[str]:
        """The committed blobs stored under a :func:`scoped_blob_id` of ``owner``."""
        mark = owner_mark(owner)
        return sorted(p.stem for p in (self.root / mark[:2]).glob(f"{mark}*.mvb"))

    def ids_on_disk(self) -> set[str]:
        """Every committed blob id found under the root (for orphan sweeps)."""
        if not self.root.exists():
            return set()
        return {p.stem for p in self.root.glob("*/*.mvb")}
