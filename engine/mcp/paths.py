"""Which files an MCP client may hand the engine: only images under the allowed roots.

Roots come from ``MEDVISION_MCP_ROOTS`` (``os.pathsep``-separated), ``--root`` and the
roots the client declares. A path is refused when it has a ``..`` component, resolves
(through symlinks) outside every root, is not a regular file (device, fifo, folder) or
does not start like an image the decoder reads (DICOM, PNG, JPEG; JPEG 2000 and TIFF files are
refused as UNSUPPORTED_FORMAT, JPEG 2000 inside DICOM is fine). Messages name the
file's basename only, never the folder it lives in.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

from pydicom.errors import InvalidDicomError

from engine.config import DecodeLimits
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.limits import read_dicom

ROOTS_ENV = "MEDVISION_MCP_ROOTS"
#: The standalone image files the decoder reads (engine.imaging.decode): DICOM aside, PNG and JPEG.
IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
)
#: Image files the decoder does not read (refused here as UNSUPPORTED_FORMAT, not stored then failed).
UNSUPPORTED_MAGIC = {
    b"\x00\x00\x00\x0cjP  \r\n\x87\n": "JPEG 2000",  # JP2 box
    b"\xff\x4f\xff\x51": "JPEG 2000",  # codestream
    b"II*\x00": "TIFF",  # little endian
    b"MM\x00*": "TIFF",  # big endian
}


def env_roots() -> list[Path]:
    """The roots configured in ``MEDVISION_MCP_ROOTS``."""
    return [Path(p).expanduser() for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]


def uri_to_path(uri: str) -> Path | None:
    """A client root (``file://`` URI) as a local path; other schemes give None."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def _refuse(name: str, reason: str) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{name}: {reason}", reason="path_not_allowed")


def confine(raw: str, roots: Iterable[Path], *, must_exist: bool = True) -> Path:
    """``raw`` resolved, provided it lies under one of ``roots`` (after following symlinks)."""
    name = Path(raw).name or "path"
    if not raw or "\x00" in raw:
        raise _refuse(name, "not a valid path")
    path = Path(raw).expanduser()
    if ".." in path.parts:
        raise _refuse(name, "'..' is not allowed in paths")
    if not path.is_absolute():
        raise _refuse(name, "the path must be absolute")
    resolved = path.resolve(strict=False)
    allowed = [root.resolve() for root in roots]
    if not any(resolved.is_relative_to(root) for root in allowed):
        raise _refuse(name, "outside the allowed roots (add one with --root or the client's roots)")
    if must_exist and not resolved.exists():
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"no such file: {name}")
    return resolved


def image_file(raw: str, roots: Iterable[Path]) -> Path:
    """A confined path that is a regular file starting like a DICOM or a common image."""
    path = confine(raw, roots)
    name = Path(raw).name
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise _refuse(name, "not a regular file")
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"cannot read {name}") from exc
    if head[128:132] == b"DICM" or head.startswith(IMAGE_MAGIC) or _dicom_without_preamble(path, head):
        return path
    for magic, kind in UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise MedVisionError(ErrorCode.UNSUPPORTED_FORMAT, f"{name}: {kind} files are not supported; "
                                 "give a DICOM, PNG or JPEG file", reason="unsupported_format", format=kind)
    raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{name}: not a DICOM, PNG or JPEG file",
                         reason="not_an_image")


def _dicom_without_preamble(path: Path, head: bytes) -> bool:
    """A raw DICOM data set (no 128-byte preamble) that pydicom can read (a Deflated one
    inflated within the decode limits, large values dropped as they pass)."""
    if head[:2] not in (b"\x02\x00", b"\x08\x00"):  # group 0002 or 0008, little endian
        return False
    try:
        with path.open("rb") as handle:
            dataset, _ = read_dicom(handle, DecodeLimits.from_env(), name=path.name, force=True,
                                    stop_before_pixels=True, defer_size="64 KB")
    except (InvalidDicomError, ValueError, OSError, EOFError, zlib.error):
        return False
    return "SOPClassUID" in dataset or "Modality" in dataset
