"""Images: files into the store, and decoded pixels back out through one bounded cache."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from engine.analysis.quality import check_quality
from engine.config import DEFAULT_DECODE_CACHE_BYTES, DEFAULT_MAX_IMAGE_FILE_BYTES, DecodeLimits
from engine.errors import ErrorCode, MedVisionError
from engine.files import (
    FileTooLargeError,
    NotARegularFileError,
    check_regular_file,
    read_regular_file,
)
from engine.imaging import DecodedImage, decode_image
from engine.imaging.records import record_from_decoded
from engine.imaging.volume.assemble import stored_slice_record
from engine.store import Store
from engine.vocabulary import IMAGE_TYPES

#: Decoded frames kept per process: enough for the images a radiologist flips between.
DECODE_CACHE_ENTRIES = 4


def decoded_nbytes(decoded: DecodedImage) -> int:
    """What a decoded frame holds in memory: its stored values and its float values."""
    return int(decoded.raw.nbytes) + int(decoded.pixels.nbytes)


class DecodeCache:
    """The last few decoded frames, keyed by (image id, frame); thread-safe.

    Bounded twice: at most ``entries`` frames and at most ``max_bytes`` of them
    (:func:`decoded_nbytes`), the least recently used going first. A frame larger than
    the whole budget is not kept at all.
    """

    def __init__(self, entries: int = DECODE_CACHE_ENTRIES, max_bytes: int = DEFAULT_DECODE_CACHE_BYTES) -> None:
        self.entries = entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], DecodedImage] = OrderedDict()
        self._sizes: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached frames now."""
        with self._lock:
            return sum(self._sizes.values())

    def get(self, image_id: str, frame: int) -> DecodedImage | None:
        with self._lock:
            found = self._items.get((image_id, frame))
            if found is not None:
                self._items.move_to_end((image_id, frame))
            return found

    def put(self, image_id: str, frame: int, decoded: DecodedImage) -> None:
        key, size = (image_id, frame), decoded_nbytes(decoded)
        with self._lock:
            self._items.pop(key, None)
            self._sizes.pop(key, None)
            if size > self.max_bytes:
                return
            self._items[key], self._sizes[key] = decoded, size
            total = sum(self._sizes.values())
            while len(self._items) > self.entries or total > self.max_bytes:
                oldest, _ = self._items.popitem(last=False)
                total -= self._sizes.pop(oldest)

    def forget(self, image_ids: set[str] | list[str]) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] in image_ids]:
                del self._items[key]
                del self._sizes[key]


def image_summary(image: dict) -> dict:
    """The public summary of an ``images`` row."""
    spacing = image["metadata"].get("pixel_spacing") or {}
    return {
        "image_id": image["id"],
        "type": image["type"],
        "type_source": image["type_source"],
        "modality": image["modality"],
        "format": image["format"],
        "source_name": image["source_name"],
        "rows": image["rows"],
        "columns": image["columns"],
        "frame_count": image["frame_count"],
        "pixel_spacing_mm": spacing.get("pixel_spacing_mm"),
        "spacing_source": spacing.get("source", "none"),
        "created_at": image["created_at"],
    }


def read_image_file(path: Path, max_bytes: int = DEFAULT_MAX_IMAGE_FILE_BYTES, *, check_only: bool = False) -> bytes:
    """A regular file's bytes (at most ``max_bytes``, read without blocking or reading past the
    limit), or a coded error naming only the file: every :class:`OSError` becomes one. With
    ``check_only`` the file is opened and checked but not read (``b""``)."""
    name = path.name or "path"
    try:
        if check_only:
            check_regular_file(path, max_bytes)
            return b""
        return read_regular_file(path, max_bytes)
    except FileNotFoundError as exc:
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"no such file: {name}") from exc
    except IsADirectoryError as exc:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{name} is a directory, not an image") from exc
    except NotARegularFileError as exc:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{name} is {exc.kind}, not an image file",
                             reason="not_a_regular_file") from exc
    except FileTooLargeError as exc:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{name} is larger than the {exc.limit} bytes an image "
                             "file may hold", reason="file_too_large", limit_bytes=exc.limit) from exc
    except PermissionError as exc:
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"cannot read {name}: permission denied") from exc
    except OSError as exc:  # a symlink loop, a name too long, an I/O error...
        reason = exc.strerror or type(exc).__name__
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"cannot read {name[:80]}: {reason}") from exc
    except ValueError as exc:  # an embedded NUL
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "invalid image path") from exc


