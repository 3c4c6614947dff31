"""Encrypted blob files: round trip, integrity, truncation, swapping, failed writes."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.errors import ErrorCode, MedVisionError
from engine.store.blobs import CHUNK_SIZE, BlobStore

KEY = bytes(range(32))


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", KEY)


def test_round_trip_across_chunks(blobs: BlobStore) -> None:
    data = os.urandom(CHUNK_SIZE * 3 + 12345)
    size, digest = blobs.write_bytes("a" * 32, data)
    assert size == len(data)
    assert blobs.read_bytes("a" * 32) == data
    assert data[:4096] not in blobs.path_for("a" * 32).read_bytes()
    blobs.write_bytes("b" * 32, b"")
    assert blobs.read_bytes("b" * 32) == b""


@pytest.mark.parametrize(("size", "chunk"), [(0, CHUNK_SIZE), (1000, CHUNK_SIZE), (CHUNK_SIZE, CHUNK_SIZE),
                                             (CHUNK_SIZE * 2 + 777, CHUNK_SIZE), (1000, 4096),
                                             (512 * 1024 + 1300, 128 * 1024), (128 * 1024, 128 * 1024)])
def test_a_blob_in_progress_reads_back_at_any_offset(blobs: BlobStore, size: int, chunk: int) -> None:
    """The view the DICOM node checks a header through: sealed chunks decrypted from the
    temp file, the tail from memory, never past the end; a commit meanwhile changes nothing.
    A smaller chunk size (the node's spool) is recorded in the blob and read back from it."""
    data = os.urandom(size)
    writer = blobs.writer("c" * 32, chunk_size=chunk)
    for start in range(0, size, 65536):  # as a network delivers it
        writer.write(data[start : start + 65536])
    assert writer.in_memory is (size <= chunk)
    view = writer.reader()
    if writer.in_memory:
        writer.commit()  # a commit while the view is read changes nothing
    for offset, length in [(0, 132), (size // 2, 5000), (chunk - 10, 20), (chunk - 10, chunk + 20),
                           (max(size - 3, 0), 100), (size + 5, 10)]:
        view.seek(offset)
        assert view.read(length) == data[offset : offset + length]
    view.seek(0)
    assert view.read() == data and view.tell() == size
    view.close()
    if not writer.committed:
        writer.commit()
    assert blobs.read_bytes("c" * 32) == data
    writer.abort()  # after a commit: keeps the blob
    assert blobs.read_bytes("c" * 32) == data
    sealed_chunks = max(1, -(-size // chunk))  # the last one holds 1..chunk bytes
    assert blobs.path_for("c" * 32).stat().st_size == 16 + size + 16 * sealed_chunks


def test_a_chunk_size_outside_the_format_is_refused(blobs: BlobStore) -> None:
    for chunk in (0, -1, CHUNK_SIZE + 1):
        with pytest.raises(MedVisionError) as err:
            blobs.writer("d" * 32, chunk_size=chunk)
        assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert not list(blobs.root.glob("*/*"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop_last_chunk"])
def test_damaged_blobs_are_refused(blobs: BlobStore, damage: str) -> None:
    blob_id = "c" * 32
    blobs.write_bytes(blob_id, os.urandom(CHUNK_SIZE * 2 + 100))
    path = blobs.path_for(blob_id)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
    elif damage == "truncate":
        raw = raw[:-10]
    else:
        raw = raw[: 16 + 2 * (CHUNK_SIZE + 16)]  # header + two whole chunks, final chunk gone
    path.write_bytes(bytes(raw))
    with pytest.raises(MedVisionError) as err:
        blobs.read_bytes(blob_id)
    assert err.value.code is ErrorCode.DATABASE_ERROR


@pytest.mark.parametrize("size", [0, 1000, CHUNK_SIZE * 2 + 777])
def test_an_index_record_is_sealed_with_the_blob(blobs: BlobStore, size: int) -> None:
    """``MVB2``: the record after the chunks, under the same seal; the content reads as before."""
    data, record = os.urandom(size), b'{"kind": "dicom.instance", "patient": "Doe^Jane"}'
    writer = blobs.writer("f" * 32)
    writer.write(data)
    writer.commit(record)
    assert blobs.read_bytes("f" * 32) == data and blobs.read_index("f" * 32) == record
    assert b"Doe^Jane" not in blobs.path_for("f" * 32).read_bytes()
    blobs.write_bytes("a" * 32, data)  # MVB1: no record
    assert blobs.read_index("a" * 32) is None and blobs.read_bytes("a" * 32) == data
    path, raw = blobs.path_for("f" * 32), blobs.path_for("f" * 32).read_bytes()
    for damaged in (raw[:-8] + bytes([raw[-8] ^ 1]) + raw[-7:], raw[:-2], raw[:-4] + b"\xff\xff\xff\xff"):
        path.write_bytes(damaged)
        with pytest.raises(MedVisionError) as err:
            blobs.read_index("f" * 32)
        assert err.value.code is ErrorCode.DATABASE_ERROR
    path.write_bytes(raw)
    blobs.write_bytes("e" * 32, b"")
    blobs.path_for("e" * 32).write_bytes(raw)  # a record cannot be moved to another blob
    with pytest.raises(MedVisionError):
        blobs.read_index("e" * 32)


def test_blobs_cannot_be_swapped_between_ids(blobs: BlobStore) -> None:
    blobs.write_bytes("d" * 32, b"first")
    blobs.write_bytes("e" * 32, b"second")
    first, second = blobs.path_for("d" * 32), blobs.path_for("e" * 32)
    first.write_bytes(second.read_bytes())
    with pytest.raises(MedVisionError):
        blobs.read_bytes("d" * 32)


def test_ids_from_peers_never_become_paths(blobs: BlobStore) -> None:
    for bad in ("../../etc/passwd", "AB" * 16, "a/b" * 10, ""):
        with pytest.raises(MedVisionError) as err:
            blobs.path_for(bad)
        assert err.value.code is ErrorCode.INVALID_ARGUMENT


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from engine.errors import MedVisionError
    from engine.store.blobs import BlobStore
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))  # files may not exceed 3 MiB
    store = BlobStore(Path(sys.argv[1]), bytes(range(32)))
    try:
        store.write_bytes("f" * 32, b"x" * (8 << 20))
    except MedVisionError as exc:
        print(exc.code.value)
    """
)


def test_a_write_that_runs_out_of_space_leaves_nothing(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the disk 'full' at 3 MiB for one process (EFBIG, like ENOSPC)."""
    root = tmp_path / "blobs"
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(root)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "DATABASE_ERROR", out.stderr
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert resource.getrlimit(resource.RLIMIT_FSIZE)  # the limit applied to the child only
