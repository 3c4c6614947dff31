"""``segment-volume --pdf``: key slices and the measurement table of a volume's structures, read back with
poppler (pdftotext, pdfimages) as a reader would, against the JSON and against numpy on the same masks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.analysis.volume.anatomy import segment_anatomy
from engine.analysis.volume.unet import segment_ct
from engine.api import Engine
from engine.cli import main
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.export.volume_pdf import StructureSource, model_source, volume_report
from engine.imaging.volume import load_volume
from engine.vocabulary import DISCLAIMER, UNTRAINED_BANNER, UNTRAINED_OUTPUTS
from tests.volumes.ctseries import sub_volume, write_ct_series


def pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout


def image_count(path: Path) -> int:
    """Images in the PDF (``pdfimages -list``: two header lines, then one line per image)."""
    listing = subprocess.run(["pdfimages", "-list", str(path)], capture_output=True, text=True, check=True).stdout
    return len(listing.splitlines()) - 2


def test_segment_volume_pdf_prints_the_json_values_and_key_slices(ct_series: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    out, data = tmp_path / "report.pdf", tmp_path / "report.json"
    assert main(["segment-volume", str(ct_series), "--pdf", str(out), "--json", str(data)]) == 0
    assert f"PDF written to {out}: 8 key slices and the measurements of 4 structures" in capsys.readouterr().out
    report = json.loads(data.read_text())["report"]
    rows = report["measurements"]
    assert [r["structure"] for r in rows] == ["body", "bone", "lung_left", "lung_right"]  # no trachea here
    assert image_count(out) == report["images"] == 2 * len(rows)

    text = pdf_text(out)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    for row in rows:  # each table line carries the JSON's values, in the table's order
        expected = (f"{row['structure']} {row['volume_ml']:.2f} {row['mean_hu']} {row['sd_hu']} "
                    f"{row['voxel_count']} classical_hu_connectivity / numpy (CPU), no model")
        assert expected in lines, expected
    assert "no trained model was used" in " ".join(lines) and UNTRAINED_OUTPUTS not in text
    assert DISCLAIMER in text and UNTRAINED_BANNER not in text

    volume = load_volume(ct_series)
    result = segment_anatomy(volume.voxels, volume.affine)
    voxel_ml = float(np.prod(volume.spacing_zyx)) / 1000
    for row in rows:  # the JSON against numpy on the same masks
        mask = result.mask(row["structure"])
        assert row["voxel_count"] == int(mask.sum())
        assert row["volume_ml"] == pytest.approx(mask.sum() * voxel_ml, abs=0.005)
        assert row["mean_hu"] == pytest.approx(float(volume.voxels[mask].mean()), abs=0.05)
        assert row["sd_hu"] == pytest.approx(float(volume.voxels[mask].std()), abs=0.1)
    dz, dy, dx = volume.spacing_zyx
    for key in report["key_slices"]:
        mask = result.mask(key["structure"])
        areas = mask.sum(axis=(1, 2)) if key["plane"] == "axial" else mask.sum(axis=(0, 2))
        assert areas[key["index"]] == areas.max() == key["pixels"]  # the slice with the largest area
        cell_mm2 = dy * dx if key["plane"] == "axial" else dz * dx
        assert key["area_cm2"] == pytest.approx(areas.max() * cell_mm2 / 100, abs=0.005)
        axis = "z" if key["plane"] == "axial" else "y"
        assert f"{key['plane']} {axis} = {key['index']}: largest area, {key['area_cm2']:.2f} cm2" in text
    assert {(k["structure"], k["plane"]) for k in report["key_slices"]} == {
        (r["structure"], plane) for r in rows for plane in ("axial", "coronal")}


class ValueBands:
    """A real patch model in numpy: one logit per class peaking at the class nearest the normalized value."""

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        classes = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1, 1)
        return [-((feeds["image"] - classes) ** 2)]


UNTRAINED_SPEC = {"id": "bands-dev", "precision": "fp32", "trained": False, "sha256": "0" * 64,
                  "labels": ["background", "fat", "soft_tissue", "bone"],
                  "input": {"name": "image", "patch_size": [32, 32, 32], "spacing_mm": [6.0, 6.0, 6.0],
                            "divisor": [8, 8, 8], "transpose_forward": [0, 1, 2], "orientation": "RAS",
                            "normalization": {"scheme": "CTNormalization", "mean": -300.0, "std": 300.0,
                                              "percentile_00_5": -1000.0, "percentile_99_5": 1000.0}}}


def test_an_untrained_models_sections_open_with_the_sentence(ct_series: Path, tmp_path: Path) -> None:
    volume = load_volume(ct_series)
    segmentation = segment_ct(volume.voxels, volume.spacing_zyx, model=ValueBands(), spec=UNTRAINED_SPEC,
                              orientation=volume.orientation)
    report = volume_report(volume, model_source(segmentation))
    out = tmp_path / "untrained.pdf"
    out.write_bytes(report.pdf)
    lines = [line.strip() for line in pdf_text(out).splitlines() if line.strip()]
    for heading in ("Key slices", "Measurements"):
        assert lines[lines.index(heading) + 1] == UNTRAINED_OUTPUTS, heading
    pages = pdf_text(out).split("\f")
    assert all(UNTRAINED_BANNER in page for page in pages if page.strip())
    assert [r["structure"] for r in report.measurements] == [s.name for s in segmentation.structures]
    assert all(r["method"] == "bands-dev / onnxruntime-fp32" for r in report.measurements)
    assert image_count(out) == 2 * len(report.measurements)


def test_report_refusals(ct_series: Path) -> None:
    volume = load_volume(ct_series)
    with pytest.raises(MedVisionError) as refused:
        volume_report(volume, StructureSource((), lambda name: np.zeros(1, bool), "m", "b", None))
    assert refused.value.code == ErrorCode.EXPORT_FAILED
    wrong = StructureSource(("body",), lambda name: np.zeros((2, 2, 2), bool), "m", "b", None)
    with pytest.raises(MedVisionError) as refused:
        volume_report(volume, wrong)
    assert refused.value.code == ErrorCode.EXPORT_FAILED and "mask of body" in refused.value.message


def test_engine_writes_the_report_of_a_stored_series(tmp_path: Path, model_pack: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    write_ct_series(folder, volume=sub_volume(20, 60), seed=5)
    settings = Settings(home=tmp_path / "home", model_pack=model_pack, use_keyring=False)
    out = tmp_path / "out" / "volume.pdf"
    with Engine(settings) as engine:
        session_id = engine.create_study_session("ct")["session_id"]
        for path in sorted(folder.iterdir()):
            engine.add_image_to_session(session_id, path, auto_analyze=False)
        written = engine.export_volume_report(session_id, out, structures="body,bone")
        assert written["path"] == str(out) and written["model_trained"] is False
        assert [r["structure"] for r in written["measurements"]] == ["body", "bone"]
        assert image_count(out) == written["images"] == 4
        with pytest.raises(MedVisionError) as refused:
            engine.export_volume_report(session_id, out)
        assert refused.value.code == ErrorCode.TARGET_EXISTS
    body = written["measurements"][0]
    assert f"body {body['volume_ml']:.2f} {body['mean_hu']}" in " ".join(pdf_text(out).split())
