"""export_study / get_visualization through the Engine: every format, atomic writes, the
encrypted copy the app keeps, and the failures (unknown session, bad target, no images)."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pydicom
import pytest
from PIL import Image

from engine.agent.report import report_schema
from engine.agent.trace import trace_schema
from engine.cli import main
from engine.errors import ErrorCode, MedVisionError
from engine.export.service import FORMATS


def test_every_format_exports_through_the_engine(worked, tmp_path: Path) -> None:
    engine, session = worked.engine, worked.session_id
    for fmt in FORMATS:
        result = engine.export_study(session, fmt, output_path=tmp_path / fmt)
        assert result["format"] == fmt and result["missing"] == [] and result["model_trained"] is False
        for entry in result["files"]:
            data = Path(entry["path"]).read_bytes()
            assert len(data) == entry["size"] > 0 and hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert Path(entry["path"]).parent == tmp_path / fmt
        assert result["size"] == sum(f["size"] for f in result["files"])
        # Nothing but the exported files in the target (no temporaries left behind).
        assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == sorted(f["name"] for f in result["files"])
    dicom_files = sorted((tmp_path / "dicom").iterdir())
    classes = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID.name) for p in dicom_files}
    assert classes == {"Comprehensive 3D SR Storage", "Segmentation Storage",
                       "Multi-frame True Color Secondary Capture Image Storage", "Encapsulated PDF Storage"} or \
        len(classes) == 4, classes
    studies = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in dicom_files}
    assert studies == {engine.store.get_image(worked.image_id)["study_instance_uid"]}


def test_json_export_validates_against_the_report_and_trace_schemas(worked, tmp_path: Path) -> None:
    result = worked.engine.export_study(worked.session_id, "json", output_path=tmp_path / "case.json")
    assert result["export_path"] == str(tmp_path / "case.json")
    document = json.loads((tmp_path / "case.json").read_text())
    jsonschema.validate(document["report"], report_schema())
    jsonschema.validate(document["trace"], trace_schema())
    assert document["trace"]["run_id"] == worked.run_id
    (image,) = document["images"]
    assert image["classification"]["findings"] and len(image["similar_cases"]) == 3
    assert {m["source"] for m in image["masks"]} == {"organ_seg", "interactive"}
    patient = worked.engine.store.get_image(worked.image_id)["patient"]
    name = str(patient.get("PatientName") or patient.get("name") or "")
    assert name and name not in json.dumps(document)
    assert document["disclaimer"] == "For research and education, not for diagnostic use."


def test_the_app_keeps_an_encrypted_copy_of_each_export(worked, tmp_path: Path) -> None:
    engine, session = worked.engine, worked.session_id
    result = engine.export_study(session, "pdf", output_path=tmp_path / "r.pdf", include_identifiers=True)
    kept = engine.store.get_export(session, result["export_id"])
    assert kept["format"] == "pdf" and kept["options"]["include_identifiers"] is True
    (entry,) = kept["files"]
    assert engine.store.export_bytes(session, result["export_id"], entry["name"]) == (tmp_path / "r.pdf").read_bytes()
    on_disk = engine.store.blobs.path_for(entry["blob_id"]).read_bytes()
    assert b"%PDF" not in on_disk[:4096] and len(on_disk) >= entry["size"]
    text = subprocess.run(["pdftotext", str(tmp_path / "r.pdf"), "-"], capture_output=True, text=True, check=True)
    patient = engine.store.get_image(worked.image_id)["patient"]
    family = str(patient.get("PatientName") or "").split("^")[0]
    assert family and family in text.stdout
    assert engine.store.events_since(0, session)[-1]["kind"] == "export.created"


def test_default_target_is_a_new_folder_under_the_export_root(worked, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDVISION_EXPORT_DIR", str(tmp_path / "root"))
    result = worked.engine.export_study(worked.session_id, "png_annotated")
    path = Path(result["export_path"])
    assert path.is_file() and path.is_relative_to(tmp_path / "root" / worked.session_id)
    width, height = Image.open(path).size  # the image plus the banner/disclaimer strip below it
    assert width == 1841 and height > 1955


def test_visualization_writes_the_composited_view_and_lists_layers(worked, tmp_path: Path) -> None:
    view = worked.engine.get_visualization(worked.session_id, worked.image_id, output_path=tmp_path / "v.png",
                                           max_side=512)
    picture = Image.open(view["image_path"])
    assert picture.size == (view["width"], view["height"]) and max(picture.size) == 512
    assert view["image_url"].startswith("file://")
    kinds = {layer["kind"] for layer in view["layers"]}
    assert {"image", "organ_mask", "annotation", "measurement"} <= kinds
    organs = [layer for layer in view["layers"] if layer["kind"] == "organ_mask"]
    assert organs and not any(layer["visible"] for layer in organs)  # the untrained PSPNet's: listed, not drawn
    assert view["hidden_note"].startswith("Hidden: ")
    bare = worked.engine.get_visualization(worked.session_id, worked.image_id, include_annotations=False,
                                           include_segmentation=False, include_measurements=False,
                                           output_path=tmp_path / "bare.png", max_side=512)
    assert [layer["kind"] for layer in bare["layers"]] == ["image"]
    assert Image.open(bare["image_path"]).tobytes() != picture.tobytes()


def test_unknown_session_and_images_are_export_failed(worked, tmp_path: Path) -> None:
    with pytest.raises(MedVisionError) as err:
        worked.engine.export_study("no-such-session", "pdf", output_path=tmp_path / "x.pdf")
    assert err.value.code is ErrorCode.EXPORT_FAILED and err.value.details["cause"] == "SESSION_NOT_FOUND"
    with pytest.raises(MedVisionError) as err:
        worked.engine.export_study(worked.session_id, "pdf", include_images=["nope"], output_path=tmp_path / "x.pdf")
    assert err.value.code is ErrorCode.EXPORT_FAILED and err.value.details["cause"] == "IMAGE_NOT_FOUND"
    with pytest.raises(MedVisionError) as err:
        worked.engine.export_study(worked.session_id, "docx")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_target_fails_cleanly_and_keeps_nothing(worked, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    before = len(worked.engine.store.list_exports(worked.session_id))
    for fmt, target in (("pdf", blocker / "report.pdf"), ("dicom", blocker / "dicom")):
        with pytest.raises(MedVisionError) as err:
            worked.engine.export_study(worked.session_id, fmt, output_path=target)
        assert err.value.code is ErrorCode.EXPORT_FAILED and "cannot write" in err.value.message
        assert str(tmp_path) not in err.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert len(worked.engine.store.list_exports(worked.session_id)) == before


def test_a_session_without_images_exports_what_exists_and_says_what_is_missing(engine, tmp_path: Path) -> None:
    session = engine.create_study_session("empty")["session_id"]
    result = engine.export_study(session, "json", output_path=tmp_path / "empty.json")
    assert "the session has no images" in result["missing"]
    assert json.loads((tmp_path / "empty.json").read_text())["images"] == []
    pdf = engine.export_study(session, "pdf", output_path=tmp_path / "empty.pdf")
    assert pdf["missing"] and (tmp_path / "empty.pdf").read_bytes().startswith(b"%PDF")
    for fmt in ("dicom_sr", "dicom_seg", "png_annotated"):
        with pytest.raises(MedVisionError) as err:
            engine.export_study(session, fmt, output_path=tmp_path / fmt)
        assert err.value.code is ErrorCode.EXPORT_FAILED and "no images" in err.value.message
        assert not (tmp_path / fmt).exists()


def test_cli_export_writes_the_file(worked, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MEDVISION_HOME", str(worked.home))
    monkeypatch.setenv("MEDVISION_MODEL_PACK", str(worked.engine.settings.model_pack))
    target = tmp_path / "cli.html"
    assert main(["export", worked.session_id, "--format", "html", "--out", str(target)]) == 0
    assert str(target) in capsys.readouterr().out and target.read_bytes().startswith(b"<!DOCTYPE html>")
    assert main(["export", "missing-session", "--format", "json", "--out", str(tmp_path / "m.json")]) == 2
    assert "EXPORT_FAILED" in capsys.readouterr().err


def test_running_out_of_space_mid_export_leaves_no_file_and_no_record(worked, tmp_path: Path) -> None:
    """A real failed write (file size limit in a child process: EFBIG, like a full disk)."""
    target = tmp_path / "out"
    script = f"""
