"""DICOM node receive throughput against pynetdicom's and DCMTK's storescp, same run.

DCMTK ``storescu`` sends N CT-sized instances (512x512, 16-bit, ~512 kB) over one
association to each server in turn: our node (encrypt, fsync, rename, database row per
instance), ``python -m pynetdicom storescp`` (decodes and writes files, no fsync) and
DCMTK ``storescp`` (writes files). Then one 100 MB instance is sent to our node and
its peak RSS growth is read from /proc (VmHWM after clearing it). Prints seconds,
instances/s, MB/s and the ratios (median and best of the runs), and the *durability
floor*: the same bytes written, fsynced, renamed and their directory fsynced in a loop,
with no network and no DICOM: what our node's guarantees alone cost on this disk (an
fsync also waits for the file system's other writers, so it moves with their load).

    .venv/bin/python benchmarks/bench_dicom_node.py [--count 300] [--big-mb 100]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_instance(path: Path, study: str, series: str, rows: int = 512, columns: int = 512,
                  frames: int = 1, sop_class: str = CTImageStorage, seed: int = 0) -> Path:
    """A synthetic 16-bit instance written as a Part 10 file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Bench^Synthetic", "BENCH-1", "CT"
    ds.StudyDescription = "synthetic benchmark"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    pixels = np.random.default_rng(seed).integers(0, 4096, (frames, rows, columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_series(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    return [make_instance(folder / f"ct{i:04d}.dcm", study, series, seed=i) for i in range(count)]


def wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["echoscu", "127.0.0.1", str(port)], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers C-ECHO on port {port}")


def send(port: int, files: list[Path]) -> float:
    """Seconds storescu needs to send ``files`` over one association (fails loudly)."""
    started = time.perf_counter()
    result = subprocess.run(["storescu", "127.0.0.1", str(port), *map(str, files)],
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
    return elapsed


def node_command(home: Path, port: int) -> list[str]:
    pack = os.environ.get("MEDVISION_MODEL_PACK", str(REPO / ".cache" / "modelpack-dev"))
    return [PYTHON, "-m", "dicom_node", "serve", "--home", str(home), "--model-pack", pack,
            "--port", str(port), "--log-level", "WARNING"]


def run_server(command: list[str], port: int, files: list[Path], cwd: Path) -> float:
    env = dict(os.environ, MEDVISION_KEYRING="0", PYTHONPATH=str(REPO))
    server = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port)
        return send(port, files)
    finally:
        server.terminate()
        server.wait(30)


def durability_floor(work: Path, files: list[Path]) -> float:
    """Seconds to make ``files``' bytes durable as our node does, alone: write, fsync,
    rename, fsync(dir), one file after the other, across 256 directories like a store's."""
    started = time.perf_counter()
    for number, source in enumerate(files):
        folder = work / f"{number % 256:02x}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{number}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(source.read_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / f"{number}.blob")
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return time.perf_counter() - started


def stored_rows(home: Path) -> int:
    """Image rows in a node's store (each with its encrypted, fsynced blob)."""
    sys.path.insert(0, str(REPO))
    from engine.store import Store

    store = Store.open(home, use_keyring=False)
    try:
        return int(store.db.query("SELECT count(*) AS n FROM images")[0]["n"])
    finally:
        store.close()


def rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def big_instance_rss(work: Path, megabytes: int) -> tuple[float, float]:
    """(seconds, peak RSS growth in MB) of our node receiving one ``megabytes`` instance."""
    frames = max(1, megabytes * 1024 * 1024 // (512 * 512 * 2))
    path = make_instance(work / "big.dcm", generate_uid(), generate_uid(), frames=frames,
                         sop_class=MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
    port = free_port()
    env = dict(os.environ, MEDVISION_KEYRING="0", PYTHONPATH=str(REPO))
    server = subprocess.Popen(node_command(work / "home-big", port), cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port)
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = rss_kb(server.pid, "VmRSS")
        seconds = send(port, [path])
        peak = rss_kb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(30)
    return seconds, (peak - before) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-dicom-node-") as tmp:
        work = Path(tmp)
        files = make_series(work / "series", args.count)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        servers = {
            "medvision dicom_node": lambda port, run: node_command(work / f"home{run}", port),
            "pynetdicom storescp": lambda port, run: [PYTHON, "-m", "pynetdicom", "storescp", str(port),
                                                      "-od", str(work / f"out-pynetdicom{run}")],
            "dcmtk storescp": lambda port, run: ["storescp", "-od", str(work / f"out-dcmtk{run}"), str(port)],
        }
        results: dict[str, list[float]] = {}
        print(f"{args.count} instances, {megabytes:.1f} MB, one association, DCMTK storescu; "
              f"{args.repeat} runs interleaved, fresh output each run")
        for run in range(args.repeat):
            for name, command in servers.items():
                (work / f"out-pynetdicom{run}").mkdir(exist_ok=True)
                (work / f"out-dcmtk{run}").mkdir(exist_ok=True)
                port = free_port()
                seconds = run_server(command(port, run), port, files, work)
                results.setdefault(name, []).append(seconds)
                if name == "medvision dicom_node":
                    assert stored_rows(work / f"home{run}") == args.count, "not every instance was stored"
                print(f"  run {run + 1}: {name:22s} {seconds:7.2f} s")
            results.setdefault("durability floor", []).append(durability_floor(work / f"floor{run}", files))
            print(f"  run {run + 1}: {'durability floor':22s} {results['durability floor'][-1]:7.2f} s")
        for name, runs in results.items():
            seconds = statistics.median(runs)
            print(f"{name:22s} {seconds:7.2f} s median ({min(runs):.2f} best)  "
                  f"{args.count / seconds:7.1f} instances/s  {megabytes / seconds:7.1f} MB/s")
        ours = results["medvision dicom_node"]
        for name in ("pynetdicom storescp", "dcmtk storescp"):
            print(f"speed-up vs {name}: {statistics.median(results[name]) / statistics.median(ours):.2f}x median, "
                  f"{min(results[name]) / min(ours):.2f}x best")
        floor = statistics.median(results["durability floor"])
        print(f"durability floor alone: {floor / args.count * 1000:.2f} ms/instance "
              f"({floor / statistics.median(results['pynetdicom storescp']):.0%} of pynetdicom storescp's time)")
        seconds, growth = big_instance_rss(work, args.big_mb)
        print(f"{args.big_mb} MB instance: {seconds:.2f} s, peak RSS growth {growth:.1f} MB "
              f"(target < 50 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
