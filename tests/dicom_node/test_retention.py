"""The DICOM node runs the retention policy's cleanup: at start and every cleanup interval."""

from __future__ import annotations

import time

import pytest

from engine.errors import ErrorCode, MedVisionError
from tests.erasure import age, consistency_problems, fill_session


def test_the_node_purges_expired_sessions_and_keeps_the_rest(start_node, node_engine) -> None:
    store = node_engine.store
    expired = fill_session(store, "received long ago", "dicom", ["CT_small.dcm"])
    recent = fill_session(store, "received recently", "dicom", ["MR_small.dcm"])
    age(store, expired["session_id"], days=31)
    age(store, recent["session_id"], days=1)
    with store.db.transaction() as tx:  # the outbox items point to no real peer: not this test's business
        tx.execute("UPDATE dicom_outbox SET status = 'sent'")
    start_node()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (store.db.query("SELECT 1 FROM erasures UNION ALL SELECT 1 FROM sessions"
                                                          " WHERE id = ?", (expired["session_id"],))
                                           or any((store.home / f).exists() for f in expired["files"])):
        time.sleep(0.05)
    with pytest.raises(MedVisionError) as err:
        node_engine.get_session_status(expired["session_id"])
    assert err.value.code is ErrorCode.SESSION_EXPIRED
    assert node_engine.get_session_status(recent["session_id"])["name"] == "received recently"
    assert not any((store.home / f).exists() for f in expired["files"])
    assert consistency_problems(store) == []
