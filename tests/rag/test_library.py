"""The reference library end to end, on real radiographs from pydicom-data.

RG1_UNCR / RG1_J2KR / RG1_J2KI are one chest radiograph stored uncompressed, as
lossless and as lossy JPEG 2000; each has its own SOP Instance UID (…9.1.1, …9.1.2,
…9.1.3). RG1_UNCI is the uncompressed copy of the lossy image and shares RG1_J2KI's
UID, so dedup by SOP Instance UID drops it. RG3_* are the same for a tibia.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

import engine.rag.index as index_module
from engine.errors import ErrorCode, MedVisionError
from engine.rag import ReferenceLibrary
from engine.rag.library import DATABASE_NAME, INDEX_DIR, RAG_DIR
from tests.rag.conftest import (
    MAIN_ADDED,
    MAIN_DUPLICATES,
    MAIN_FAILED,
    QUICK_FILES,
    REPORT_MARKER,
    BuiltLibrary,
    Dataset,
    LibraryFactory,
    embed_file,
    sample_file,
    write_csv,
)
from tests.rag.embedders import DIMENSION, EMBEDDER_ID, thumbnail_embedder

# pydicom warns about the truncated file of the dataset (before it fails, as expected) and
# about the non-UID SOP Instance UIDs of a few pydicom-data files.
pytestmark = [
    pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning"),
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
]


def _case_ids_by_file(library: ReferenceLibrary) -> dict[str, str]:
    rows = library._db.db.query("SELECT case_id, image_path FROM cases")
    return {Path(row["image_path"]).name: row["case_id"] for row in rows}


def _index_files(home: Path) -> list[Path]:
    return sorted((home / RAG_DIR / INDEX_DIR).glob("*/*.mvb"))


# --------------------------------------------------------------------------- building


def test_build_counts_dedup_failures_and_ignored_columns(built: BuiltLibrary) -> None:
    result = built.result
    assert result["status"] == "completed" and result["resumed"] is False
    assert result["total"] == 15
    assert result["added"] == len(MAIN_ADDED)
    assert result["skipped_duplicates"] == len(MAIN_DUPLICATES)
    assert {failure["file"]: failure["code"] for failure in result["failed"]} == MAIN_FAILED
    assert all(failure["message"] for failure in result["failed"])
    assert result["added"] + result["already_done"] + result["skipped_duplicates"] + len(result["failed"]) == 15
    assert result["label_columns"] == ["Cardiomegaly", "Effusion", "Fracture"]
    assert result["ignored_columns"] == ["Age"]
    assert result["index_size"] == len(MAIN_ADDED) and result["index_type"] == "flat"
    assert set(_case_ids_by_file(built.library)) == set(MAIN_ADDED)


def test_dedup_keys_are_sop_instance_uids_for_dicom_and_sha256_otherwise(built: BuiltLibrary) -> None:
    rows = {Path(r["image_path"]).name: r for r in built.library._db.db.query(
        "SELECT image_path, dedup_key, sop_instance_uid, sha256 FROM cases")}
    assert rows["RG1_J2KI.dcm"]["dedup_key"] == "sop:1.3.6.1.4.1.5962.1.1.9.1.3.20040826185059.5457"
    assert rows["RG1_UNCR.dcm"]["sop_instance_uid"] == "1.3.6.1.4.1.5962.1.1.9.1.1.20040826185059.5457"
    assert rows["mr2.png"]["dedup_key"] == f"sha256:{rows['mr2.png']['sha256']}"
    assert rows["mr2.png"]["sop_instance_uid"] is None


def test_twins_of_the_query_radiograph_come_first(built: BuiltLibrary, dataset: Dataset) -> None:
    """Query with RG1_J2KR's vector: the query case itself is in the library.

    It and its lossless twin RG1_UNCR both score 1.0 (identical pixels), the lossy
    RG1_J2KI just below; nothing else comes close.
    """
    cases = _case_ids_by_file(built.library)
    found = built.library.search(embed_file(dataset.image("RG1_J2KR.dcm")), top_k=5)
    results = found["results"]
    assert {r["case_id"] for r in results[:3]} == {
        cases["RG1_UNCR.dcm"], cases["RG1_J2KR.dcm"], cases["RG1_J2KI.dcm"]}
    assert results[0]["similarity"] == results[1]["similarity"] == 1.0
    assert results[2]["case_id"] == cases["RG1_J2KI.dcm"] and results[2]["similarity"] > 0.999
    assert results[3]["similarity"] < 0.9
    assert [r["similarity"] for r in results] == sorted((r["similarity"] for r in results), reverse=True)
    # The tibia finds the tibia.
    tibia = built.library.search(embed_file(dataset.image("RG3_J2KI.dcm")), top_k=3)["results"]
    assert {r["case_id"] for r in tibia} == {cases[f"RG3_{kind}.dcm"] for kind in ("UNCR", "J2KR", "J2KI")}


def test_results_carry_reports_diagnoses_labels_and_the_weighted_vote(
    built: BuiltLibrary, dataset: Dataset
) -> None:
    cases = _case_ids_by_file(built.library)
    found = built.library.search(embed_file(dataset.image("RG1_J2KR.dcm")), top_k=3)
    by_file = {name: next(r for r in found["results"] if r["case_id"] == cases[name])
               for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")}
    uncr = by_file["RG1_UNCR.dcm"]
    assert uncr["report"] == {"findings": f"Enlarged cardiac silhouette. {REPORT_MARKER}.",
                              "impression": "Cardiomegaly with small effusion."}
    assert uncr["findings"] == f"Enlarged cardiac silhouette. {REPORT_MARKER}."
    assert uncr["diagnoses"] == ["Cardiomegaly", "Pleural effusion"]
    assert uncr["labels"] == {"Cardiomegaly": 1, "Effusion": 1, "Fracture": 0}
    assert by_file["RG1_J2KR.dcm"]["labels"] == {"Cardiomegaly": 1, "Effusion": 0}  # blank: no label
    lossy = by_file["RG1_J2KI.dcm"]
    assert lossy["report"] == {"full": "Possible cardiomegaly on a lordotic projection. No effusion."}
    assert lossy["findings"] is None and lossy["diagnoses"] == []
    assert uncr["source"] == "custom" and uncr["modality"] == "CR"

    s_uncr, s_j2kr, s_j2ki = (by_file[n]["similarity"] for n in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"))
    votes = found["aggregated_labels"]
    # Cardiomegaly: UNCR +, J2KR +, J2KI uncertain -> (s1 + s2) / (s1 + s2) = 1.
    assert votes["Cardiomegaly"] == {"score": 1.0, "positive_cases": 2, "negative_cases": 0,
                                     "uncertain_cases": 1, "supporting_cases": 2}
    # Effusion: UNCR +, J2KR -, J2KI - -> s_uncr / (s_uncr + s_j2kr + s_j2ki), about 1/3.
    assert votes["Effusion"]["score"] == pytest.approx(s_uncr / (s_uncr + s_j2kr + s_j2ki), abs=1e-6)
    assert votes["Effusion"]["score"] == pytest.approx(1 / 3, abs=1e-4)
    assert votes["Effusion"]["supporting_cases"] == 3
    # Fracture: UNCR -, J2KI - (J2KR blank) -> 0 from 2 cases.
    assert votes["Fracture"] == {"score": 0.0, "positive_cases": 0, "negative_cases": 2,
                                 "uncertain_cases": 0, "supporting_cases": 2}

    brief = built.library.search(embed_file(dataset.image("RG1_J2KR.dcm")), top_k=3, include_reports=False)
    assert all(r["report"] is None for r in brief["results"])
    assert any(r["findings"] for r in brief["results"])


def test_search_metadata_and_min_similarity(built: BuiltLibrary, dataset: Dataset) -> None:
    query = embed_file(dataset.image("RG3_UNCR.dcm"))
    found = built.library.search(query, top_k=100, min_similarity=0.95)
    meta = found["search_metadata"]
    assert {"index_size", "index_type", "search_time_ms", "top_k", "min_similarity", "embedder_id"} <= set(meta)
    assert meta["index_size"] == len(MAIN_ADDED) and meta["index_type"] == "flat"
    assert meta["top_k"] == 100 and meta["min_similarity"] == 0.95 and meta["embedder_id"] == EMBEDDER_ID
    assert meta["search_time_ms"] >= 0 and "note" not in meta
    assert len(found["results"]) == 3 and all(r["similarity"] >= 0.95 for r in found["results"])
    # Every case is returned when asking for more than there are, similarities in 0..1.
    everything = built.library.search(query, top_k=100)["results"]
    assert len(everything) == len(MAIN_ADDED)
    assert all(0.0 <= r["similarity"] <= 1.0 for r in everything)
    # A (1, d) query and a non-normalised one are the same query.
    again = built.library.search(3.5 * query[None, :], top_k=3)["results"]
    assert [r["case_id"] for r in again] == [r["case_id"] for r in found["results"]]
    nothing = built.library.search(-query, top_k=5, min_similarity=0.5)
    assert nothing["results"] == [] and "min_similarity" in nothing["search_metadata"]["note"]


def test_stats(built: BuiltLibrary) -> None:
    stats = built.library.stats()
    assert stats["cases"] == stats["index_size"] == len(MAIN_ADDED)
    assert stats["embedder_id"] == stats["current_embedder_id"] == EMBEDDER_ID
    assert stats["embedder_mismatch"] is False and stats["dimension"] == DIMENSION
    assert stats["sources"] == {"custom": len(MAIN_ADDED)}
    assert stats["labels"]["Fracture"] == {"positive": 2, "negative": 4, "uncertain": 0}
    assert stats["labels"]["Cardiomegaly"] == {"positive": 2, "negative": 0, "uncertain": 1}
    assert stats["builds"][0]["status"] == "completed"
    assert stats["hnsw_threshold"] == 20_000 and stats["index_type"] == "flat"


# --------------------------------------------------------------------------- at rest


def test_nothing_readable_at_rest(dataset: Dataset, open_library: LibraryFactory, home: Path) -> None:
    library = open_library()
    library.build(data_path=dataset.csv)
    stored = library._db.db.query("SELECT embedding FROM cases LIMIT 1")[0]["embedding"]
    library.close()
    files = [p for p in home.rglob("*") if p.is_file()]
    assert home / RAG_DIR / DATABASE_NAME in files and _index_files(home)
    # FAISS headers are a fourcc followed by the dimension (int32).
    faiss_headers = [fourcc + struct.pack("<i", DIMENSION) for fourcc in (b"IxM2", b"IxFI", b"IHNf")]
    needles = [REPORT_MARKER.encode(), b"Tibial fracture", b"Cardiomegaly", b"RG1_UNCR",
               stored[:48], b"MVRAGIX1", *faiss_headers]
    for path in files:
        content = path.read_bytes()
        assert not content.startswith(b"SQLite format 3"), path.name
        for needle in needles:
            assert needle not in content, (path.name, needle[:16])
    # The index file is not something FAISS (or anyone without the key) can read.
    with pytest.raises(RuntimeError):
        faiss.read_index(str(_index_files(home)[0]))


def test_wrong_key_is_refused(quick_csv: Path, open_library: LibraryFactory) -> None:
    open_library().build(data_path=quick_csv)
    with pytest.raises(MedVisionError) as err:
        open_library(key=bytes(32))
    assert err.value.code is ErrorCode.DATABASE_ERROR


# --------------------------------------------------------------------------- index recovery


def _top1_per_query(library: ReferenceLibrary, queries: list[np.ndarray]) -> list[tuple[frozenset, float]]:
    """Best similarity per query and the cases tied at it (identical images tie at 1.0)."""
    best = []
    for query in queries:
        results = library.search(query, top_k=10)["results"]
        top = results[0]["similarity"]
        best.append((frozenset(r["case_id"] for r in results if r["similarity"] == top), top))
    return best


@pytest.mark.parametrize("damage", ["delete", "flip", "garbage"])
def test_missing_or_corrupt_index_is_rebuilt_from_the_database(
    damage: str, quick_csv: Path, open_library: LibraryFactory, home: Path
) -> None:
    library = open_library()
    library.build(data_path=quick_csv)
    queries = [embed_file(quick_csv.parent / name) for name in QUICK_FILES]
    before = _top1_per_query(library, queries)
    library.close()
    (index_file,) = _index_files(home)
    if damage == "delete":
        index_file.unlink()
    elif damage == "flip":
        content = bytearray(index_file.read_bytes())
        content[len(content) // 2] ^= 0xFF
        index_file.write_bytes(bytes(content))
    else:
        index_file.write_bytes(np.random.default_rng(0).bytes(index_file.stat().st_size))
    reopened = open_library()
    assert reopened.index_recovery == ("missing" if damage == "delete" else "corrupt")
    assert reopened.stats()["index_size"] == len(QUICK_FILES)
    assert _top1_per_query(reopened, queries) == before
    reopened.close()
    # The rebuilt index was saved: the next start needs no recovery.
    assert open_library().index_recovery is None


def test_index_saved_before_a_crash_is_topped_up_from_the_database(
    dataset: Dataset, quick_csv: Path, open_library: LibraryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = open_library()
    library.build(data_path=quick_csv)
    library.close()
    # A second build "crashes" before saving its index (the database has the cases).
    monkeypatch.setattr(ReferenceLibrary, "_save_index_if_changed", lambda self: None)
    crashed = open_library()
    crashed.build(data_path=dataset.csv)
    crashed.close()
    monkeypatch.undo()
    reopened = open_library()
    assert reopened.index_recovery == "topped_up"
    assert reopened.stats()["index_size"] == len(QUICK_FILES) + len(MAIN_ADDED) - 2  # CT_small, US1 twice
    cases = _case_ids_by_file(reopened)
    found = reopened.search(embed_file(dataset.image("RG3_J2KI.dcm")), top_k=1)["results"][0]
    assert found["case_id"] == cases["RG3_J2KI.dcm"] and found["similarity"] == 1.0


# --------------------------------------------------------------------------- incremental, processes


def test_rerun_adds_only_new_cases(dataset: Dataset, open_library: LibraryFactory, tmp_path: Path) -> None:
    library = open_library()
    rows = [{"image_path": str(dataset.image(name)), "report": "first batch"}
            for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "US1_UNCR.dcm")]
    first = library.build(data_path=write_csv(tmp_path / "first.csv", rows))
    assert (first["added"], first["skipped_duplicates"]) == (3, 0)
    second = library.build(data_path=dataset.csv)
    assert second["added"] == len(MAIN_ADDED) - 3
    assert second["skipped_duplicates"] == len(MAIN_DUPLICATES) + 3
    assert second["resumed"] is False and second["already_done"] == 0
    third = library.build(data_path=dataset.csv)
    assert third["added"] == 0 and third["skipped_duplicates"] == len(MAIN_ADDED) + len(MAIN_DUPLICATES)
    assert library.stats()["cases"] == len(MAIN_ADDED)


def test_a_second_process_sees_new_cases_and_wipes(
    quick_csv: Path, dataset: Dataset, open_library: LibraryFactory
) -> None:
    """Two libraries on one data dir stand for two processes (desktop + MCP server)."""
    reader = open_library()
    writer = open_library()
    assert reader.search(embed_file(dataset.image("RG1_UNCR.dcm")))["results"] == []
    writer.build(data_path=quick_csv)
    found = reader.search(embed_file(quick_csv.parent / "MR_small.dcm"), top_k=1)
    assert found["search_metadata"]["index_size"] == len(QUICK_FILES)
    assert found["results"][0]["similarity"] == 1.0
    writer.build(data_path=quick_csv, rebuild=True)
    assert reader.search(embed_file(quick_csv.parent / "MR_small.dcm"))["search_metadata"]["index_size"] == len(QUICK_FILES)
    assert reader.stats()["generation"] == 1


def test_folder_with_reports_keyed_by_file_name_and_sop_instance_uid(
    open_library: LibraryFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "studies"
    (folder / "chest").mkdir(parents=True)
    for name in ("RG1_UNCR.dcm", "RG1_J2KI.dcm", "RG1_UNCI.dcm"):
        (folder / "chest" / name).write_bytes(sample_file(name).read_bytes())
    (folder / "CT_small.dcm").write_bytes(sample_file("CT_small.dcm").read_bytes())
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "readme.txt").write_text("not an image")
    reports = write_csv(tmp_path / "reports.csv", [
        {"file_name": "chest/RG1_UNCR.dcm", "findings": "Cardiomegaly.", "Cardiomegaly": "1"},
        {"file_name": "CT_small.dcm", "impression": "Normal CT.", "Cardiomegaly": "0"},
        {"sop_instance_uid": "1.3.6.1.4.1.5962.1.1.9.1.3.20040826185059.5457",
         "findings": "Lossy twin.", "Cardiomegaly": "-1"},
        {"file_name": "nowhere.dcm", "findings": "No such image."},
    ])
    library = open_library()
    result = library.build(data_path=folder, reports_csv=reports)
    assert result["total"] == 5  # 4 DICOM files + readme.txt; hidden files and CSVs are skipped
    assert (result["added"], result["skipped_duplicates"]) == (3, 1)
    assert [(f["file"], f["code"]) for f in result["failed"]] == [("readme.txt", "UNSUPPORTED_FORMAT")]
    assert result["unmatched_report_rows"] == 1 and result["label_columns"] == ["Cardiomegaly"]
    found = library.search(embed_file(sample_file("RG1_J2KI.dcm")), top_k=2)["results"]
    assert found[0]["findings"] == "Lossy twin." and found[0]["labels"] == {"Cardiomegaly": -1}
    assert found[1]["findings"] == "Cardiomegaly." and found[1]["labels"] == {"Cardiomegaly": 1}


# --------------------------------------------------------------------------- HNSW in the library


def test_hnsw_library_matches_the_flat_library(open_library: LibraryFactory, tmp_path: Path) -> None:
    folder = Path(sample_file("RG1_UNCR.dcm")).parent
    flat = open_library(home=tmp_path / "flat")
    small = open_library(home=tmp_path / "hnsw", hnsw_threshold=20)
    flat_result = flat.build(data_path=folder)
    hnsw_result = small.build(data_path=folder)
    assert flat_result["added"] == hnsw_result["added"] >= 30
    assert small.wait_for_index(timeout=60)
    assert small.stats()["index_type"] == "hnsw" and flat.stats()["index_type"] == "flat"
    names = sorted(p.name for p in folder.glob("*.dcm") if p.name.startswith(("RG", "US1", "MR2", "693", "SC_")))
    queries = [embed_file(folder / name) for name in names]
    assert _top1_per_query(small, queries) == _top1_per_query(flat, queries)
    small.close()
    reopened = open_library(home=tmp_path / "hnsw", hnsw_threshold=20)
    assert reopened.index_recovery is None and reopened.stats()["index_type"] == "hnsw"


def test_searches_work_while_the_hnsw_index_is_built(
    open_library: LibraryFactory, monkeypatch: pytest.MonkeyPatch, dataset: Dataset
) -> None:
    folder = Path(sample_file("RG1_UNCR.dcm")).parent
    started, release = threading.Event(), threading.Event()
    real_build = index_module.build_hnsw

    def held_build(*args: object, **kwargs: object) -> object:
        started.set()
        release.wait(timeout=60)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(index_module, "build_hnsw", held_build)
    library = open_library(hnsw_threshold=10)
    try:
        result = library.build(data_path=folder)  # passes 10 cases early; keeps adding
        assert started.is_set() and library.stats()["index_rebuilding"]
        found = library.search(embed_file(folder / "RG1_J2KR.dcm"), top_k=3)
        assert found["search_metadata"]["index_type"] == "flat"
        assert found["results"][0]["similarity"] == 1.0
    finally:
        release.set()
    assert library.wait_for_index(timeout=60)
    stats = library.stats()
    assert stats["index_type"] == "hnsw" and stats["index_size"] == result["added"]
    # Cases added during the rebuild are in the HNSW index too.
    last = library._db.db.query("SELECT image_path FROM cases ORDER BY id DESC LIMIT 1")[0]["image_path"]
    top = library.search(embed_file(folder / last), top_k=1)
    assert top["search_metadata"]["index_type"] == "hnsw" and top["results"][0]["similarity"] == 1.0


# --------------------------------------------------------------------------- embedder, errors


def test_another_embedder_is_refused_until_rebuild(quick_csv: Path, open_library: LibraryFactory) -> None:
    open_library().build(data_path=quick_csv)
    other = open_library(embedder_id="rad-dino+sha256:0123abcd")
    stats = other.stats()
    assert stats["embedder_mismatch"] is True and stats["embedder_id"] == EMBEDDER_ID
    query = embed_file(quick_csv.parent / "CT_small.dcm")
    for call in (lambda: other.search(query), lambda: other.build(data_path=quick_csv)):
        with pytest.raises(MedVisionError) as err:
            call()
        assert err.value.code is ErrorCode.INVALID_ARGUMENT
        assert err.value.details["reason"] == "embedder_mismatch"
        assert "rebuild" in err.value.message and EMBEDDER_ID in err.value.message
    rebuilt = other.build(data_path=quick_csv, rebuild=True)
    assert rebuilt["added"] == len(QUICK_FILES)
    assert other.stats()["embedder_id"] == "rad-dino+sha256:0123abcd"
    assert other.search(query, top_k=1)["results"][0]["similarity"] == 1.0


def test_empty_library_is_a_normal_state(open_library: LibraryFactory) -> None:
    library = open_library()
    found = library.search(np.ones(DIMENSION, dtype=np.float32))
    assert found["results"] == [] and found["aggregated_labels"] == {}
    assert found["search_metadata"]["index_size"] == 0
    assert "empty" in found["search_metadata"]["note"]
    assert library.stats()["cases"] == 0 and library.stats()["embedder_id"] is None


@pytest.mark.parametrize(("arguments", "fragment"), [
    ({"top_k": 0}, "top_k"), ({"top_k": 101}, "top_k"), ({"top_k": True}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"min_similarity": -0.1}, "min_similarity"), ({"min_similarity": 1.5}, "min_similarity"),
    ({"min_similarity": float("nan")}, "min_similarity"), ({"min_similarity": "0.5"}, "min_similarity"),
    ({"include_reports": "yes"}, "include_reports"),
    ({"vector": np.ones(DIMENSION - 1)}, "shape"), ({"vector": np.zeros(DIMENSION)}, "zeros"),
    ({"vector": np.full(DIMENSION, np.nan)}, "NaN"), ({"vector": "chest"}, "numeric"),
])
def test_bad_search_arguments(arguments: dict, fragment: str, open_library: LibraryFactory) -> None:
    library = open_library()
    call = {"vector": np.ones(DIMENSION, dtype=np.float32), **arguments}
    with pytest.raises(MedVisionError) as err:
        library.search(**call)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert fragment in err.value.message


def test_bad_build_arguments(open_library: LibraryFactory, quick_csv: Path, tmp_path: Path) -> None:
    library = open_library()

    def code_of(**kwargs: object) -> tuple[ErrorCode, str]:
        with pytest.raises(MedVisionError) as err:
            library.build(**kwargs)
        return err.value.code, err.value.message

    code, message = code_of(source="mimic-cxr", data_path=quick_csv)
    assert code is ErrorCode.INVALID_ARGUMENT and "offline" in message and "custom" in message
    assert code_of(source="chexpert")[0] is ErrorCode.INVALID_ARGUMENT
    assert code_of(source="pacs", data_path=quick_csv)[0] is ErrorCode.INVALID_ARGUMENT
    assert code_of(data_path=None)[0] is ErrorCode.INVALID_ARGUMENT
    assert code_of(data_path=tmp_path / "absent.csv")[0] is ErrorCode.FILE_NOT_FOUND
    assert code_of(data_path=quick_csv, reports_csv=quick_csv)[0] is ErrorCode.INVALID_ARGUMENT
    assert code_of(data_path=quick_csv, progress="print")[0] is ErrorCode.INVALID_ARGUMENT
    no_path = write_csv(tmp_path / "no_path.csv", [{"file": "CT_small.dcm", "report": "x"}])
    assert "image_path" in code_of(data_path=no_path)[1]
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("image_path,report\nCT_small.dcm,Pleuraerguss r\xe9siduel\n".encode("latin-1"))
    assert "UTF-8" in code_of(data_path=latin)[1]
    folder = tmp_path / "images"
    folder.mkdir()
    no_key = write_csv(tmp_path / "no_key.csv", [{"report": "x"}])
    assert "file_name" in code_of(data_path=folder, reports_csv=no_key)[1]
    assert library.stats()["cases"] == 0


def test_bad_rows_and_a_failing_embedder_are_reported_not_fatal(
    open_library: LibraryFactory, quick_csv: Path, tmp_path: Path
) -> None:
    calls = {"n": 0}

    def flaky_embedder(image: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("onnxruntime: bad input")
        if calls["n"] == 3:
            return np.ones(DIMENSION + 1, dtype=np.float32)
        return thumbnail_embedder(image)

    root = quick_csv.parent
    rows = [{"image_path": str(root / name), "case_id": f"case-{i}"} for i, name in enumerate(QUICK_FILES[:5])]
    rows.append({"image_path": str(root / QUICK_FILES[5]), "case_id": "bad id with spaces"})
    rows.append({"image_path": str(root / QUICK_FILES[6]), "case_id": "case-0"})  # taken
    rows.append({"image_path": "", "case_id": "case-9"})
    library = open_library(embedder=flaky_embedder)
    result = library.build(data_path=write_csv(tmp_path / "rows.csv", rows))
    codes = {f["file"]: f["code"] for f in result["failed"]}
    assert codes == {
        QUICK_FILES[1]: "INFERENCE_ERROR", QUICK_FILES[2]: "INFERENCE_ERROR",
        QUICK_FILES[5]: "INVALID_ARGUMENT", QUICK_FILES[6]: "INVALID_ARGUMENT", "rows.csv:9": "INVALID_ARGUMENT",
    }
    assert result["added"] == 3 and library.stats()["cases"] == 3
    assert "case-0" in next(f["message"] for f in result["failed"] if f["file"] == QUICK_FILES[6])


def test_progress_reports_and_a_raising_callback_leaves_a_resumable_build(
    open_library: LibraryFactory, quick_csv: Path
) -> None:
    seen: list[tuple[int, int, str]] = []

    def stop_after_three(done: int, total: int, message: str) -> None:
        seen.append((done, total, message))
        if done == 3:
            raise KeyboardInterrupt  # the user pressed cancel

    library = open_library()
    with pytest.raises(KeyboardInterrupt):
        library.build(data_path=quick_csv, progress=stop_after_three)
    assert seen[0] == (0, len(QUICK_FILES), "starting")
    assert seen[1][2] == f"added {QUICK_FILES[0]}"
    assert library.stats()["builds"][0]["status"] == "interrupted"

    def reentrant(done: int, total: int, message: str) -> None:
        with pytest.raises(MedVisionError) as err:
            library.build(data_path=quick_csv)
        assert "already running" in err.value.message

    resumed = library.build(data_path=quick_csv, progress=reentrant)
    assert resumed["resumed"] is True and resumed["build_id"] == 1
    assert (resumed["already_done"], resumed["added"]) == (3, len(QUICK_FILES) - 3)
    assert library.stats()["builds"][0]["status"] == "completed"
