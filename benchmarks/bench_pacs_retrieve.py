"""Retrieve from a real Orthanc: our C-GET and C-MOVE against DCMTK getscu / movescu, same run.

N CT-sized instances (512x512, 16-bit, ~512 kB) in one study are uploaded to an Orthanc
started for the run (tests/pacs/orthanc.py). Then each client retrieves the whole study,
three times, and the median is kept:

- ours, C-GET (``dicom_node.pacs.retrieve.Retriever.get``): an image-level C-FIND first
  (the resume check), then every instance through the node's ingest: encrypted, fsynced,
  renamed, its database row committed, into a fresh data directory each run;
- ours, C-MOVE to our node (``Retriever.move`` to a ``dicom_node.scp.Node`` in this process);
- DCMTK ``getscu -S``, writing plain files;
- DCMTK ``movescu -S`` with its own storage port (``--port``), writing plain files.

    .venv/bin/python benchmarks/bench_pacs_retrieve.py [--count 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_dicom_node import make_instance  # noqa: E402
from tests.pacs.orthanc import Orthanc, free_port  # noqa: E402

CLIENT_AE, DCMTK_AE = "MVBENCH", "DCMTKBENCH"


def timed(run: Callable[[Path], tuple[int, float]], scratch: Path, runs: int, count: int, label: str) -> float:
    """The median seconds of ``runs`` retrieves (``run`` returns what it received and its seconds)."""
    times = []
    for index in range(runs):
        target = scratch / f"{label}-{index}"
        target.mkdir()
        received, seconds = run(target)
        times.append(seconds)
        if received != count:
            raise SystemExit(f"{label}: {received} of {count} instances retrieved")
        shutil.rmtree(target)
    return statistics.median(times)


def ours(orthanc: Orthanc, study: str, node_port: int, method: str) -> Callable[[Path], int]:
    from dataclasses import replace

    from dicom_node.config import NodeConfig
    from dicom_node.ingest import Ingestor
    from dicom_node.pacs.config import ClientSettings, parse_address
    from dicom_node.pacs.retrieve import Retriever
    from dicom_node.scp import Node
    from engine.api import Engine

    settings = ClientSettings(calling_ae=CLIENT_AE)
    archive = parse_address(orthanc.address)

    def run(home: Path) -> tuple[int, float]:
        """The retrieve alone is timed: the data directory is open and the node listening before."""
        with Engine(home=home, model_pack=REPO / ".cache" / "modelpack-dev") as engine:
            if method == "get":
                ingestor = Ingestor(engine.store, analyze=False, limits=engine.settings.limits)
                try:
                    started = time.perf_counter()
                    result = Retriever(archive, settings, ingestor).get(study)
                    seconds = time.perf_counter() - started
                finally:
                    ingestor.close()
            else:
                config = replace(NodeConfig(), ae_title=CLIENT_AE, port=node_port, analyze=False)
                with Node(config, engine) as node:
                    started = time.perf_counter()
                    result = Retriever(archive, settings, node.ingestor).move(study, CLIENT_AE)
                    seconds = time.perf_counter() - started
            assert result.complete, result.to_dict()
            return int(engine.store.db.query("SELECT count(*) AS n FROM images")[0]["n"]), seconds
    return run


def dcmtk(orthanc: Orthanc, study: str, dcmtk_port: int, tool: str) -> Callable[[Path], int]:
    def run(folder: Path) -> tuple[int, float]:
        """The whole DCMTK process is timed (its start is a few ms)."""
        command = [tool, "-S", "-aet", DCMTK_AE, "-aec", "ORTHANC", "-od", str(folder),
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        if tool == "movescu":
            command += ["-aem", DCMTK_AE, "--port", str(dcmtk_port)]
        started = time.perf_counter()
        subprocess.run([*command, "127.0.0.1", str(orthanc.dicom_port)], check=True, capture_output=True, timeout=600)
        return sum(1 for _ in folder.iterdir()), time.perf_counter() - started
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from pydicom.uid import generate_uid

    scratch = Path(tempfile.mkdtemp(prefix="bench-pacs-", dir=REPO / ".cache" if (REPO / ".cache").is_dir() else None))
    node_port, dcmtk_port = free_port(), free_port()
    orthanc = Orthanc(scratch / "orthanc", modalities={
        "medvision": {"AET": CLIENT_AE, "Host": "127.0.0.1", "Port": node_port},
        "dcmtk": {"AET": DCMTK_AE, "Host": "127.0.0.1", "Port": dcmtk_port}}).start()
    try:
        study, series = generate_uid(), generate_uid()
        files = scratch / "files"
        files.mkdir()
        for index in range(args.count):
            path = make_instance(files / f"i{index:04d}.dcm", study, series, seed=index)
            orthanc.upload([path])
            path.unlink()
        size_mb = args.count * 512 * 512 * 2 / 1e6
        rows = [
            ("ours C-GET (encrypt + fsync + commit)", timed(ours(orthanc, study, node_port, "get"), scratch,
                                                            args.runs, args.count, "ours-get")),
            ("DCMTK getscu (plain files)", timed(dcmtk(orthanc, study, dcmtk_port, "getscu"), scratch, args.runs,
                                                 args.count, "getscu")),
            ("ours C-MOVE to our node (encrypt + fsync + commit)", timed(ours(orthanc, study, node_port, "move"),
                                                                         scratch, args.runs, args.count, "ours-move")),
            ("DCMTK movescu +P (plain files)", timed(dcmtk(orthanc, study, dcmtk_port, "movescu"), scratch, args.runs,
                                                     args.count, "movescu")),
        ]
    finally:
        orthanc.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{args.count} instances of 512x512x16 bit ({size_mb:.0f} MB) from Orthanc, median of {args.runs}")
    print(f"{'client':52s} {'s':>7s} {'inst/s':>8s} {'MB/s':>7s}")
    for label, seconds in rows:
        print(f"{label:52s} {seconds:7.2f} {args.count / seconds:8.1f} {size_mb / seconds:7.1f}")
    print(f"C-GET:  DCMTK time / ours = {rows[1][1] / rows[0][1]:.2f} (>= 1: ours at least as fast)")
    print(f"C-MOVE: DCMTK time / ours = {rows[3][1] / rows[2][1]:.2f} (>= 1: ours at least as fast)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
