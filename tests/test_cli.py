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


def medvision(*args: str, home: Path, pack: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("medvision", path=str(Path(os.sys.executable).parent))
    environment = os.environ | {"MEDVISION_HOME": str(home), "MEDVISION_MODEL_PACK": str(pack)} | (env or {})
    return subprocess.run([exe, *args], capture_output=True, text=True, env=environment, timeout=300)


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
    assert not (tmp_path / "pack").exists()


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
