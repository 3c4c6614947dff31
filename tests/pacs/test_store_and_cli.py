"""Our results back to the PACS (C-STORE, STOW-RS) and the ``medvision pacs`` forms, against Orthanc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicom_node.pacs.store import send_files
from engine.errors import ErrorCode, MedVisionError
from tests.pacs.conftest import CLIENT_AE, orthanc_sops

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, model_pack: Path, rg1_path: Path) -> tuple[str, list[Path]]:
    """RG1 with a drawn box and an accepted interactive mask, exported as SR + SEG + secondary capture (+ PDF)."""
    from engine.api import Engine
    from engine.config import Settings

    home, out = tmp_path_factory.mktemp("store-home"), tmp_path_factory.mktemp("store-out")
    backend = os.environ.get("MEDVISION_INTERACTIVE_BACKEND")
    os.environ["MEDVISION_INTERACTIVE_BACKEND"] = "classical"  # a mask for the SEG without the SAM encoder
    try:
        with Engine(Settings(home=home, model_pack=model_pack, threads=2, use_keyring=False)) as engine:
            session = engine.create_study_session("to pacs")["session_id"]
            image = engine.add_image_to_session(session, rg1_path, auto_analyze=False)["image_id"]
            engine.add_annotation(session, image, "bbox", [300, 400, 700, 800], label="opacity")
            clicked = engine.segment_interactive(session, image, points=[[700, 1000]], labels=[1])
            engine.accept_mask(session, clicked["mask_id"], label="user mask")
            engine.export_study(session, "dicom", output_path=out)
    finally:
        if backend is None:
            os.environ.pop("MEDVISION_INTERACTIVE_BACKEND", None)
        else:
            os.environ["MEDVISION_INTERACTIVE_BACKEND"] = backend
    files = sorted(out.rglob("*.dcm"))
    return str(pydicom.dcmread(rg1_path, stop_before_pixels=True).StudyInstanceUID), files


def _modalities(orthanc, study_uid: str) -> set[str]:
    return {orthanc.get(f"/instances/{item['ID']}/tags?simplify")["Modality"]
            for item in orthanc.study_instances(study_uid)}


def test_sr_seg_and_sc_appear_under_the_study_in_orthanc(orthanc, archive, settings, exported) -> None:
    study_uid, files = exported
    kinds = {pydicom.dcmread(path, stop_before_pixels=True).Modality: path for path in files}
    assert {"SR", "SEG", "OT"} <= set(kinds), kinds
    sent = send_files(archive, settings, [kinds["SR"], kinds["SEG"]])
    assert sent["failed"] == 0 and {row["status"] for row in sent["instances"]} == {"0x0000"}
    rest = [path for kind, path in kinds.items() if kind not in ("SR", "SEG")]
    web = send_files(archive, settings, rest, web=True)  # the secondary capture (and PDF) by STOW-RS
    assert web["failed"] == 0
    held = set(orthanc_sops(orthanc, study_uid))
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files} <= held
    assert {"SR", "SEG"} <= _modalities(orthanc, study_uid)


def test_a_file_that_is_not_dicom_is_refused_before_anything_is_sent(archive, settings, tmp_path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not DICOM")
    with pytest.raises(MedVisionError) as caught:
        send_files(archive, settings, [bad])
    assert caught.value.code is ErrorCode.UNSUPPORTED_FORMAT


def _medvision(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO), "MEDVISION_HOME": str(home), "MEDVISION_KEYRING": "0"}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _cli(capsys: pytest.CaptureFixture, *args: str, home: Path) -> subprocess.CompletedProcess:
    """``medvision --home HOME ARGS`` in this process (the same dispatch as the console script)."""
    from engine.cli import main

    capsys.readouterr()
    code = main(["--home", str(home), *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_cli_echo_find_get_move(orthanc, upload, tmp_path, client_port, capsys) -> None:
    study = upload(3, patient_id="CLI-1", issuer="SITE-A", study_date="20220304")
    upload(1, patient_id="CLI-1", issuer="SITE-B")
    home = tmp_path / "home"
    common = ["--pacs", orthanc.address, "--calling-ae", CLIENT_AE]
    echo = _cli(capsys, "pacs", "echo", *common, home=home)
    assert echo.returncode == 0 and "0x0000" in echo.stdout, echo.stderr
    found = _cli(capsys, "pacs", "find", *common, "--patient-id", "CLI-1", "--issuer", "SITE-A", "--modality", "CT",
                       home=home)
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines() == [found.stdout.splitlines()[0]]
    uid, date = found.stdout.split()[:2]
    assert (uid, date) == (study, "20220304") and "SITE-A" in found.stdout
    got = _cli(capsys, "pacs", "get", *common, "--study", study, home=home)
    assert got.returncode == 0 and "3 stored" in got.stdout, got.stderr
    moved = _cli(capsys, "pacs", "move", *common, "--study", study, "--listen", str(client_port), "--dest", CLIENT_AE,
                       home=tmp_path / "home2")
    assert moved.returncode == 0 and "3 stored" in moved.stdout and "0 missing" in moved.stdout, moved.stderr
    from engine.store import Store

    store = Store.open(tmp_path / "home2", use_keyring=False)
    try:
        held = sorted(r["sop_instance_uid"] for r in store.db.query(
            "SELECT sop_instance_uid FROM images WHERE study_instance_uid = ?", (study,)))
    finally:
        store.close()
    assert held == orthanc_sops(orthanc, study)


def test_cli_errors_are_one_coded_line(tmp_path, capsys) -> None:
    """Through the real console entry (a subprocess): stderr holds the one coded line only."""
    from tests.pacs.orthanc import free_port

    down = _medvision("pacs", "echo", "--pacs", f"PACS@127.0.0.1:{free_port()}", "--timeout", "1",
                      home=tmp_path / "home")
    assert down.returncode == 2 and down.stderr.startswith("PACS_UNREACHABLE: ")
    bad = _cli(capsys, "pacs", "find", "--pacs", "nonsense", "--patient-id", "X", home=tmp_path / "home")
    assert bad.returncode == 2 and bad.stderr.startswith("INVALID_ARGUMENT: ")

