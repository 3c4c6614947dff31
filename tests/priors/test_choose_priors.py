"""The prior selection rule: a table of candidates, each kept or left out for one reason."""

from __future__ import annotations

import pytest

from engine.analysis.priors import choose_priors, study_facts, why_not

CURRENT = {"study_uid": "1.2.9", "patient_id": "P1", "issuer": "HOSP-A", "study_date": "20240610",
           "study_time": "101500", "modality": "CR", "body_part": "CHEST"}


def study(uid: str, **changes) -> dict:
    return CURRENT | {"study_uid": uid, "study_date": "20230101"} | changes


TABLE = [
    (study("1.2.1"), None),
    (study("1.2.2", study_date="20220505"), None),
    (study("1.2.3", modality="DX\\CR"), None),  # ModalitiesInStudy with CR among them
    (study("1.2.4", body_part=None), None),  # body part unknown on one side: not held against it
    (study("1.2.5", issuer="HOSP-B"), "another patient (Patient ID or issuer differ)"),
    (study("1.2.6", issuer=None), "another patient (Patient ID or issuer differ)"),
    (study("1.2.7", patient_id="P2"), "another patient (Patient ID or issuer differ)"),
    (study("1.2.8", modality="CT"), "another modality"),
    (study("1.2.10", body_part="ABDOMEN"), "another body part"),
    (study("1.2.11", study_date="20240611"), "not earlier"),
    (study("1.2.12", study_date="20240610", study_time="101500"), "not earlier"),
    (study("1.2.9"), "the same study"),
    (study("1.2.13", study_date=""), "no study date"),
]


@pytest.mark.parametrize(("candidate", "reason"), TABLE, ids=[row[0]["study_uid"] for row in TABLE])
def test_each_candidate_is_kept_or_left_out_for_its_reason(candidate: dict, reason: str | None) -> None:
    assert why_not(CURRENT, candidate) == reason


def test_most_recent_first_and_count_honoured() -> None:
    candidates = [row[0] for row in TABLE]
    same_day_earlier = study("1.2.14", study_date="20240610", study_time="0815")  # same day, earlier time
    chosen = choose_priors(CURRENT, [*candidates, same_day_earlier], count=10)
    assert [c["study_uid"] for c in chosen] == ["1.2.14", "1.2.1", "1.2.3", "1.2.4", "1.2.2"]
    two = choose_priors(CURRENT, candidates, count=2)
    assert len(two) == 2 and {c["study_uid"] for c in two} <= {"1.2.1", "1.2.3", "1.2.4"}  # all of 20230101
    assert choose_priors(CURRENT, candidates, count=0) == []
    assert len(choose_priors(CURRENT, candidates + candidates, count=10)) == 4  # a study listed twice counts once


def test_absent_issuer_matches_only_absent_issuer() -> None:
    current = CURRENT | {"issuer": None}
    assert why_not(current, study("1.3.1", issuer=None)) is None
    assert why_not(current, study("1.3.2", issuer="")) is None
    assert why_not(current, study("1.3.3", issuer="HOSP-A")) is not None
    assert why_not(current | {"patient_id": ""}, study("1.3.4", patient_id="")) is not None  # no ID matches nothing


def test_study_facts_from_image_rows() -> None:
    rows = [{"patient": {}, "metadata": {}},
            {"study_instance_uid": "1.4", "modality": "CR", "metadata": {"BodyPartExamined": "CHEST"},
             "patient": {"PatientID": "P1", "IssuerOfPatientID": "HOSP-A", "StudyDate": "20240610",
                         "StudyTime": "101500"}}]
    assert study_facts(rows) == {"study_uid": "1.4", "patient_id": "P1", "issuer": "HOSP-A",
                                 "study_date": "20240610", "study_time": "101500", "modality": "CR",
                                 "body_part": "CHEST"}
    assert study_facts(rows[:1]) is None