def require_finite(decoded: DecodedImage, name: str) -> None:
    """Refuse pixel values that are not finite numbers (NaN float pixels, a rescale that overflows)."""
    for values in (decoded.raw, decoded.pixels):
        if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
            raise MedVisionError(ErrorCode.INVALID_IMAGE, f"{name}: the pixel values are not finite numbers "
                                 "(NaN or infinity after the modality rescale)", reason="non_finite_pixels")


class ImageService:
    """Adds image files to sessions and serves their decoded pixels."""

    def __init__(self, store: Store, cache: DecodeCache | None = None, limits: DecodeLimits | None = None,
                 max_file_bytes: int = DEFAULT_MAX_IMAGE_FILE_BYTES) -> None:
        self.store = store
        self.cache = cache or DecodeCache()
        self.limits = limits or DecodeLimits.from_env()
        #: The largest file :meth:`add_file` reads (``Settings.max_image_file_bytes``).
        self.max_file_bytes = max_file_bytes

    def add_file(self, session_id: str, image_path: str | Path, image_type: str | None = None,
                 frame: int = 0) -> dict[str, Any]:
        """Decode a file, store it encrypted in the session; returns the row, decoded frame, quality and timings."""
        started = time.perf_counter()
        self.store.get_session(session_id)
        if image_type is not None and image_type not in IMAGE_TYPES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"image_type must be one of {', '.join(IMAGE_TYPES)}")
        path = Path(image_path)
        data = read_image_file(path, self.max_file_bytes)
        decoded = decode_image(data, frame=frame, filename=path.name, limits=self.limits)
        require_finite(decoded, path.name)
        quality = check_quality(decoded, image_type=image_type)
        decoded_at = time.perf_counter()
        record = record_from_decoded(decoded, source_name=path.name, source_path=str(path.resolve()),
                                     image_type=image_type, quality=quality)
        if decoded.format == "dicom" and decoded.frame_count == 1:  # a volume's slice is listed from this
            record["metadata"]["volume_slice"] = stored_slice_record(data, path.name, self.limits)
        image = self.store.add_image(session_id, blob_data=data, record=record)
        self.store.add_interaction(session_id, "upload", {"image_id": image["id"], "source_name": path.name},
                                   image["id"])
        self.cache.put(image["id"], frame, decoded)
        stored_at = time.perf_counter()
        return {"image": image, "decoded": decoded, "quality": quality,
                "timings_ms": {"decode": round((decoded_at - started) * 1000, 2),
                               "store": round((stored_at - decoded_at) * 1000, 2)}}

    def decoded_image(self, session_id: str, image_id: str) -> tuple[dict, DecodedImage]:
        """The image row and its decoded pixels (from the per-process cache when possible)."""
        image = self.store.get_image(image_id, session_id=session_id)
        frame = int(image["metadata"].get("frame_index", 0))
        cached = self.cache.get(image_id, frame)
        if cached is None:
            cached = decode_image(self.store.image_bytes(image), frame=frame, filename=image["source_name"],
                                  limits=self.limits)
            self.cache.put(image_id, frame, cached)
        return image, cached

    def check_file(self, image_path: str | Path) -> dict[str, Any]:
        """Whether a file could be added (a readable regular file within the size limit): its name, or the
        coded error :meth:`add_file` would raise; nothing is read or stored."""
        path = Path(image_path)
        read_image_file(path, self.max_file_bytes, check_only=True)
        return {"name": path.name}

    def current_image_id(self, session_id: str) -> str:
        """The session's current image, or IMAGE_NOT_FOUND when it has none."""
        image_id = self.store.get_session(session_id)["current_image_id"]
        if image_id is None:
            raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, "the session has no images yet")
        return image_id
