"""Decompression bombs for tests, written chunk by chunk: small files that promise huge images.

Nothing big is ever allocated here: the zeros are fed to zlib 1 MiB at a time, so the test
process stays small while the file inflates to hundreds of MB or more. And measuring a
probe: :func:`run_capped` runs a command in a child under an address-space cap and
returns its own peak RSS (``wait4``), unaffected by any other child of the test run.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    generate_uid,
)

CHUNK = 1024 * 1024
ZEROS = bytes(CHUNK)
MiB = 1024 * 1024


def _raw_deflate(data: bytes) -> bytes:
    """``data`` deflated (raw) and fully flushed: a run of blocks independent of anything around it."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


#: One MiB of zeros as raw deflate blocks; a full flush resets the compressor, so the
#: same bytes repeated inflate to that many MiB (the file is built without compressing them).
ZERO_BLOCK = _raw_deflate(ZEROS)


def _zeros(count: int) -> bytes:
    """Raw deflate blocks holding ``count`` zero bytes."""
    full, rest = divmod(count, CHUNK)
    return ZERO_BLOCK * full + (_raw_deflate(bytes(rest)) if rest else b"")


def _explicit_le(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _header(sop_class: str, modality: str, rows: int, columns: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Bomb^Test", "B-1", modality
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def _write_deflated(path: Path, ds: Dataset, tail: list[tuple[bytes, int]]) -> Path:
    """A Part 10 file: file meta, then ``ds`` and each (element header, zero count) deflated."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    parts = [out.getvalue(), _raw_deflate(_explicit_le(ds))]
    for element_header, zeros in tail:
        parts += [_raw_deflate(element_header), _zeros(zeros)]
    parts.append(zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush())  # the final (empty) block
    path.write_bytes(b"".join(parts))
    return path


def _ow(tag: tuple[int, int], length: int, vr: bytes = b"OW") -> bytes:
    return struct.pack("<HH2sHI", *tag, vr, 0, length)


def deflated_cr(path: Path, rows: int, columns: int) -> Path:
    """A Deflated 16-bit CR chest PA of all-zero pixels (12000 x 12000: about 280 kB)."""
    ds = _header(ComputedRadiographyImageStorage, "CR", rows, columns)
    return _write_deflated(path, ds, [(_ow((0x7FE0, 0x0010), rows * columns * 2), rows * columns * 2)])


def deflated_private_bomb(path: Path, inflated: int = 1536 * MiB) -> Path:
    """A Deflated 32 x 32 CT whose private OB element inflates to ``inflated`` bytes (1.5 GiB: ~1.5 MB)."""
    ds = _header(CTImageStorage, "CT", 32, 32)
    ds.add_new(0x00090010, "LO", "BOMB")
    return _write_deflated(path, ds, [(_ow((0x0009, 0x1000), inflated, b"OB"), inflated),
                                      (_ow((0x7FE0, 0x0010), 32 * 32 * 2), 32 * 32 * 2)])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_zeros(path: Path, width: int, height: int, *, rgb: bool) -> Path:
    """An all-black 8-bit PNG (RGB or grey), its rows deflated a batch at a time."""
    size = height * (1 + width * (3 if rgb else 1))  # each row: filter byte 0, then the row
    adler = 1
    for _ in range(size // CHUNK):
        adler = zlib.adler32(ZEROS, adler)
    adler = zlib.adler32(bytes(size % CHUNK), adler)
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    idat = [b"\x78\xda", _zeros(size), final, struct.pack(">I", adler)]
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if rgb else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(idat))
                     + _chunk(b"IEND", b""))
    return path


@dataclass(frozen=True)
class Capped:
    """How a capped child ended: exit code, output, and its own peak RSS in MB."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float


def run_capped(command: list[str], *, env: dict[str, str], cwd: Path, address_space: int = 3 * 1024 * MiB,
               timeout: float = 120) -> Capped:
    """Run ``command`` with RLIMIT_AS = ``address_space`` (a regression fails instead of
    taking the machine down) and measure the child's peak RSS with ``wait4``."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    out_path, err_path = cwd / f".capped-{os.getpid()}.out", cwd / f".capped-{os.getpid()}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=cwd, preexec_fn=cap)  # noqa: PLW1509
        try:
            _, status, usage = _wait4(process.pid, timeout)
        except TimeoutError:
            process.kill()
            os.waitpid(process.pid, 0)
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    out_path.unlink()
    err_path.unlink()
    return Capped(process.returncode, stdout, stderr, usage.ru_maxrss / 1024)


def _wait4(pid: int, timeout: float) -> tuple[int, int, resource.struct_rusage]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        done_pid, status, usage = os.wait4(pid, os.WNOHANG)
        if done_pid:
            return done_pid, status, usage
        if time.monotonic() > deadline:
            raise TimeoutError(f"child {pid} still running after {timeout} s")
        time.sleep(0.05)


def vm_hwm_mb(pid: int) -> float:
    """A live process's peak RSS (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")
