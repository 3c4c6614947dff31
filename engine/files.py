"""Durable file operations every layer shares (the store's blobs, exports, model-pack imports), and the one
bounded, non-blocking read of a user's file."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the directory entry itself is fsynced; POSIX only:
    Windows cannot open a directory, and NTFS journals the rename)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Bytes read per call after the first (the first read asks for the whole announced size).
_READ_CHUNK = 1 << 20


class NotARegularFileError(OSError):
    """The path names a FIFO, device, socket or folder: refused before any byte is read."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"not a regular file ({kind})")
        self.kind = kind


class FileTooLargeError(OSError):
    """The file holds more bytes than the caller allows (checked before reading, and while reading)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than the {limit}-byte limit")
        self.limit = limit


def _kind(mode: int) -> str | None:
    """What a non-regular file is, or None for a regular file."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a file"


def _open_regular(path: str | os.PathLike[str], max_bytes: int) -> tuple[int, int]:
    """An open descriptor of a regular file of at most ``max_bytes``, and its announced size."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        kind = _kind(info.st_mode)
        if kind is not None:
            raise NotARegularFileError(kind)
        if info.st_size > max_bytes:
            raise FileTooLargeError(max_bytes)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def check_regular_file(path: str | os.PathLike[str], max_bytes: int) -> int:
    """The size of a regular file of at most ``max_bytes``, checked as :func:`read_regular_file` would
    (the same errors), without reading it."""
    fd, size = _open_regular(path, max_bytes)
    os.close(fd)
    return size


def read_regular_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, never blocking and never reading past the limit.

    The file is opened with ``O_NONBLOCK`` (a FIFO without a writer opens at once) and its
    type checked on the open descriptor (no race with a swapped path): a FIFO, device,
    socket or folder raises :class:`NotARegularFileError`, a file over the limit (announced or
    grown while read) :class:`FileTooLargeError`. Symlinks are followed; a loop, a name too
    long, a missing or unreadable file raise the usual :class:`OSError`.
    """
    fd, size = _open_regular(path, max_bytes)
    try:
        first = os.read(fd, size) if size else b""  # may be short: the loop reads the rest
        parts, total = [first], len(first)
        while chunk := os.read(fd, min(_READ_CHUNK, max_bytes + 1 - total)):
            parts.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FileTooLargeError(max_bytes)
        return first if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)
