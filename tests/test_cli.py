"""The ``medvision`` console script, run as a user would: exit codes, stderr, JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.fs import linked_copy

REPO = Path(__file__).resolve().parents[1]


def medvision(*args: str, home: Path, pack: Path, env: dict | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    exe = shutil.which("medvision", path=str(Path(os.sys.executable).parent))
    environment = os.environ | {"MEDVISION_HOME": str(home), "MEDVISION_MODEL_PACK": str(pack)} | (env or {})
    return subprocess.run([exe, *args], capture_output=True, text=True, env=environment, timeout=timeout)


def test_analyze_prints_a_summary_and_writes_json(home: Path, model_pack: Path, rg1_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = medvision("analyze", str(rg1_path), "--json", str(out), home=home, pack=model_pack)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert "Type CXR" in run.stdout and "Development models" in run.stdout
    assert "Pneumothorax" in run.stdout
    payload = json.loads(out.read_text())
    result = payload["results"][0]
    assert result["auto_analysis"]["model_trained"] is False
    assert len(result["auto_analysis"]["classification"]["findings"]) == 18

    listing = medvision("sessions", "list", "--json", home=home, pack=model_pack)
    sessions = json.loads(listing.stdout)
    assert [s["session_id"] for s in sessions] == [payload["session_id"]]
    shown = medvision("sessions", "show", payload["session_id"], home=home, pack=model_pack)
    assert shown.returncode == 0 and "RG1_UNCR.dcm" in shown.stdout and "untrained" in shown.stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ([get_testdata_file("CT_small.dcm")], "INVALID_IMAGE_TYPE"),
        (["--type", "CT", get_testdata_file("RG1_UNCR.dcm")], "INVALID_IMAGE_TYPE"),
        ([get_testdata_file("rtplan.dcm")], "UNSUPPORTED_FORMAT"),
        ([get_testdata_file("MR_truncated.dcm")], "IMAGE_DECODE_ERROR"),
        (["/definitely/not/here.dcm"], "FILE_NOT_FOUND"),
    ],
)
def test_bad_input_exits_2_with_one_coded_line(args: list[str], code: str, home: Path, model_pack: Path) -> None:
    run = medvision("analyze", *args, home=home, pack=model_pack)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{code}: "), run.stderr
    assert "Traceback" not in run.stderr and "/definitely" not in run.stderr
    assert json.loads(medvision("sessions", "list", "--json", home=home, pack=model_pack).stdout) == []


def test_wrong_database_key_and_missing_pack(home: Path, model_pack: Path, rg1_path: Path, tmp_path: Path) -> None:
    assert medvision("analyze", str(rg1_path), home=home, pack=model_pack).returncode == 0
    run = medvision("sessions", "list", home=home, pack=model_pack, env={"MEDVISION_DB_KEY": "00" * 32})
    assert run.returncode == 2 and run.stderr.startswith("DATABASE_ERROR: ")
    assert len(run.stderr.strip().splitlines()) == 1
    run = medvision("analyze", str(rg1_path), home=home, pack=tmp_path / "no-pack")
    assert run.returncode == 2 and run.stderr.startswith("MODEL_NOT_FOUND: ")


def test_models_list_and_verify(home: Path, model_pack: Path, tmp_path: Path) -> None:
    listed = medvision("models", "list", home=home, pack=model_pack)
    assert listed.returncode == 0 and "densenet121-res224-all-int8" in listed.stdout
    assert medvision("models", "verify", home=home, pack=model_pack).returncode == 0
    victim_name = next((model_pack / "classify").glob("*.fp32.onnx")).relative_to(model_pack)
    broken = linked_copy(model_pack, tmp_path / "pack", writable=[victim_name])
    victim = broken / victim_name
    victim.write_bytes(victim.read_bytes()[:-100])
    run = medvision("models", "verify", home=home, pack=broken)
    assert run.returncode == 2
    assert run.stderr.startswith("MODEL_INTEGRITY_ERROR: ") and victim.name in run.stderr
    assert f"FAIL classify/{victim.name}" in run.stdout


def test_models_build_with_a_weights_dir_lacking_the_checkpoint(home: Path, model_pack: Path, tmp_path: Path) -> None:
    run = medvision("models", "build", "--weights-dir", str(tmp_path), "--out", str(tmp_path / "pack"),
                    home=home, pack=model_pack)
    assert run.returncode != 0
    assert "densenet121" in run.stderr  # names the upstream file it looked for
    assert run.stderr.startswith("FILE_NOT_FOUND: ") and "Traceback" not in run.stderr
    assert not (tmp_path / "pack").exists()
    run = medvision("models", "build", "--weights-dir", str(tmp_path), "--out", str(tmp_path / "pack"),
                    "--only", "llm,sam", home=home, pack=model_pack)  # only those: SAM's file is the one missing
    assert run.returncode == 2 and run.stderr.startswith("FILE_NOT_FOUND: mobile_sam.pt not found")
    assert not (tmp_path / "pack").exists()


def test_models_build_refuses_an_unknown_family(home: Path, model_pack: Path, tmp_path: Path, capsys) -> None:
    from engine.cli import main

    assert main(["--home", str(home), "--pack", str(model_pack), "models", "build", "--weights-dir", str(tmp_path),
                 "--only", "sam,nosuch"]) == 2
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: unknown model family nosuch")


def test_desktop_subcommand_starts_the_app_as_its_own_program(home: Path, model_pack: Path, capfd) -> None:
    from engine.cli import main

    assert main(["--home", str(home), "--pack", str(model_pack), "desktop", "--exit-after-paint"]) == 0
    assert "first_paint_ms=" in capfd.readouterr().out
    assert main(["desktop", "--no-such-flag"]) != 0  # unknown flags reach the app's own parser


def test_dicom_node_subcommand_reports_status_from_the_store(home: Path, capsys) -> None:
    from engine.cli import main

    assert main(["--home", str(home), "dicom-node", "status"]) == 0
    out = capsys.readouterr().out
    assert "listening: no" in out and "queue depth: 0" in out


def test_export_refuses_to_overwrite_an_existing_file_unless_asked(
        home: Path, model_pack: Path, rg1_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "films" / "rg1.dcm"
    source.parent.mkdir()
    shutil.copy(rg1_path, source)
    result = tmp_path / "result.json"
    assert medvision("analyze", str(source), "--json", str(result), home=home, pack=model_pack).returncode == 0
    session = json.loads(result.read_text())["session_id"]
    victim = tmp_path / "victim.dcm"
    shutil.copy(rg1_path, victim)
    report = tmp_path / "reports" / f"{session}_report.pdf"  # an earlier report in the --out folder
    report.parent.mkdir()
    report.write_bytes(b"%PDF-1.4 signed off yesterday")
    originals = {path: path.read_bytes() for path in (source, victim, report)}

    def refused(*args: str, code: str) -> str:
        run = medvision("export", session, *args, home=home, pack=model_pack)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{code}: "), run.stderr
        assert "Traceback" not in run.stderr and str(tmp_path) not in run.stderr
        assert all(path.read_bytes() == data for path, data in originals.items())
        return lines[0]

    refused("--format", "json", "--out", str(victim), code="TARGET_EXISTS")
    refused("--format", "dicom_sr", "--out", str(victim), code="TARGET_EXISTS")
    refused("--format", "pdf", "--out", str(report.parent), code="TARGET_EXISTS")
    for extra in ((), ("--overwrite",)):  # the imported film: never, even when asked
        assert "imported" in refused("--format", "json", "--out", str(source), *extra, code="EXPORT_FAILED")
        line = refused("--format", "json", "--out", "/dev/full", *extra, code="EXPORT_FAILED")
        assert "character device, not a regular file" in line and "File exists" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["films", "home", "reports", "result.json", "victim.dcm"]
    run = medvision("export", session, "--format", "json", "--out", str(victim), "--overwrite", home=home,
                    pack=model_pack)
    assert run.returncode == 0, run.stderr
    assert json.loads(victim.read_text())["session_id"] == session


def _special_file(kind: str, tmp_path: Path) -> str:
    """A path that is not a regular image file, built on demand (issue 14, item 3)."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.dcm")
        return str(tmp_path / "pipe.dcm")
    if kind == "symlink loop":
        (tmp_path / "a.dcm").symlink_to(tmp_path / "b.dcm")
        (tmp_path / "b.dcm").symlink_to(tmp_path / "a.dcm")
        return str(tmp_path / "a.dcm")
    if kind == "300-character name":
        return str(tmp_path / ("x" * 296 + ".dcm"))
    if kind == "directory":
        (tmp_path / "folder.dcm").mkdir()
        return str(tmp_path / "folder.dcm")
    assert kind == "path through a file"  # ENOTDIR: an OS error root meets too (CI runs as root)
    (tmp_path / "plain.dcm").write_bytes(b"\x00" * 200)
    return str(tmp_path / "plain.dcm" / "image.dcm")


