"""Durable file operations every layer shares (the store's blobs, exports, model-pack imports)."""

from __future__ import annotations

import os
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
