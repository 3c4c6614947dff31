"""Uncompressed little-endian slices read straight from the file, without parsing it again.

The header pass (:mod:`engine.imaging.volume.assemble`) has already read everything up to
Pixel Data, checked it against the limits and noted where Pixel Data starts
(:class:`~engine.imaging.volume.headers.NativePixels`). Here the source's bytes (a regular
file within the size cap, or a stored image decrypted in memory) are taken, the element at that offset checked to be Pixel Data of
the expected length, and its values rescaled in float32 straight into the volume's
slice, as :func:`engine.imaging.decode.modality_values` would. Anything unexpected
(another tag there, undefined length, bits set above BitsStored) returns False and the
caller decodes that slice through pydicom instead; data too short is a ``ValueError``,
as pydicom reports it.
"""

from __future__ import annotations

import numpy as np

from engine.imaging.volume.headers import SliceHeader

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
UNDEFINED_LENGTH = 0xFFFFFFFF


def read_native_slice(header: SliceHeader, content: bytes, out: np.ndarray) -> bool:
    """Rescaled values of ``header``'s slice, read from its source's ``content``, into ``out`` (rows,
    columns float32); False when the content is not what the header promised (the caller then decodes
    it with pydicom)."""
    recipe = header.native
    if recipe is None:
        return False
    data = memoryview(content)
    at = recipe.offset
    element = bytes(data[at:at + 12])
    if element[:4] != PIXEL_DATA_TAG:
        return False
    if recipe.explicit_vr:
        if element[4:6] not in (b"OW", b"OB"):
            return False
        length, start = int.from_bytes(element[8:12], "little"), at + 12
    else:
        length, start = int.from_bytes(element[4:8], "little"), at + 8
    if length == UNDEFINED_LENGTH:
        return False
    dtype = np.dtype(recipe.dtype)
    needed = header.rows * header.columns * dtype.itemsize
    if length < needed or len(data) < start + needed:
        raise ValueError(f"the pixel data holds {min(length, len(data) - start)} bytes, {needed} expected")
    raw = np.frombuffer(data[start:start + needed], dtype=dtype).reshape(header.rows, header.columns)
    if recipe.bits_stored < dtype.itemsize * 8 and int(raw.max()) >> recipe.bits_stored:
        return False  # bits above BitsStored: pydicom's road decides what they mean
    # One float32 pass where there is no slope (CT): stored + intercept, computed and written as float32.
    if recipe.slope != 1:
        np.multiply(raw, np.float32(recipe.slope), out=out, dtype=np.float32)
        out += np.float32(recipe.intercept)
    else:
        np.add(raw, np.float32(recipe.intercept), out=out, dtype=np.float32)
    return True
