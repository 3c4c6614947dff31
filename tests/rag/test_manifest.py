"""Manifest reading: label cells, column roles, dedup identity of real files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engine.errors import ErrorCode, MedVisionError
from engine.rag.manifest import case_identity, load_manifest, parse_label_value
from tests.rag.conftest import sample_file, write_csv


@pytest.mark.parametrize(("cell", "value"), [
    ("1", 1), ("1.0", 1), ("+1", 1), (" 0 ", 0), ("0.0", 0), ("-1", -1), ("-1.0", -1), ("", None), ("  ", None),
])
def test_label_cells(cell: str, value: int | None) -> None:
    assert parse_label_value(cell) == value


@pytest.mark.parametrize("cell", ["2", "yes", "0.5", "positive", "nan"])
def test_other_cells_are_not_labels(cell: str) -> None:
    with pytest.raises(ValueError):
        parse_label_value(cell)


def test_twins_share_an_identity_only_when_they_share_a_sop_instance_uid() -> None:
    lossy, lossy_uncompressed = (case_identity(sample_file(n).read_bytes()) for n in ("RG1_J2KI.dcm", "RG1_UNCI.dcm"))
    lossless = case_identity(sample_file("RG1_J2KR.dcm").read_bytes())
    assert lossy.dedup_key == lossy_uncompressed.dedup_key == "sop:1.3.6.1.4.1.5962.1.1.9.1.3.20040826185059.5457"
    assert lossy.sha256 != lossy_uncompressed.sha256
    assert lossless.dedup_key != lossy.dedup_key


def test_dicom_without_preamble_and_non_dicom_files() -> None:
    data = sample_file("CT_small.dcm").read_bytes()
    assert case_identity(data[132:]).dedup_key == case_identity(data).dedup_key
    assert case_identity(data).sop_instance_uid
    text = b"not an image at all"
    assert case_identity(text).dedup_key == f"sha256:{hashlib.sha256(text).hexdigest()}"


def test_column_roles(tmp_path: Path) -> None:
    manifest = load_manifest(write_csv(tmp_path / "cases.csv", [
        {"Image_Path": "a\\b.dcm", "Findings": "F", "REPORT": "R", "Diagnoses": "x; y ;x", "Edema": "1.0",
         "Sex": "F", "Nodule": "", "case_id": "mimic-p100"},
        {"Image_Path": "/abs/c.dcm", "Findings": "", "REPORT": "", "Diagnoses": "", "Edema": "-1",
         "Sex": "M", "Nodule": "0", "case_id": ""},
    ]))
    assert manifest.label_columns == ("Edema", "Nodule") and manifest.ignored_columns == ("Sex",)
    first, second = manifest.entries
    assert first.file == "a/b.dcm" and first.path == tmp_path / "a" / "b.dcm"
    assert first.annotation.report == {"full": "R", "findings": "F"}
    assert first.annotation.diagnoses == ("x", "y") and first.annotation.case_id == "mimic-p100"
    assert first.annotation.labels == {"Edema": 1}
    assert second.file == "c.dcm" and second.annotation.labels == {"Edema": -1, "Nodule": 0}
    assert second.annotation.case_id is None


def test_unreadable_manifests(tmp_path: Path) -> None:
    cases = [
        (b"", "empty"),
        (b"image_path,Edema,edema\nx.dcm,1,0\n", "duplicate"),
        (b"image_path,report\nx.dcm,a,b,c\n", "more cells"),
    ]
    for number, (content, fragment) in enumerate(cases):
        path = tmp_path / f"bad{number}.csv"
        path.write_bytes(content)
        with pytest.raises(MedVisionError) as err:
            load_manifest(path)
        assert err.value.code is ErrorCode.INVALID_ARGUMENT and fragment in err.value.message
