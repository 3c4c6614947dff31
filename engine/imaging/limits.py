"""Size limits checked before anything big is allocated, and DICOM reading that honours them.

Three ways a small file becomes a large allocation, each bounded here
(:class:`engine.config.DecodeLimits` holds the numbers):

- a DICOM header declaring a huge image: :func:`check_pixel_limits` compares
  rows x columns (one frame) and rows x columns x samples x frames x bytes per sample
  (the whole Pixel Data) with the limits before pydicom decodes a pixel;
- a Deflated Explicit VR Little Endian dataset: pydicom inflates the whole stream in
  one call, so :func:`read_dicom` never lets it; it inflates through
  :class:`BoundedInflater`, chunk by chunk, stopping at ``max_inflated_bytes``, and
  checks the header (read before Pixel Data) before the pixels are inflated at all;
- a PNG or JPEG: the caller compares Pillow's size (known from the header) with
  ``max_image_pixels`` before ``load()``; Pillow's own DecompressionBombWarning is an
  error (see :mod:`engine.imaging.decode`).

Every refusal is ``MedVisionError(IMAGE_TOO_LARGE)`` naming the file (base name only),
the measured size and the limit.
"""

from __future__ import annotations

import io
import zlib
from typing import Any, BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from engine.config import DecodeLimits
from engine.errors import ErrorCode, MedVisionError

#: Compressed bytes read per step, and the most inflated bytes one step may produce.
INPUT_CHUNK = 64 * 1024
OUTPUT_CHUNK = 1024 * 1024
#: Inflated bytes kept behind the read position, for pydicom's short look-backs (a tag
#: header re-read after a peek). A seek further back is refused.
LOOK_BACK = 64 * 1024
PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # Float, Double Float, Pixel Data
PIXEL_BYTES = {0x7FE00008: 4, 0x7FE00009: 8}
#: Header values longer than this are inflated and dropped while a Deflated header is
#: checked (pydicom's "defer" size).
LARGE_VALUE = 64 * 1024


def image_too_large(name: str, what: str, size: int, limit: int, setting: str) -> MedVisionError:
    """The coded refusal: ``IMAGE_TOO_LARGE`` with the size, the limit and its setting."""
    return MedVisionError(
        ErrorCode.IMAGE_TOO_LARGE,
        f"'{name}' is too large to decode: {what} {size:,} exceeds the limit of {limit:,} ({setting}).",
        file=name, size=size, limit=limit, setting=setting,
    )


def check_image_pixels(rows: int, columns: int, limits: DecodeLimits, name: str) -> None:
    """Refuse a frame of more than ``max_image_pixels`` (rows x columns)."""
    pixels = max(rows, 0) * max(columns, 0)
    if pixels > limits.max_image_pixels:
        raise image_too_large(name, f"{columns} x {rows} =", pixels, limits.max_image_pixels,
                              "MEDVISION_MAX_IMAGE_PIXELS")


def _declared_int(ds: Dataset, keyword: str, default: int) -> int:
    """A numeric header value as an int, ``default`` when absent, empty or unreadable."""
    try:
        value = ds.get(keyword)
        if isinstance(value, list | tuple | pydicom.multival.MultiValue):
            value = value[0] if len(value) else None
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError, KeyError, OverflowError):
        return default


