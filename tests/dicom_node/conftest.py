"""DICOM node fixtures: a node on a free localhost port per test, real DCMTK peers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_node.config import NodeConfig
from dicom_node.scp import Node

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echoscu(port: int, *flags: str, aet: str = "ECHOSCU", called: str = "ANY-SCP") -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aet", aet, "-aec", called, *flags, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def storescu(port: int, files: list[Path | str], *flags: str, aet: str = "STORESCU",
             timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-aet", aet, *flags, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=timeout)


def make_instance(path: Path, *, study: str | None = None, series: str | None = None, size: int = 32,
                  modality: str = "CT", seed: int = 0) -> Path:
    """A small synthetic 16-bit CT instance (Part 10 file)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), series or generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Synthetic", "T-1", modality
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_series(folder: Path, count: int, size: int = 32) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    return [make_instance(folder / f"i{n:04d}.dcm", study=study, series=series, size=size, seed=n)
            for n in range(count)]


def same_dataset(original: Path | bytes, stored: bytes) -> bool:
    """Element-by-element equality of two datasets; group lengths, file meta and the
    trailing padding (FFFC,FFFC), which DCMTK storescu drops when sending, aside."""
    import io

    def elements(ds: Dataset) -> dict:
        return {e.tag: e.value for e in ds if e.tag.element != 0 and e.tag != 0xFFFCFFFC}

    source = pydicom.dcmread(io.BytesIO(original) if isinstance(original, bytes) else original)
    copy = pydicom.dcmread(io.BytesIO(stored))
    return elements(source) == elements(copy)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture
def node_engine(home: Path, model_pack: Path) -> Iterator:
    from engine.api import Engine

    with Engine(home=home, model_pack=model_pack) as engine:
        yield engine


@pytest.fixture
def start_node(node_engine) -> Iterator[Callable[..., Node]]:
    """Start a node in this process (port 0: a free port); every node is stopped after."""
    nodes: list[Node] = []

    def start(**settings) -> Node:
        config = replace(NodeConfig(port=0, acse_timeout_s=5, network_timeout_s=10, dimse_timeout_s=10),
                         **settings)
        node = Node(config, node_engine).start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def node(start_node) -> Node:
    """A node with the defaults (analysis on, no destination)."""
    return start_node()


def node_process(home: Path, port: int, model_pack: Path, *flags: str) -> subprocess.Popen:
    """``python -m dicom_node serve`` as a real process; returns once it answers C-ECHO."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-m", "dicom_node", "serve", "--home", str(home), "--model-pack",
                                str(model_pack), "--port", str(port), "--log-level", "WARNING", *flags],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"node exited: {process.stderr.read().decode()[-2000:]}")
        if echoscu(port).returncode == 0:
            return process
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("node did not start")