@pytest.mark.parametrize(("kind", "code"), [
    ("fifo", "INVALID_ARGUMENT"), ("symlink loop", "FILE_NOT_FOUND"), ("300-character name", "FILE_NOT_FOUND"),
    ("directory", "INVALID_ARGUMENT"), ("path through a file", "FILE_NOT_FOUND"),
])
@pytest.mark.parametrize("command", ["analyze", "region", "segment"])
def test_a_file_that_is_not_a_readable_regular_file_is_one_coded_line_and_no_session(
        command: str, kind: str, code: str, home: Path, model_pack: Path, tmp_path: Path) -> None:
    """A FIFO used to hang forever; a symlink loop or a long name gave a traceback (exit 1), and left a session."""
    path = _special_file(kind, tmp_path)
    extra = {"analyze": [], "region": ["--bbox", "0", "0", "10", "10"], "segment": ["--point", "5", "5"]}[command]
    run = medvision(command, path, *extra, home=home, pack=model_pack, timeout=60)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{code}: "), run.stderr
    assert str(tmp_path) not in run.stderr
    assert json.loads(medvision("sessions", "list", "--json", home=home, pack=model_pack).stdout) == []


def _capped(*args: str, home: Path, pack: Path, limit: int = 1 << 30) -> subprocess.CompletedProcess:
    """``medvision ARGS`` with at most ``limit`` bytes of address space: reading a device whole fails."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    exe = shutil.which("medvision", path=str(Path(os.sys.executable).parent))
    environment = os.environ | {"MEDVISION_HOME": str(home), "MEDVISION_MODEL_PACK": str(pack)}
    return subprocess.run([exe, *args], capture_output=True, text=True, env=environment, timeout=120,
                          preexec_fn=cap)


def test_dev_zero_and_a_file_over_the_size_limit_are_refused_before_reading(
        home: Path, model_pack: Path, tmp_path: Path) -> None:
    """``/dev/zero`` used to be read (3.5 GB) until a traceback; in 1 GiB of address space both fail at once."""
    sparse = tmp_path / "huge.dcm"
    with sparse.open("wb") as handle:
        handle.truncate(3 * 1024**3)  # sparse: no disk used, over the 2 GiB default limit
    for path, message in (("/dev/zero", "zero is a device"), (str(sparse), "huge.dcm is larger than")):
        run = _capped("analyze", path, home=home, pack=model_pack)
        assert run.returncode == 2, run.stderr[-2000:]
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("INVALID_ARGUMENT: ") and message in lines[0], run.stderr
    assert json.loads(medvision("sessions", "list", "--json", home=home, pack=model_pack).stdout) == []


def test_analyze_of_several_files_says_what_became_of_each(home: Path, model_pack: Path, rg1_path: Path,
                                                          tmp_path: Path) -> None:
    """RG1 + a CT: the CT is stored but refused by the classifier; the output and JSON say so (issue 14, item 7)."""
    out = tmp_path / "result.json"
    missing = tmp_path / "missing.dcm"
    run = medvision("analyze", str(rg1_path), get_testdata_file("CT_small.dcm"), str(missing), "--json", str(out),
                    home=home, pack=model_pack)
    assert run.returncode == 2
    assert [line.split(":")[0] for line in run.stderr.strip().splitlines()] == ["INVALID_IMAGE_TYPE", "FILE_NOT_FOUND"]
    payload = json.loads(out.read_text())
    files = {f["file"]: f for f in payload["files"]}
    assert files["RG1_UNCR.dcm"]["stored"] and files["RG1_UNCR.dcm"]["analysed"]
    assert files["CT_small.dcm"]["stored"] and not files["CT_small.dcm"]["analysed"]
    assert files["CT_small.dcm"]["error"]["code"] == "INVALID_IMAGE_TYPE"
    assert not files["missing.dcm"]["stored"] and files["missing.dcm"]["error"]["code"] == "FILE_NOT_FOUND"
    assert len(payload["results"]) == 1
    shown = json.loads(medvision("sessions", "show", payload["session_id"], "--json", home=home, pack=model_pack).stdout)
    stored = {i["image_id"] for i in shown["status"]["images"]}
    assert stored == {files["RG1_UNCR.dcm"]["image_id"], files["CT_small.dcm"]["image_id"]}
    ct_image = files["CT_small.dcm"]["image_id"]
    assert f"CT_small.dcm: stored as image {ct_image}, not analysed (INVALID_IMAGE_TYPE: " in run.stdout
    assert "missing.dcm: not stored (FILE_NOT_FOUND: " in run.stdout
    assert "RG1_UNCR.dcm: stored as image" in run.stdout and "and analysed" in run.stdout


def _degenerate(kind: str, tmp_path: Path, rg1_path: Path) -> list[str]:
    """Images no model can read (issue 14, item 6): the arguments of ``medvision analyze``."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.uid import ExplicitVRLittleEndian

    if kind in ("1x1 png", "20x20 png"):
        side = 1 if kind == "1x1 png" else 20
        Image.fromarray(np.full((side, side), 128, dtype=np.uint8)).save(tmp_path / "tiny.png")
        return [str(tmp_path / "tiny.png"), "--type", "CXR", "--segment"]
    dataset = pydicom.dcmread(rg1_path)
    if kind == "RescaleSlope 1e39":
        dataset.RescaleSlope, dataset.RescaleIntercept = "1e39", "0"
    else:  # all-NaN float pixel data
        dataset = pydicom.dcmread(rg1_path, stop_before_pixels=True)
        for keyword in ("BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept"):
            if keyword in dataset:
                delattr(dataset, keyword)
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.Rows = dataset.Columns = 64
        dataset.BitsAllocated, dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 32, 1, "MONOCHROME2"
        dataset.FloatPixelData = np.full((64, 64), np.nan, dtype=np.float32).tobytes()
    dataset.save_as(tmp_path / "odd.dcm")
    return [str(tmp_path / "odd.dcm"), "--type", "CXR"]


@pytest.mark.parametrize("kind", ["1x1 png", "20x20 png", "RescaleSlope 1e39", "all-NaN float pixels"])
def test_degenerate_images_are_refused_with_a_code_and_the_json_is_strict(
        kind: str, home: Path, model_pack: Path, rg1_path: Path, tmp_path: Path) -> None:
    """They used to exit 0 with findings POSITIVE, numpy warnings, "nan grey levels" and NaN in the JSON."""
    out = tmp_path / "result.json"
    run = medvision("analyze", *_degenerate(kind, tmp_path, rg1_path), "--json", str(out), home=home, pack=model_pack)
    assert run.returncode == 2, run.stdout
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("INVALID_IMAGE: "), run.stderr
    assert "nan grey levels" not in run.stdout and "Traceback" not in run.stderr
    json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert json.loads(medvision("sessions", "list", "--json", home=home, pack=model_pack).stdout) == []
