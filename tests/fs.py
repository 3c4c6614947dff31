"""Cheap copies of GB-sized trees (model packs, bundles, frozen apps) for tests.

CI shares its disk: a suite that copies a 1 GB pack per test can fill it. A hard link costs no
space, but it shares the bytes with the source, so changing a linked file in place changes the
original too. Unlinking, renaming or replacing a linked file is safe.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path

LINK_FROM_BYTES = 64 * 1024  # smaller files (manifests, scripts) are copied: tests edit those in place


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard link, or copy across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def linked_copy(src: Path, dst: Path, *, writable: Collection[str | Path] = ()) -> Path:
    """Copy the tree `src` to `dst`, hard-linking its large files.

    Files named in `writable` (paths relative to `src`) and files under 64 KiB are real copies,
    safe to change in place; every other file is a link to the original.
    """
    src = Path(src)
    own = {(src / name).resolve() for name in writable}

    def copy(source: str, target: str) -> None:
        path = Path(source)
        if path.resolve() in own or path.stat().st_size < LINK_FROM_BYTES:
            shutil.copy2(source, target)
        else:
            link_or_copy(source, target)

    copied = Path(shutil.copytree(src, dst, copy_function=copy, symlinks=True))
    for name in writable:  # a symlink in `src` is copied as a link: make a writable file a real file
        target = copied / name
        if target.is_symlink():
            data = target.read_bytes()
            target.unlink()
            target.write_bytes(data)
    return copied
