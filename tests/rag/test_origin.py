"""A similar case says where it came from: the file of a folder build (relative to the folder
given), the CSV and row of a CSV build; cases of a library older than schema 3 say "source
unknown" and the old library still loads and searches."""

from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path

import numpy as np
import pytest
import sqlcipher3

from engine.rag import ReferenceLibrary
from engine.rag.library import DATABASE_NAME, RAG_DIR
from engine.store.database import schema_version
from tests.rag.conftest import LibraryFactory, embed_file, sample_file, write_csv
from tests.rag.embedders import DIMENSION, EMBEDDER_ID, thumbnail_embedder

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")


def _by_case(found: dict) -> dict[str, dict]:
    return {r["case_id"]: r for r in found["results"]}


def test_a_folder_build_names_each_file_relative_to_the_folder(open_library: LibraryFactory, tmp_path: Path) -> None:
    folder = tmp_path / "site" / "studies"
    (folder / "chest" / "2024").mkdir(parents=True)
    files = {"chest/2024/RG1_UNCR.dcm": "RG1_UNCR.dcm", "chest/RG3_UNCR.dcm": "RG3_UNCR.dcm",
             "CT_small.dcm": "CT_small.dcm"}
    for relative, name in files.items():
        (folder / relative).write_bytes(sample_file(name).read_bytes())
    reports = write_csv(tmp_path / "reports.csv", [{"file_name": "CT_small.dcm", "impression": "Normal CT."}])
    library = open_library()
    assert library.build(data_path=folder, reports_csv=reports)["added"] == 3
    found = library.search(embed_file(sample_file("RG1_UNCR.dcm")), top_k=3)
    assert len(found["results"]) == 3
    for result in found["results"]:
        origin = result["origin"]
        assert origin["kind"] == "folder" and origin["dataset"] == "studies" and origin["row"] is None
        assert origin["file"] in files
        assert result["source_name"] == f"{origin['file']} (folder studies)"
    assert found["results"][0]["origin"]["file"] == "chest/2024/RG1_UNCR.dcm"  # the query's own image first
    assert str(tmp_path) not in json.dumps(found)  # nothing of the user's machine beyond the relative path


def test_a_csv_build_names_the_csv_and_the_row_of_each_case(open_library: LibraryFactory, tmp_path: Path) -> None:
    root = tmp_path / "refs"
    (root / "images").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm"):
        (root / "images" / name).write_bytes(sample_file(name).read_bytes())
    (elsewhere / "CT_small.dcm").write_bytes(sample_file("CT_small.dcm").read_bytes())
    lines = [
        "image_path,case_id,findings",
        "images/RG1_UNCR.dcm,MIMIC-p10-s500,Cardiomegaly.",
        "",  # a blank row still counts: rows are numbered as a spreadsheet shows them
        "images/RG3_UNCR.dcm,,Tibial fracture.",
        f"{elsewhere / 'CT_small.dcm'},,Normal CT.",  # absolute: only its base name is kept
    ]
    csv_path = root / "cases.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    library = open_library()
    assert library.build(data_path=csv_path)["added"] == 3
    found = library.search(embed_file(sample_file("RG1_UNCR.dcm")), top_k=3)
    origins = {r["origin"]["file"]: r for r in found["results"]}
    assert set(origins) == {"images/RG1_UNCR.dcm", "images/RG3_UNCR.dcm", "CT_small.dcm"}
    rg1 = origins["images/RG1_UNCR.dcm"]
    assert rg1["case_id"] == "MIMIC-p10-s500"  # the dataset's own id, from the case_id column
    assert rg1["origin"] == {"kind": "csv", "dataset": "cases.csv", "file": "images/RG1_UNCR.dcm", "row": 2}
    assert rg1["source_name"] == "cases.csv row 2: images/RG1_UNCR.dcm"
    assert origins["images/RG3_UNCR.dcm"]["origin"]["row"] == 4
    assert origins["CT_small.dcm"]["origin"]["row"] == 5
    assert origins["CT_small.dcm"]["source_name"] == "cases.csv row 5: CT_small.dcm"
    assert str(tmp_path) not in json.dumps(found)


