"""The audit log: hash chain, tampering found by ``medvision audit --verify``, appends from
several processes, the identifier policy, ATNA export. Real SQLCipher throughout: the
tampering is done on the encrypted file with its key, as someone holding it could."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.store import Store
from engine.store.audit import AuditEntry, AuditEvent
from engine.store.audit.chain import GENESIS, record_hash

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ("time", "front_end", "os_user", "host", "pid", "client", "event_id", "action", "action_code",
           "operation", "outcome", "outcome_detail", "session_id", "image_id", "study_uid", "sop_uid", "patient_id",
           "details", "prev_hash", "hash")


def entry(n: int) -> AuditEntry:
    return AuditEntry("cli", AuditEvent.INSTANCES_ACCESSED, "R", f"op{n}", session_id=f"s{n:03d}",
                      details={"n": n})


@pytest.fixture
def logged_home(home: Path) -> Path:
    """A data directory whose audit log holds 8 records (seq 1..8)."""
    store = Store.open(home, use_keyring=False)
    try:
        assert store.audit.append([entry(n) for n in range(1, 6)]) == [1, 2, 3, 4, 5]
        for n in range(6, 9):
            store.audit.record(entry(n))
    finally:
        store.close()
    return home


def tamper(home: Path, *statements: tuple[str, tuple]) -> None:
    """Run SQL on the audit database with its key, the append-only triggers dropped first."""
    store = Store.open(home, use_keyring=False)
    try:
        conn = store.audit.db.connection()
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("DROP TRIGGER audit_no_delete")
        for sql, params in statements:
            conn.execute(sql, params)
    finally:
        store.close()


def row(home: Path, seq: int) -> dict:
    store = Store.open(home, use_keyring=False)
    try:
        return store.audit.db.query("SELECT * FROM audit WHERE seq = ?", (seq,))[0]
    finally:
        store.close()


def verify(home: Path, capsys: pytest.CaptureFixture, *flags: str) -> tuple[int, str]:
    code = main(["--home", str(home), "audit", "--verify", *flags])
    return code, capsys.readouterr().out


def put(seq: int, values: dict) -> tuple[str, tuple]:
    return (f"UPDATE audit SET {', '.join(f'{c} = ?' for c in COLUMNS)} WHERE seq = ?",
            (*(values[c] for c in COLUMNS), seq))


def test_a_clean_chain_verifies_and_each_hash_covers_its_record(logged_home: Path, capsys) -> None:
    code, out = verify(logged_home, capsys)
    assert code == 0, out
    assert "audit chain intact: 8 record(s), head seq 8" in out
    first, second = row(logged_home, 1), row(logged_home, 2)
    assert first["prev_hash"] == GENESIS and second["prev_hash"] == first["hash"]
    assert record_hash(first["prev_hash"], first) == first["hash"]
    code, out = verify(logged_home, capsys, "--json")  # the first --verify appended an "Audit Log Used" record
    assert code == 0 and json.loads(out) | {"head_hash": None} == {
        "ok": True, "records": 9, "head_seq": 9, "head_hash": None, "breaks": []}


def test_records_are_append_only(logged_home: Path) -> None:
    store = Store.open(logged_home, use_keyring=False)
    try:
        conn = store.audit.db.connection()
        for sql in ("UPDATE audit SET outcome = 0 WHERE seq = 2", "DELETE FROM audit WHERE seq = 2"):
            with pytest.raises(Exception, match="append-only"):
                conn.execute(sql)
    finally:
        store.close()


def test_one_flipped_byte_is_named_as_an_edit_of_its_record(logged_home: Path, capsys) -> None:
    operation = row(logged_home, 3)["operation"]
    flipped = chr(ord(operation[0]) ^ 0x01) + operation[1:]
    tamper(logged_home, ("UPDATE audit SET operation = ? WHERE seq = 3", (flipped,)))
    code, out = verify(logged_home, capsys)
    assert code == 1
    assert out.splitlines()[0] == "seq 3: edited: its content does not give its hash"
    assert "first at seq 3 (edited); 1 break(s)" in out


def test_a_deleted_record_is_named_by_its_seq(logged_home: Path, capsys) -> None:
    tamper(logged_home, ("DELETE FROM audit WHERE seq = 5", ()))
    code, out = verify(logged_home, capsys)
    assert code == 1
    assert out.splitlines()[0] == "seq 5: deleted: 1 record(s) missing: seq 5"
    assert "1 break(s)" in out


def test_deleting_the_newest_records_is_found_through_the_head(logged_home: Path, capsys) -> None:
    tamper(logged_home, ("DELETE FROM audit WHERE seq >= 7", ()))
    code, out = verify(logged_home, capsys)
    assert code == 1
    assert out.splitlines()[0].startswith("seq 7: deleted: the newest record(s) are missing: seq 7 to 8")


@pytest.mark.parametrize("a, b", [(2, 6), (4, 5)], ids=["apart", "adjacent"])
def test_two_swapped_records_are_named_as_reordered(logged_home: Path, capsys, a: int, b: int) -> None:
    first, second = row(logged_home, a), row(logged_home, b)
    tamper(logged_home, put(a, second), put(b, first))
    code, out = verify(logged_home, capsys)
    assert code == 1
    assert out.splitlines()[:2] == [f"seq {a}: reordered: it holds the record written as seq {b}",
                                    f"seq {b}: reordered: it holds the record written as seq {a}"]
    assert "first at seq" in out and "2 break(s)" in out


def test_appends_from_several_processes_make_one_linear_chain(home: Path, capsys) -> None:
    Store.open(home, use_keyring=False).close()  # the key file exists before the writers race
    writer = ("import sys; from engine.store import Store; from engine.store.audit import AuditEntry, AuditEvent\n"
              "s = Store.open(sys.argv[1], use_keyring=False)\n"
              "for n in range(40): s.audit.record(AuditEntry(sys.argv[2], AuditEvent.QUERY, 'E', f'w{n}'))\n"
              "s.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(home), fe], cwd=REPO)
             for fe in ("cli", "desktop", "node")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    code, out = verify(home, capsys)
    assert code == 0, out
    assert "120 record(s), head seq 120" in out


def test_the_identifier_policy_decides_what_a_record_holds(home: Path, model_pack: Path, rg1_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.api import Engine

    monkeypatch.setenv("MEDVISION_AUDIT_IDENTIFIERS", "session_id,patient_id")
    with Engine(home=home, model_pack=model_pack) as engine:
        session = engine.create_study_session("policy")["session_id"]
        image = engine.add_image_to_session(session, rg1_path, auto_analyze=False)["image_id"]
        engine.decoded_image(session, image)
        records = list(engine.audit.log.records())
    opened = records[-1]
    assert opened["operation"] == "decoded_image" and opened["session_id"] == session
    assert opened["patient_id"] and opened["image_id"] is None and opened["study_uid"] is None
    raw = b"".join(p.read_bytes() for p in home.glob("audit.db*"))
    assert b"policy" not in raw and opened["patient_id"].encode() not in raw  # encrypted at rest
    monkeypatch.setenv("MEDVISION_AUDIT_IDENTIFIERS", "session_id,patient_name")
    with pytest.raises(ValueError, match="unknown identifier.*patient_name"):
        Engine(home=home, model_pack=model_pack)


def test_the_atna_export_and_the_filters(logged_home: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "audit.jsonl"
    assert main(["--home", str(logged_home), "audit", "--session", "s004", "--atna", str(out)]) == 0
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(messages) == 1
    message = messages[0]
    assert message["EventIdentification"]["EventID"] == {"code": "110103", "codeSystemName": "DCM",
                                                         "displayName": "DICOM Instances Accessed"}
    assert message["EventIdentification"]["EventActionCode"] == "R"
    assert message["EventIdentification"]["EventOutcomeIndicator"] == 0
    assert message["ActiveParticipant"][0]["UserIsRequestor"] is True
    assert message["ActiveParticipant"][0]["NetworkAccessPointID"]
    assert message["AuditSourceIdentification"]["AuditSourceID"].startswith("MedVision@")
    assert message["ParticipantObjectIdentification"] == [
        {"ParticipantObjectID": "s004", "ParticipantObjectTypeCode": 2, "ParticipantObjectTypeCodeRole": 4,
         "ParticipantObjectIDTypeCode": {"code": "session_id", "codeSystemName": "MedVision",
                                         "displayName": "Session"}}]
    assert message["MedVision"]["seq"] == 4
    capsys.readouterr()
    assert main(["--home", str(logged_home), "audit", "--since", "2999-01-01", "--json"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["--home", str(logged_home), "audit", "--since", "yesterday"]) == 2
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: --since must be an ISO 8601")
