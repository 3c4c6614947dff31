"""Priors against the real Orthanc: found by Patient ID and issuer, chosen, fetched by C-GET, recorded;
and the node fetching them by itself after a pushed study's analysis."""

from __future__ import annotations

import time
from pathlib import Path

from dicom_node.pacs.config import parse_address
from dicom_node.pacs.priors import fetch_priors, find_priors
from dicom_node.pacs.store import send_files
from engine.events import EventKind
from tests.pacs.conftest import CLIENT_AE
from tests.priors.rg1 import rg1_variant


def _studies(orthanc, patient_id: str) -> dict[str, bytes]:
    """The patient's studies in the archive (RG1 variants), by role; returned as uploaded."""
    files = {
        "prior": rg1_variant(study_date="20230115", patient_id=patient_id),
        "older": rg1_variant(study_date="20190301", patient_id=patient_id),
        "oldest": rg1_variant(study_date="20150301", patient_id=patient_id),
        "other_modality": rg1_variant(study_date="20230601", patient_id=patient_id, modality="CT"),
        "other_issuer": rg1_variant(study_date="20230701", patient_id=patient_id, issuer="ELSEWHERE"),
        "later": rg1_variant(study_date="20250101", patient_id=patient_id),
    }
    orthanc.upload(files.values())
    return files


def _uid(data: bytes) -> str:
    import io

    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def test_priors_found_fetched_and_recorded(engine, orthanc, archive, settings, ingestor, tmp_path: Path) -> None:
    studies = {role: _uid(data) for role, data in _studies(orthanc, "PRIORS-1").items()}
    current_file = tmp_path / "current.dcm"
    current_file.write_bytes(rg1_variant(study_date="20240301", patient_id="PRIORS-1"))
    session = engine.create_study_session("current")["session_id"]
    engine.add_image_to_session(session, current_file, auto_analyze=False)
    current = engine.study_facts(session)

    chosen = find_priors([archive], settings, current, count=2)
    assert [p["study_uid"] for p in chosen] == [studies["prior"], studies["older"]]
    assert chosen[0]["modality"] == "CR" and chosen[0]["body_part"] == "CHEST"

    last = engine.last_event_id()
    outcome = fetch_priors(engine, ingestor, settings, [archive], session, count=2)
    fetched = outcome["priors"]
    assert [p["study_uid"] for p in fetched] == [studies["prior"], studies["older"]]
    assert all(p["complete"] and p["stored"] == 1 and p["session_id"] for p in fetched)
    held = {row["study_instance_uid"] for row in engine.store.db.query("SELECT study_instance_uid FROM images")}
    assert studies["other_modality"] not in held and studies["other_issuer"] not in held
    assert studies["oldest"] not in held and studies["later"] not in held  # count 2; later is no prior
    status = engine.get_session_status(session)
    assert [p["study_uid"] for p in status["priors"]] == [studies["prior"], studies["older"]]
    assert EventKind.SESSION_PRIORS in [e.kind for e in engine.events_since(last)]
    # ready to compare: the retrieved prior by its Study Instance UID
    compared = engine.compare_with_prior(session, studies["prior"], register=False, analyze=False)
    assert compared["same_patient"] and compared["prior_study"]["study_date"] == "20230115"
    # again: everything is held, nothing is stored twice
    again = fetch_priors(engine, ingestor, settings, [archive], session, count=2)
    assert all(p["stored"] == 0 and p["already_held"] == 1 for p in again["priors"])


def test_the_same_patient_id_under_another_issuer_is_never_a_prior(engine, orthanc, archive, settings,
                                                                   tmp_path: Path) -> None:
    studies = {role: _uid(data) for role, data in _studies(orthanc, "PRIORS-2").items()}
    current_file = tmp_path / "current.dcm"
    current_file.write_bytes(rg1_variant(study_date="20240301", patient_id="PRIORS-2", issuer="ELSEWHERE"))
    session = engine.create_study_session("current")["session_id"]
    engine.add_image_to_session(session, current_file, auto_analyze=False)
    chosen = find_priors([archive], settings, engine.study_facts(session), count=5)
    assert [p["study_uid"] for p in chosen] == [studies["other_issuer"]]


