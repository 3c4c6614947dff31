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


@pytest.mark.parametrize(("source", "code"), [("0123456789ab", "SESSION_NOT_FOUND"), ("no-such-file", "FILE_NOT_FOUND")])
def test_bad_sources(source: str, code: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["volume", source]) == 2
    assert capsys.readouterr().err.startswith(f"{code}: ")


def test_a_radiograph(rg1_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["volume", str(rg1_path)]) == 2
    assert capsys.readouterr().err.startswith("NOT_A_VOLUME: 'RG1_UNCR.dcm'")


def test_roi_of_a_box_in_the_series(ct_series: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    """The box's statistics equal numpy's over the same voxels of the volume the series was written from."""
    from tests.volumes.ctseries import expected_lps

    out = tmp_path / "roi.json"
    assert main(["roi", str(ct_series), "--box", "40", "30", "50", "60", "45", "60", "--json", str(out)]) == 0
    assert "box x 40..60, y 30..45, z 50..60: 3696 voxels, 99.79 mL" in capsys.readouterr().out
    stats = json.loads(out.read_text())["statistics"]
    voxels, _ = expected_lps()
    block = voxels[50:61, 30:46, 40:61].astype("float64")  # (z, y, x), inclusive bounds
    assert stats["voxel_count"] == block.size == 21 * 16 * 11
    assert stats["mean_hu"] == pytest.approx(block.mean(), abs=1e-3)
    assert stats["min_hu"] == block.min() and stats["max_hu"] == block.max()
    assert stats["volume_ml"] == pytest.approx(block.size * 27 / 1000)


def test_segment_volume_of_the_series(ct_series: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "segmentation.json"
    assert main(["segment-volume", str(ct_series), "--structures", "lungs,bone", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("classical_hu_connectivity (no trained model)")
    structures = {s["name"]: s for s in json.loads(out.read_text())["segmentation"]["structures"]}
    assert set(structures) == {"lung_left", "lung_right", "bone"}
    assert all(s["found"] and s["volume_ml"] > 10 for s in structures.values())


def test_segment_volume_refuses_a_radiograph_and_an_unknown_structure(rg1_path: Path, ct_series: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    assert main(["segment-volume", str(rg1_path)]) == 2
    assert capsys.readouterr().err.startswith("NOT_A_VOLUME: ")
    assert main(["segment-volume", str(ct_series), "--structures", "liver"]) == 2
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: unknown structures ['liver']")


def test_segment_volume_with_the_unet(shared_ct_dir: Path, model_pack: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    """``--method unet`` over a NIfTI CT with a real (tiny, untrained) segment3d ONNX model: labels from the
    pack, mL and mean HU, the untrained sentence first; the classical-only options are refused."""
    from tests.volumes.tinyunet import write_tiny_unet_pack

    pack = write_tiny_unet_pack(tmp_path / "pack", model_pack)
    out = tmp_path / "unet.json"
    source = str(shared_ct_dir / "example_ct_sm.nii.gz")
    assert main(["--pack", str(pack), "segment-volume", source, "--method", "unet", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Development models: untrained weights, output not meaningful. These are outputs of "
                           "untrained development models, not findings.")
    assert "3D U-Net tiny-unet-fp32 (onnxruntime-fp32-" in text and "soft_tissue" in text
    segmentation = json.loads(out.read_text())["segmentation"]
    assert segmentation["model_trained"] is False and segmentation["note"].endswith("not findings.")
    by_name = {s["name"]: s for s in segmentation["structures"]}
    assert by_name["soft_tissue"]["label"] == 2 and -200 < by_name["soft_tissue"]["mean_hu"] < 200
    assert by_name["soft_tissue"]["volume_ml"] == pytest.approx(by_name["soft_tissue"]["voxel_count"] * 27 / 1000,
                                                                abs=1e-3)
    assert main(["--pack", str(pack), "segment-volume", source, "--method", "unet", "--seg", "x.dcm"]) == 2
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: ")
