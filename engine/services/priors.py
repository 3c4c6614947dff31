"""A session's priors: the same patient's earlier, relevant studies held in the store, and
what the network side found and fetched (recorded on the session for the worklist)."""

from __future__ import annotations

from typing import Any

from engine.analysis.priors import choose_priors, study_facts
from engine.config import DEFAULT_PRIOR_COUNT
from engine.errors import ErrorCode, MedVisionError
from engine.store import Store


def resolve_prior(store: Store, prior: str) -> str:
    """A session id, or the Study Instance UID of a study already in the store: its session id."""
    try:
        return store.get_session(prior)["id"]
    except MedVisionError as exc:
        if exc.code != ErrorCode.SESSION_NOT_FOUND:
            raise
    session = store.session_of_study(prior)
    if session is None:
        raise MedVisionError(ErrorCode.SESSION_NOT_FOUND, "the prior is neither a session nor a study held in the"
                             " store (retrieve it first: medvision pacs get)", prior=prior)
    return session["id"]


class PriorService:
    """Finds relevant priors among the store's sessions (:func:`choose_priors`) and records them."""

    def __init__(self, store: Store, count: int = DEFAULT_PRIOR_COUNT) -> None:
        self.store, self.count = store, count

    def facts(self, session_id: str) -> dict[str, Any]:
        """The session's study facts (patient ID, issuer, date, modality, body part)."""
        self.store.get_session(session_id)  # SESSION_NOT_FOUND first
        facts = study_facts(self.store.list_images(session_id))
        if facts is None:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "the session has no image with a Patient ID: its priors"
                                 " cannot be looked for", session_id=session_id)
        return facts | {"session_id": session_id}

    def held(self, current: dict[str, Any], count: int | None = None) -> list[dict[str, Any]]:
        """Relevant priors of ``current`` (study facts) among the sessions in the store, most recent first."""
        candidates = []
        for image in self.store.images_of_patient(current["patient_id"]):
            facts = study_facts([image])
            if facts is not None and image["session_id"] != current.get("session_id"):
                candidates.append(facts | {"session_id": image["session_id"]})
        return choose_priors(current, candidates, self.count if count is None else count)

    def list_priors(self, session_id: str, count: int | None = None) -> dict[str, Any]:
        """The session's relevant priors held in the store, and those the network side recorded."""
        current = self.facts(session_id)
        held = self.held(current, count)
        recorded = (self.store.get_session(session_id)["metadata"] or {}).get("priors", [])
        return {"session_id": session_id, "study": _public(current), "priors": [_public(p) for p in held],
                "recorded": recorded, "count": self.count if count is None else count}

    def record(self, session_id: str, priors: list[dict[str, Any]]) -> dict[str, Any]:
        """Record the session's priors (``session.priors``: the worklist shows them)."""
        rows = [_public(p) for p in priors]
        self.store.set_session_priors(session_id, rows)
        return {"session_id": session_id, "priors": rows}


def _public(facts: dict[str, Any]) -> dict[str, Any]:
    """Study facts without the patient's identifiers (ids, dates and codes only)."""
    return {k: facts.get(k) for k in ("session_id", "study_uid", "study_date", "study_time", "modality", "body_part")}
