"""``medvision volume``: a folder, a NIfTI file, a session id, a radiograph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from engine.cli import main


def test_a_folder(ct_series: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "volume.json"
    assert main(["volume", str(ct_series), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "122 x 101 x 112 voxels" in text and "spacing 3.000 x 3.000 x 3.000 mm" in text
    assert "orientation RAS" in text and "slice order: z 0..111" in text and "warnings: none" in text
    (volume,) = json.loads(out.read_text())["volumes"]
    assert volume["shape_zyx"] == [112, 101, 122] and len(volume["affine_lps"]) == 4


def test_warnings_are_printed(capsys: pytest.CaptureFixture) -> None:
    assert main(["volume", get_testdata_file("emri_small.dcm")]) == 0
    text = capsys.readouterr().out
    assert "! NO_PER_FRAME_POSITION" in text and "nominal: no positions" in text


def test_a_nifti_file(shared_ct_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["volume", str(shared_ct_dir / "example_ct_sm.nii.gz")]) == 0
    assert "122 x 101 x 30 voxels" in capsys.readouterr().out


@pytest.mark.parametrize(("source", "code"), [("0123456789ab", "INVALID_ARGUMENT"), ("no-such-file", "FILE_NOT_FOUND")])
def test_bad_sources(source: str, code: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["volume", source]) == 2
    assert capsys.readouterr().err.startswith(f"{code}: ")


def test_a_radiograph(rg1_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["volume", str(rg1_path)]) == 2
    assert capsys.readouterr().err.startswith("NOT_A_VOLUME: 'RG1_UNCR.dcm'")
