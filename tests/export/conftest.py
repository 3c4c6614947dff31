"""A fully worked session for the export tests: RG1 analysed (classifier, organs, similar
cases), user drawings of every kind, an interactive mask and a completed agent run."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from engine.api import Engine
from engine.config import Settings


@dataclass(frozen=True)
class WorkedSession:
    engine: Engine
    session_id: str
    image_id: str
    run_id: str
    home: Path


@pytest.fixture(scope="module")
def worked(tmp_path_factory: pytest.TempPathFactory, model_pack: Path, rg1_path: Path):
    """RG1 with everything a radiologist could have added to it, in a module-scoped engine."""
    home = tmp_path_factory.mktemp("export-home")
    cases = tmp_path_factory.mktemp("cases")
    rows = []
    for name, cardiomegaly in (("RG1_J2KI.dcm", "1"), ("RG3_UNCR.dcm", "0"), ("MR2_UNCR.dcm", "")):
        shutil.copy(get_testdata_file(name), cases / name)
        rows.append({"image_path": name, "findings": f"Findings of {name}: heart size normal.",
                     "impression": f"Impression of {name}.", "Cardiomegaly": cardiomegaly})
    with open(cases / "cases.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with Engine(Settings(home=home, model_pack=model_pack, threads=2, use_keyring=False)) as engine:
        session = engine.create_study_session("export")["session_id"]
        image = engine.add_image_to_session(session, rg1_path, auto_analyze=False)["image_id"]
        engine.build_rag_index(data_path=cases / "cases.csv")
        engine.analyze_with_rag(session, image, mode="full", top_k=3)
        engine.add_annotation(session, image, "bbox", [300, 400, 700, 800], label="opacity", notes="check")
        engine.add_annotation(session, image, "polygon", [[1000, 600], [1300, 650], [1250, 1000], [1050, 900]],
                              label="outline")
        engine.add_annotation(session, image, "freehand", [[400, 1200], [450, 1180], [520, 1230], [480, 1300]],
                              label="scribble")
        engine.add_annotation(session, image, "point", [1200, 1200], label="nodule?")
        engine.add_annotation(session, image, "text", {"position": [150, 150], "text": "R"}, label="R")
        engine.add_annotation(session, image, "measurement", {"kind": "distance", "points": [[200, 500], [900, 520]]},
                              label="width")
        engine.add_annotation(session, image, "measurement",
                              {"kind": "angle", "points": [[400, 900], [500, 1000], [650, 950]]}, label="angle")
        clicked = engine.segment_interactive(session, image, points=[[700, 1000]], labels=[1])
        engine.accept_mask(session, clicked["mask_id"], label="user mask")
        run = engine.invoke_medical_agent(session, "Diagnose", context={"use_llm": False})
        assert run["status"] == "completed", run
        yield WorkedSession(engine=engine, session_id=session, image_id=image, run_id=run["run_id"], home=home)