import resource, signal, sys
from pathlib import Path
from engine.api import Engine
from engine.config import Settings
from engine.errors import MedVisionError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
engine = Engine(Settings(home=Path({str(worked.home)!r}), model_pack=Path({str(worked.engine.settings.model_pack)!r}),
                         threads=1, use_keyring=False))
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
try:
    engine.export_study({worked.session_id!r}, "png_annotated", output_path={str(target)!r})
except MedVisionError as exc:
    print(exc.code.value, exc.message)
    sys.exit(3)
"""
    before = len(worked.engine.store.list_exports(worked.session_id))
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode == 3, child.stderr[-2000:]
    assert child.stdout.startswith("EXPORT_FAILED cannot write the export") and "too large" in child.stdout
    assert not target.exists() or list(target.iterdir()) == []
    assert len(worked.engine.store.list_exports(worked.session_id)) == before


def test_an_existing_file_is_refused_unless_the_caller_asks_to_overwrite(worked, tmp_path: Path) -> None:
    engine, session = worked.engine, worked.session_id
    victim = tmp_path / "victim.dcm"
    victim.write_bytes(b"DICM a study someone else keeps" * 100)
    original = victim.read_bytes()
    before = len(engine.store.list_exports(session))
    for fmt in ("json", "pdf", "dicom_sr"):
        with pytest.raises(MedVisionError) as err:
            engine.export_study(session, fmt, output_path=victim)
        assert err.value.code is ErrorCode.TARGET_EXISTS and err.value.details["names"] == ["victim.dcm"]
        assert str(tmp_path) not in err.value.message
    assert victim.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["victim.dcm"]
    assert len(engine.store.list_exports(session)) == before
    result = engine.export_study(session, "json", output_path=victim, overwrite=True)
    assert result["export_path"] == str(victim) and json.loads(victim.read_text())["session_id"] == session
    # The default target is a new folder each time, never an earlier export's.
    first, second = (Path(engine.export_study(session, "json")["export_path"]) for _ in range(2))
    assert first != second and first.is_file() and second.is_file()


def test_an_existing_file_in_the_out_folder_is_refused_before_anything_is_written(
        engine, rg1_path: Path, tmp_path: Path) -> None:
    session = engine.create_study_session("two films")["session_id"]
    first, second = (engine.add_image_to_session(session, rg1_path, auto_analyze=False)["image_id"] for _ in range(2))
    folder = tmp_path / "out"
    folder.mkdir()
    mine = folder / f"{second}_annotated.png"
    mine.write_bytes(b"the radiologist's own file")
    with pytest.raises(MedVisionError) as err:
        engine.export_study(session, "png_annotated", output_path=folder)
    assert err.value.code is ErrorCode.TARGET_EXISTS and err.value.details["names"] == [mine.name]
    # No partial write: the other image's file was not written either, and no temporaries.
    assert [p.name for p in folder.iterdir()] == [mine.name]
    assert mine.read_bytes() == b"the radiologist's own file"
    result = engine.export_study(session, "png_annotated", output_path=folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}_annotated.png" for i in (first, second))
    assert mine.read_bytes().startswith(b"\x89PNG") and len(result["files"]) == 2


def test_an_imported_file_is_never_overwritten_even_when_asked(engine, rg1_path: Path, tmp_path: Path) -> None:
    source = tmp_path / "films" / "rg1.dcm"
    source.parent.mkdir()
    source.write_bytes(rg1_path.read_bytes())
    session = engine.create_study_session("victim")["session_id"]
    engine.add_image_to_session(session, source, auto_analyze=False)
    other = engine.create_study_session("other")["session_id"]  # another session's export, same file
    link = tmp_path / "link.dcm"
    link.symlink_to(source)
    for sid, target in ((session, source), (other, source), (session, link)):
        for overwrite in (False, True):
            with pytest.raises(MedVisionError) as err:
                engine.export_study(sid, "json", output_path=target, overwrite=overwrite)
            assert err.value.code is ErrorCode.EXPORT_FAILED and err.value.details["reason"] == "protected"
            assert "imported" in err.value.message and str(tmp_path) not in err.value.message
    assert source.read_bytes() == rg1_path.read_bytes() and link.is_symlink()
    # Nor a file of the data directory.
    database = next(p for p in engine.settings.home.rglob("*") if p.is_file())
    with pytest.raises(MedVisionError) as err:
        engine.export_study(session, "json", output_path=database, overwrite=True)
    assert err.value.details["reason"] == "protected"


def test_a_device_or_fifo_target_gets_a_truthful_error(worked, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    device = Path("/dev/full")
    for fmt, target, kind in (("json", device, "character device"), ("pdf", device, "character device"),
                              ("json", fifo, "FIFO")):
        for overwrite in (False, True):
            with pytest.raises(MedVisionError) as err:
                worked.engine.export_study(worked.session_id, fmt, output_path=target, overwrite=overwrite)
            assert err.value.code is ErrorCode.EXPORT_FAILED and "File exists" not in err.value.message
            assert err.value.details == {"reason": "not_a_regular_file", "kind": kind, "name": target.name}
            assert f"is a {kind}, not a regular file" in err.value.message
    with pytest.raises(MedVisionError) as err:  # several files into a device
        worked.engine.export_study(worked.session_id, "dicom", output_path="/dev/full")
    assert err.value.code is ErrorCode.EXPORT_FAILED and err.value.details["kind"] == "character device"
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["pipe.json"]


def test_a_full_device_is_reported_as_enospc(worked, tmp_path: Path, monkeypatch) -> None:
    import engine.export.service as service

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(service.os, "fsync", full)
    with pytest.raises(MedVisionError) as err:
        worked.engine.export_study(worked.session_id, "json", output_path=tmp_path / "out" / "r.json")
    monkeypatch.undo()
    assert err.value.code is ErrorCode.EXPORT_FAILED and err.value.details["errno"] == "ENOSPC"
    assert "no space left on the device (ENOSPC)" in err.value.message
    assert list((tmp_path / "out").iterdir()) == []


def test_visualization_without_a_path_writes_nothing(worked, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDVISION_EXPORT_DIR", str(tmp_path / "root"))
    view = worked.engine.get_visualization(worked.session_id, worked.image_id, max_side=256)
    assert view["image_path"] is None and view["image_url"] is None
    data = base64.b64decode(view["png_base64"])
    assert hashlib.sha256(data).hexdigest() == view["sha256"]
    assert Image.open(io.BytesIO(data)).size == (view["width"], view["height"])
    assert not (tmp_path / "root").exists() and list(tmp_path.iterdir()) == []
    # A named file is written, and then not replaced unless asked.
    target = tmp_path / "view.png"
    assert worked.engine.get_visualization(worked.session_id, output_path=target, max_side=256)["image_path"] == str(target)
    with pytest.raises(MedVisionError) as err:
        worked.engine.get_visualization(worked.session_id, output_path=target, max_side=128)
    assert err.value.code is ErrorCode.TARGET_EXISTS and Image.open(target).size == (view["width"], view["height"])
