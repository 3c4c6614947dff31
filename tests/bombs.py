"""Decompression bombs for tests, written chunk by chunk: small files that promise huge images.

Nothing big is ever allocated here: the zeros are fed to zlib 1 MiB at a time, so the test
process stays small while the file inflates to hundreds of MB or more. And measuring a
probe: :func:`run_capped` runs a command in a child under an address-space cap and
returns its own peak RSS (``wait4``), unaffected by any other child of the test run.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
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


#: A small launcher between the test process and a capped command. A child forked straight from
#: pytest starts out with pytest's resident pages counted as its own (Linux keeps that peak
#: across exec: a 3.7 GB test process made every child report 3.7 GB), so the command is
#: forked from this launcher instead, which reports the command's own peak RSS to a file.
LAUNCHER = """
import os, resource, sys
cap, report = int(sys.argv[1]), sys.argv[2]
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    os.execvp(sys.argv[3], sys.argv[3:])
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def capped_popen(command: list[str], *, report: Path, address_space: int = 3 * 1024 * MiB,
                 **popen: object) -> subprocess.Popen:
    """Start ``command`` under RLIMIT_AS = ``address_space`` through :data:`LAUNCHER`; its peak RSS
    (KiB) is written to ``report`` when it ends (read it with :func:`reported_peak_mb`)."""
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, str(address_space), str(report), *command],
                            start_new_session=True, **popen)


def reported_peak_mb(report: Path) -> float:
    """The peak RSS in MB that the launcher reported for its command."""
    return int(report.read_text()) / 1024


def run_capped(command: list[str], *, env: dict[str, str], cwd: Path, address_space: int = 3 * 1024 * MiB,
               timeout: float = 120) -> Capped:
    """Run ``command`` with RLIMIT_AS = ``address_space`` (a regression fails instead of
    taking the machine down) and measure its own peak RSS."""
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    out_path, err_path, report = (cwd / f".capped-{tag}.{suffix}" for suffix in ("out", "err", "rss"))
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = capped_popen(command, report=report, address_space=address_space, stdout=out, stderr=err,
                               env=env, cwd=cwd)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    peak = reported_peak_mb(report)
    for path in (out_path, err_path, report):
        path.unlink()
    return Capped(process.returncode, stdout, stderr, peak)


def vm_hwm_mb(pid: int) -> float:
    """A live process's peak RSS (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")