def test_the_node_fetches_priors_after_a_pushed_study(engine, orthanc, settings, start_node, tmp_path: Path) -> None:
    studies = {role: _uid(data) for role, data in _studies(orthanc, "PRIORS-3").items()}
    (engine.settings.home / "pacs.toml").write_text(
        f'calling_ae = "{CLIENT_AE}"\n[[archive]]\nname = "main"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\npriors = true\n")
    node = start_node(analyze=True)
    assert node.priors.enabled
    current_file = tmp_path / "current.dcm"
    current_file.write_bytes(rg1_variant(study_date="20240301", patient_id="PRIORS-3"))

    sent = send_files(parse_address(f"{CLIENT_AE}@127.0.0.1:{node.port}"), settings, [current_file])
    assert sent["failed"] == 0
    session = engine.store.session_of_study(_uid(current_file.read_bytes()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not engine.get_session_status(session["id"])["priors"]:
        time.sleep(0.1)
    priors = engine.get_session_status(session["id"])["priors"]
    assert [p["study_uid"] for p in priors] == [studies["prior"], studies["older"]]


def test_mcp_pacs_and_prior_tools(home: Path, model_pack: Path, orthanc, tmp_path: Path) -> None:
    """query_pacs, retrieve_study, list_priors (fetch) and compare_with_prior through an MCP client."""
    import anyio

    from tests.mcp import connect, failed, ok

    studies = {role: _uid(data) for role, data in _studies(orthanc, "PRIORS-4").items()}
    (home / "pacs.toml").write_text(
        f'calling_ae = "{CLIENT_AE}"\n[[archive]]\nname = "main"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\n")
    root = tmp_path / "images"
    root.mkdir()
    (root / "current.dcm").write_bytes(rg1_variant(study_date="20240301", patient_id="PRIORS-4"))

    async def scenario() -> None:
        async with connect(home, model_pack, [root]) as client:
            found = await ok(client, "query_pacs", pacs="main", patient_id="PRIORS-4", issuer="ELSEWHERE")
            assert [r["study_uid"] for r in found["results"]] == [studies["other_issuer"]]
            series = await ok(client, "query_pacs", pacs="main", study_uid=studies["oldest"], level="series")
            assert series["results"][0]["body_part"] == "CHEST"
            got = await ok(client, "retrieve_study", pacs="main", study_uid=studies["oldest"])
            assert got["complete"] and got["stored"] == 1 and got["session_id"]

            session = (await ok(client, "create_study_session", name="current"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session, image_path=str(root / "current.dcm"))
            held = await ok(client, "list_priors", session_id=session, count=5)
            assert [p["study_uid"] for p in held["priors"]] == [studies["oldest"]]  # the one retrieved so far
            remote = await ok(client, "list_priors", session_id=session, pacs="main")
            assert [p["study_uid"] for p in remote["in_archive"]] == [studies["prior"], studies["older"]]
            fetched = await ok(client, "list_priors", session_id=session, pacs="main", fetch=True)
            assert [p["study_uid"] for p in fetched["fetched"]] == [studies["prior"], studies["older"]]
            assert [p["study_uid"] for p in fetched["recorded"]] == [studies["prior"], studies["older"]]

            compared = await ok(client, "compare_with_prior", session_id=session, prior=studies["prior"])
            assert compared["same_patient"] and compared["findings"]["current_model"]
            assert compared["registration"]["quality"]["good"]
            refused = await failed(client, "query_pacs", pacs="main", study_date="last week")
            assert refused["code"] == "INVALID_ARGUMENT"

    anyio.run(scenario)


def test_pacs_priors_command(engine, orthanc, tmp_path: Path, capsys) -> None:
    import json

    from engine.cli import main

    studies = {role: _uid(data) for role, data in _studies(orthanc, "PRIORS-5").items()}
    current_file = tmp_path / "current.dcm"
    current_file.write_bytes(rg1_variant(study_date="20240301", patient_id="PRIORS-5"))
    session = engine.create_study_session("current")["session_id"]
    engine.add_image_to_session(session, current_file, auto_analyze=False)
    home = str(engine.settings.home)
    assert main(["--home", home, "pacs", "priors", "--pacs", orthanc.address, "--calling-ae", CLIENT_AE,
                 session, "--count", "1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["study_uid"] for p in printed["priors"]] == [studies["prior"]] and printed["priors"][0]["complete"]
    assert main(["--home", home, "pacs", "priors", "--pacs", orthanc.address, "--calling-ae", CLIENT_AE,
                 "no-such-session"]) == 2
    assert capsys.readouterr().err.startswith("SESSION_NOT_FOUND")