def _write_schema_2_library(home: Path, key: bytes, vector: np.ndarray) -> None:
    """A reference database exactly as schema 2 left it (migrations 0001 and 0002), with one case."""
    folder = importlib.resources.files("engine.rag") / "migrations"
    scripts = sorted((entry.name, entry.read_text()) for entry in folder.iterdir()
                     if entry.name.endswith(".sql") and int(entry.name.split("_", 1)[0]) <= 2)
    assert [name[:4] for name, _ in scripts] == ["0001", "0002"]
    (home / RAG_DIR).mkdir(parents=True, exist_ok=True)
    conn = sqlcipher3.connect(str(home / RAG_DIR / DATABASE_NAME), isolation_level=None)
    try:
        conn.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        for _, sql in scripts:
            conn.executescript(sql)
        conn.execute("PRAGMA user_version = 2")
        now = "2024-01-01T00:00:00Z"
        conn.execute("INSERT INTO builds(source, manifest_sha256, data_name, embedder_id, status, total, added,"
                     " started_at, updated_at) VALUES ('custom', 'old', 'old.csv', ?, 'completed', 1, 1, ?, ?)",
                     (EMBEDDER_ID, now, now))
        conn.execute("INSERT INTO cases(case_id, source, dedup_key, sha256, image_path, modality, image_type,"
                     " embedding, embedder_id, build_id, created_at) VALUES ('custom-0123456789abcdef', 'custom',"
                     " 'sha256:old', 'old', 'images/old.dcm', 'CT', 'CT', ?, ?, 1, ?)",
                     (np.ascontiguousarray(vector, dtype="<f4").tobytes(), EMBEDDER_ID, now))
        conn.execute("INSERT INTO reports(case_id, section, text) VALUES ('custom-0123456789abcdef', 'findings',"
                     " 'An old case.')")
        conn.execute("INSERT INTO index_entries(case_id) VALUES ('custom-0123456789abcdef')")
        conn.executemany("INSERT INTO library_meta(key, value) VALUES (?, ?)",
                         [("case_count", "1"), ("embedder_id", EMBEDDER_ID), ("dimension", str(DIMENSION)),
                          ("generation", "0")])
    finally:
        conn.close()


def test_a_library_of_schema_2_still_loads_and_its_cases_say_source_unknown(
    home: Path, open_library: LibraryFactory, quick_csv: Path
) -> None:
    key = os.urandom(32)
    old_vector = embed_file(sample_file("CT_small.dcm"))
    _write_schema_2_library(home, key, old_vector)
    library = open_library(key=key)  # migrates to schema 3, index rebuilt from the stored vectors
    assert library._db.db.query("PRAGMA user_version")[0]["user_version"] == schema_version("engine.rag") >= 3
    assert library.index_recovery == "missing" and library.stats()["cases"] == 1
    (old,) = library.search(old_vector, top_k=1)["results"]
    assert old["case_id"] == "custom-0123456789abcdef" and old["findings"] == "An old case."
    assert old["origin"] == {"kind": "unknown", "dataset": None, "file": None, "row": None}
    assert old["source_name"] == "source unknown"
    # New cases added to the migrated library say where they came from; the old one is kept.
    assert library.build(data_path=quick_csv)["added"] == 8  # CT_small differs from the old case's dedup key
    found = _by_case(library.search(old_vector, top_k=10))
    assert found["custom-0123456789abcdef"]["source_name"] == "source unknown"
    new = [r for case_id, r in found.items() if case_id != "custom-0123456789abcdef"]
    assert new and all(r["origin"]["kind"] == "csv" and r["origin"]["dataset"] == "quick.csv" for r in new)
    library.close()
    reopened = ReferenceLibrary(home, key, embedder=thumbnail_embedder, embedder_id=EMBEDDER_ID)
    try:
        assert reopened.search(old_vector, top_k=1)["results"][0]["source_name"] == "source unknown"
    finally:
        reopened.close()
