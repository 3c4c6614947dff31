"""Priors of a pushed radiograph, end to end, against a real Orthanc: the 10 s target.

An Orthanc is started for the run (tests/pacs/orthanc.py) holding three earlier studies of
one patient (RG1_UNCR variants: a CR chest two years earlier, one five years earlier, a CT of
the same patient that must not be chosen). Our node runs in this process with auto-analysis
on and a ``pacs.toml`` naming the Orthanc with ``priors = true``. Then the current study (RG1
under new UIDs) is pushed by C-STORE, and the clock runs from the push until:

- ``recorded``: the node's fetcher found the priors (C-FIND by Patient ID and issuer, series
  for the body part), retrieved them (C-GET through the node's ingest) and recorded them
  on the session (``session.priors``);
- ``ready``: every fetched prior also holds its analysis (classifier), so
  ``compare_with_prior`` needs no model run;

and then ``compare_with_prior`` (findings + registration) is timed on its own. Each run uses a
fresh data directory; the median of ``--runs`` is printed with the target.

    .venv/bin/python benchmarks/bench_priors.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.pacs.orthanc import Orthanc, free_port  # noqa: E402
from tests.priors.rg1 import rg1_variant  # noqa: E402

CLIENT_AE = "MVBENCH"
TARGET_S = 10.0


def one_run(orthanc: Orthanc, scratch: Path, index: int, expected: int) -> dict[str, float]:
    import io
    from dataclasses import replace

    import pydicom

    from dicom_node.config import NodeConfig
    from dicom_node.pacs.config import ClientSettings, parse_address
    from dicom_node.pacs.store import send_files
    from dicom_node.scp import Node
    from engine.api import Engine

    home = scratch / f"home-{index}"
    home.mkdir()
    (home / "pacs.toml").write_text(
        f'calling_ae = "{CLIENT_AE}"\n[[archive]]\nname = "main"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\npriors = true\n")
    current = scratch / f"current-{index}.dcm"
    current.write_bytes(rg1_variant(study_date="20240301", patient_id="BENCH-PRIORS"))
    study_uid = str(pydicom.dcmread(io.BytesIO(current.read_bytes()), stop_before_pixels=True).StudyInstanceUID)
    pack = Path(os.environ.get("MEDVISION_MODEL_PACK") or REPO / ".cache" / "modelpack-dev")
    with Engine(home=home, model_pack=pack) as engine:
        engine.models.onnx(engine.models.require("classify"))  # loaded, as on a node that is running
        config = replace(NodeConfig(ae_title=CLIENT_AE, port=0, analyze=True))
        with Node(config, engine) as node:
            settings = ClientSettings(calling_ae="MVPUSH")
            started = time.perf_counter()
            send_files(parse_address(f"{CLIENT_AE}@127.0.0.1:{node.port}"), settings, [current])
            pushed = time.perf_counter()
            session = engine.store.session_of_study(study_uid)["id"]
            recorded = ready = None
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and ready is None:
                priors = engine.get_session_status(session)["priors"]
                if priors and recorded is None:
                    recorded = time.perf_counter()
                if priors and all(p["session_id"] and engine.store.list_analyses(p["session_id"]) for p in priors):
                    ready = time.perf_counter()
                time.sleep(0.02)
            if ready is None:
                raise SystemExit("the priors were not ready within 120 s")
            if len(priors) != expected:
                raise SystemExit(f"{len(priors)} priors fetched, {expected} expected")
            compare_started = time.perf_counter()
            result = engine.compare_with_prior(session, priors[0]["session_id"])
            compared = time.perf_counter()
            if result["registration"]["status"] != "ok":
                raise SystemExit(f"registration: {result['registration']}")
    return {"push": pushed - started, "recorded": recorded - started, "ready": ready - started,
            "compare": compared - compare_started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="bench-priors-") as folder:
        scratch = Path(folder)
        orthanc = Orthanc(scratch / "orthanc", modalities={"bench": {"AET": CLIENT_AE, "Host": "127.0.0.1",
                                                                     "Port": free_port()}})
        orthanc.start()
        try:
            orthanc.upload([rg1_variant(study_date="20220301", patient_id="BENCH-PRIORS"),
                            rg1_variant(study_date="20190301", patient_id="BENCH-PRIORS"),
                            rg1_variant(study_date="20230301", patient_id="BENCH-PRIORS", modality="CT")])
            runs = [one_run(orthanc, scratch, index, expected=2) for index in range(args.runs)]
        finally:
            orthanc.stop()
    print(f"priors of a pushed radiograph (RG1, 1955x1841 CR; 2 priors of 3 studies chosen), median of {args.runs}:")
    for key, words in (("push", "C-STORE of the current study acknowledged"),
                       ("recorded", "priors found, retrieved and recorded"),
                       ("ready", "priors analysed: ready to compare"),
                       ("compare", "then compare_with_prior (findings + registration)")):
        value = statistics.median(run[key] for run in runs)
        print(f"  {words:<52} {value:6.2f} s")
    ready = statistics.median(run["ready"] for run in runs)
    print(f"target: ready within {TARGET_S:.0f} s -> {'met' if ready <= TARGET_S else 'NOT met'}"
          f" ({ready / TARGET_S:.2f} of the budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
