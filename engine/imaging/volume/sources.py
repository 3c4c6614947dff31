"""Where a slice's bytes come from: a file on disk, or a stored image decrypted in memory.

Assembly reads every slice through one :class:`SliceSource`, so a series on disk and a
series held encrypted in the store take the same road: headers first, then pixels slice by
slice. A stored source hands over its decrypted bytes in memory only; nothing is written.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from engine.config import DEFAULT_MAX_IMAGE_FILE_BYTES
from engine.files import check_regular_file, read_regular_file


@dataclass(frozen=True)
class SliceSource:
    """One DICOM object to read: ``name`` for messages, ``key`` to tell sources apart
    (a path, or ``image:<id>``), ``path`` for a file on disk, else ``reader`` giving its bytes."""

    name: str
    key: str
    path: Path | None = None
    reader: Callable[[], bytes] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def file(cls, path: str | Path) -> SliceSource:
        path = Path(path)
        return cls(name=path.name, key=str(path), path=path)

    @classmethod
    def stored(cls, image_id: str, name: str, reader: Callable[[], bytes]) -> SliceSource:
        """A stored image: ``reader`` returns its decrypted bytes (in memory)."""
        return cls(name=name or image_id, key=f"image:{image_id}", reader=reader)

    @property
    def image_id(self) -> str | None:
        return self.key.removeprefix("image:") if self.key.startswith("image:") else None

    def read(self) -> bytes:
        """The whole object (a regular file within the size cap, or the decrypted blob)."""
        if self.path is not None:
            return read_regular_file(self.path, DEFAULT_MAX_IMAGE_FILE_BYTES)
        assert self.reader is not None
        return self.reader()

    def open(self) -> BinaryIO:
        """A binary stream over the object, for reading its header (files are streamed, not read whole)."""
        if self.path is not None:
            check_regular_file(self.path, DEFAULT_MAX_IMAGE_FILE_BYTES)
            return self.path.open("rb")
        return io.BytesIO(self.read())
