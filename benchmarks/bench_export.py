"""Export on RG1: PDF with every section, and DICOM SR + SEG + SC, against the issue's targets.

A worked session is built first (RG1 analysed with classifier, organs and similar cases,
user drawings of each kind, an interactive mask, a completed agent run). Then, warm,
each export is timed end to end through ``Engine.export_study`` (gather + render + write
+ the encrypted copy) and writer by writer (the bundle already gathered). Medians over
``--repeats`` runs, interleaved.

Targets: PDF < 1.5 s; SR + SEG + SC together < 1 s; the 1024-px overlay compose < 0.3 s.

    .venv/bin/python benchmarks/bench_export.py [--pack DIR] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from timing import interleaved_ms

PDF_TARGET_MS = 1500.0
DICOM_TARGET_MS = 1000.0
COMPOSE_TARGET_MS = 300.0


def _worked_session(engine, workdir: Path) -> str:  # noqa: ANN001 - engine.api.Engine
    from pydicom.data import get_testdata_file

    cases = workdir / "cases"
    cases.mkdir()
    rows = []
    for name, label in (("RG1_J2KI.dcm", "1"), ("RG3_UNCR.dcm", "0")):
        shutil.copy(get_testdata_file(name), cases / name)
        rows.append({"image_path": name, "findings": f"Findings of {name}.", "impression": "Normal.",
                     "Cardiomegaly": label})
    with open(cases / "cases.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    session = engine.create_study_session("bench")["session_id"]
    image = engine.add_image_to_session(session, get_testdata_file("RG1_UNCR.dcm"), auto_analyze=False)["image_id"]
    engine.build_rag_index(data_path=cases / "cases.csv")
    engine.analyze_with_rag(session, image, mode="full", top_k=2)
    engine.add_annotation(session, image, "bbox", [300, 400, 700, 800], label="opacity")
    engine.add_annotation(session, image, "polygon", [[1000, 600], [1300, 650], [1250, 1000]], label="outline")
    engine.add_annotation(session, image, "measurement", {"kind": "distance", "points": [[200, 500], [900, 520]]})
    clicked = engine.segment_interactive(session, image, points=[[700, 1000]], labels=[1])
    engine.accept_mask(session, clicked["mask_id"], label="user mask")
    engine.invoke_medical_agent(session, "Diagnose", context={"use_llm": False})
    return session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pack", default=os.environ.get("MEDVISION_MODEL_PACK"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.pack:
        parser.error("--pack (or MEDVISION_MODEL_PACK) is required")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from engine.api import Engine
    from engine.config import Settings
    from engine.export.bundle import ExportOptions, gather
    from engine.export.dicom_sc import secondary_capture
    from engine.export.dicom_seg import dicom_seg
    from engine.export.dicom_sr import dicom_sr
    from engine.export.pdf import pdf_report
    from engine.export.render import compose
    from engine.export.service import dicom_objects, rendered_overlays

    workdir = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        settings = Settings(home=workdir / "home", model_pack=Path(args.pack), threads=args.threads,
                            use_keyring=False, export_dir=workdir / "exports")
        with Engine(settings) as engine:
            session = _worked_session(engine, workdir)
            bundle = gather(engine.services, session, ExportOptions())

            def dicom_writers() -> None:
                dicom_sr(bundle)
                dicom_seg(bundle)
                secondary_capture(bundle, rendered_overlays(bundle))

            writers = interleaved_ms({
                "gather": lambda: gather(engine.services, session, ExportOptions()),
                "compose overlay, max side 1024": lambda: compose(bundle.images[0], max_side=1024),
                "pdf writer": lambda: pdf_report(bundle),
                "sr writer": lambda: dicom_sr(bundle),
                "seg writer": lambda: dicom_seg(bundle),
                "sc writer (incl. full-size compose)": lambda: secondary_capture(bundle, rendered_overlays(bundle)),
                "sr+seg+sc writers, one after another": dicom_writers,
                "sr+seg+sc writers, overlay on a thread": lambda: dicom_objects(bundle),
            }, args.repeats)

            def export_dicom_trio() -> None:
                for fmt in ("dicom_sr", "dicom_seg", "dicom_sc"):
                    engine.export_study(session, fmt)

            end_to_end = interleaved_ms({
                "export_study pdf": lambda: engine.export_study(session, "pdf"),
                "export_study sr, seg, sc (3 calls)": export_dicom_trio,
                "export_study dicom (sr+seg+sc+pdf)": lambda: engine.export_study(session, "dicom"),
                "export_study html": lambda: engine.export_study(session, "html"),
                "export_study json": lambda: engine.export_study(session, "json"),
                "export_study png_annotated": lambda: engine.export_study(session, "png_annotated"),
            }, args.repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"RG1 export, {args.threads} threads, median of {args.repeats} (load average {load:.2f})")
    for name, ms in {**writers, **end_to_end}.items():
        print(f"  {name:<40} {ms:8.1f} ms")
    pdf_ok = end_to_end["export_study pdf"] < PDF_TARGET_MS
    trio = writers["sr+seg+sc writers, overlay on a thread"]
    dicom_ok = trio < DICOM_TARGET_MS
    print(f"target PDF < {PDF_TARGET_MS:.0f} ms: {'met' if pdf_ok else 'MISSED'} "
          f"({end_to_end['export_study pdf']:.0f} ms end to end); "
          f"SR+SEG+SC < {DICOM_TARGET_MS:.0f} ms: {'met' if dicom_ok else 'MISSED'} ({trio:.0f} ms built together); "
          f"compose < {COMPOSE_TARGET_MS:.0f} ms: "
          f"{'met' if writers['compose overlay, max side 1024'] < COMPOSE_TARGET_MS else 'MISSED'}")
    print(json.dumps({"writers_ms": writers, "export_study_ms": end_to_end, "load_average": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