def check_pixel_limits(ds: Dataset, limits: DecodeLimits, name: str) -> None:
    """Refuse a DICOM image whose declared size is over the limits (header only, nothing decoded).

    One frame: rows x columns against ``max_image_pixels``. The whole Pixel Data:
    rows x columns x samples x frames x bytes per sample (Bits Allocated rounded up to
    bytes; 4 or 8 for Float / Double Float Pixel Data) against ``max_pixel_data_bytes``.
    A dataset with neither pixel data nor Rows/Columns (a header read up to Pixel Data
    counts by its Rows/Columns) passes.
    """
    tag = next((t for t in PIXEL_TAGS if t in ds), None)
    if tag is None and "Rows" not in ds and "Columns" not in ds:
        return
    rows, columns = _declared_int(ds, "Rows", 0), _declared_int(ds, "Columns", 0)
    check_image_pixels(rows, columns, limits, name)
    samples = max(_declared_int(ds, "SamplesPerPixel", 1), 1)
    frames = max(_declared_int(ds, "NumberOfFrames", 1), 1)
    per_sample = PIXEL_BYTES.get(tag or 0) or max((_declared_int(ds, "BitsAllocated", 8) + 7) // 8, 1)
    total = max(rows, 0) * max(columns, 0) * samples * frames * per_sample
    if total > limits.max_pixel_data_bytes:
        raise image_too_large(
            name, f"pixel data ({columns} x {rows} x {samples} samples x {frames} frames x {per_sample} bytes) of",
            total, limits.max_pixel_data_bytes, "MEDVISION_MAX_PIXEL_DATA_BYTES")


class BoundedInflater(io.RawIOBase):
    """A read-only, forward-seeking view of a raw deflate stream, inflated lazily.

    Reads inflate only what they need, a forward seek inflates and discards, and at most
    ``limit`` bytes are ever inflated: past that, ``IMAGE_TOO_LARGE``. Memory stays at
    what the caller reads plus a small look-back window. ``size`` is known once the
    stream has ended (:meth:`drain`); :meth:`drain` also refuses a truncated stream
    (``zlib.error``, as ``zlib.decompress`` would).
    """

    def __init__(self, source: BinaryIO, limit: int, name: str) -> None:
        super().__init__()
        self._source, self._limit, self._name = source, limit, name
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""  # compressed input not yet inflated
        self._buffer = bytearray()  # inflated bytes from offset self._base
        self._base = 0
        self._position = 0
        self._produced = 0
        self._ended = False  # no more inflated bytes will come (stream end or input exhausted)

    # -- io.RawIOBase
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence == io.SEEK_END:
            self.drain()
            offset += self._produced
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence {whence}")
        if offset < self._base:
            raise OSError("cannot seek back that far in a streamed deflate dataset")
        self._position = offset
        return offset

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            self.drain()
            size = max(self._produced - self._position, 0)
        self._fill(self._position + size)
        start = self._position - self._base
        data = bytes(self._buffer[start:start + size])
        self._position += len(data)
        self._trim()
        return data

    def readinto(self, target: Any) -> int:
        data = self.read(len(target))
        target[:len(data)] = data
        return len(data)

    # -- the bounded inflation
    @property
    def size(self) -> int:
        """Inflated bytes produced so far (the whole size once :meth:`drain` returned)."""
        return self._produced

    def drain(self) -> int:
        """Inflate (and drop) the rest of the stream; its whole inflated size."""
        self._fill(None)
        if not self._inflate.eof:
            raise zlib.error("incomplete or truncated deflate stream")
        return self._produced

    def _fill(self, end: int | None) -> None:
        """Inflate until the buffer covers ``end`` (None: the stream's end), dropping
        what lies before the read position less the look-back window."""
        while not self._ended and (end is None or self._base + len(self._buffer) < end):
            if not self._pending:
                self._pending = self._source.read(INPUT_CHUNK) if not self._inflate.eof else b""
                if not self._pending:
                    self._ended = True
                    break
            piece = self._inflate.decompress(self._pending, OUTPUT_CHUNK)
            self._pending = self._inflate.unconsumed_tail
            if self._inflate.eof:
                self._pending, self._ended = b"", True
            self._produced += len(piece)
            if self._produced > self._limit:
                raise image_too_large(self._name, "the inflated (Deflate) dataset of at least", self._produced,
                                      self._limit, "MEDVISION_MAX_INFLATED_BYTES")
            self._buffer += piece
            self._trim()

    def _trim(self) -> None:
        """Drop inflated bytes more than LOOK_BACK behind the position (``_base + len(_buffer)``
        stays the count produced)."""
        drop = min(self._position - LOOK_BACK - self._base, len(self._buffer))
        if drop > LOOK_BACK or drop == len(self._buffer) > 0:
            del self._buffer[:drop]
            self._base += drop


def _outside_group_0002(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    return tag in PIXEL_TAGS


def _deflated_start(fp: BinaryIO, force: bool) -> tuple[bytes | None, FileMetaDataset] | None:
    """Preamble and file meta when the dataset is Deflated (``fp`` then at its stream), else None (``fp`` rewound)."""
    start = fp.tell()
    try:
        preamble = read_preamble(fp, force)
        meta_start = fp.tell()
        if fp.read(2) != b"\x02\x00":  # no file meta group: no transfer syntax to name Deflate
            fp.seek(start)
            return None
        for implicit in (False, True):  # like pydicom: an implicit VR group 0002 is retried
            fp.seek(meta_start)
            meta = FileMetaDataset(read_dataset(fp, implicit, True, stop_when=_outside_group_0002))
            try:
                syntax = meta.get("TransferSyntaxUID")
                break
            except NotImplementedError:
                continue
        else:
            syntax = None
    except Exception:  # noqa: BLE001 - not readable this way: pydicom's own read reports it below
        syntax = None
    if syntax != DeflatedExplicitVRLittleEndian:
        fp.seek(start)
        return None
    return preamble, meta


def _file_dataset(fp: Any, body: Dataset, preamble: bytes | None, meta: FileMetaDataset) -> FileDataset:
    ds = FileDataset(fp, body, preamble, meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, body.original_character_set)
    return ds


def _drop_deferred(body: Dataset) -> list[int]:
    """Remove the values a deferred read left out (a stream cannot be read back); their tags."""
    dropped = []
    for tag in list(body.keys()):
        raw = body.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length not in (0, 0xFFFFFFFF):
            del body[tag]
            dropped.append(int(tag))
    return dropped


def read_dicom(fp: BinaryIO, limits: DecodeLimits, *, name: str, force: bool = False,
               stop_before_pixels: bool = False, defer_size: str | int | None = None
               ) -> tuple[FileDataset, BoundedInflater | None]:
    """``pydicom.dcmread`` within the limits; returns the dataset and, for a Deflated one,
    the inflater it was read through (``None`` otherwise).

    The header (everything before Pixel Data) is read first and checked with
    :func:`check_pixel_limits`; only then are the pixels read. A Deflated dataset is
    inflated lazily and never past ``max_inflated_bytes``: its header is read with
    values over ``defer_size`` (default :data:`LARGE_VALUE`) inflated and dropped as
    they pass, never held; with ``stop_before_pixels`` that header is returned (the
    caller may :meth:`BoundedInflater.drain` the rest to learn the whole size).
    Otherwise the stream is inflated again from its start into the dataset, every
    element but the large private ones the first pass dropped (vendor blobs the
    decoder never reads), so a private bomb costs no memory either.

    Raises ``IMAGE_TOO_LARGE``, or what pydicom and zlib raise on bad data.
    """
    deflated = _deflated_start(fp, force)
    if deflated is None:
        ds = pydicom.dcmread(fp, defer_size=defer_size, stop_before_pixels=stop_before_pixels, force=force)
        check_pixel_limits(ds, limits, name)  # pixel data, if read, is still bytes: nothing decoded yet
        return ds, None
    preamble, meta = deflated
    start = fp.tell()
    inflater = BoundedInflater(fp, limits.max_inflated_bytes, name)
    header = read_dataset(inflater, False, True, stop_when=_at_pixel_data,
                          defer_size=LARGE_VALUE if defer_size is None else defer_size)
    dropped = _drop_deferred(header)
    ds = _file_dataset(inflater, header, preamble, meta)
    check_pixel_limits(ds, limits, name)
    if stop_before_pixels:
        return ds, inflater
    fp.seek(start)
    inflater = BoundedInflater(fp, limits.max_inflated_bytes, name)
    private_dropped = {tag for tag in dropped if (tag >> 16) % 2 == 1}
    keep = [*(int(t) for t in header.keys()), *(t for t in dropped if t not in private_dropped), *PIXEL_TAGS]
    body = read_dataset(inflater, False, True, specific_tags=keep if private_dropped else None)
    inflater.drain()
    return _file_dataset(inflater, body, preamble, meta), inflater
