"""Audit records as RFC 3881 / DICOM PS3.15 A.5 audit messages, one JSON object each.

The field names are those of the DICOM audit message schema (EventIdentification,
ActiveParticipant, AuditSourceIdentification, ParticipantObjectIdentification); the
chain's own fields (seq, hash, prev_hash) ride along under ``MedVision`` so an exported
file can be checked against the log.
"""

from __future__ import annotations

import json
from typing import Any

from engine.store.audit.codes import AuditEvent

#: RFC 3881 AuditSourceTypeCode per front-end: 1 end-user interface, 4 application server.
_SOURCE_TYPE = {"cli": "1", "desktop": "1", "mcp": "4", "node": "4", "agent": "4", "api": "4"}

#: ParticipantObjectIDTypeCode of each identifier a record may hold, with the object's
#: type (1 person, 2 system object) and role (1 patient, 3 report, 4 domain resource).
_OBJECTS = {
    "patient_id": ({"code": "2", "codeSystemName": "RFC-3881", "displayName": "Patient Number"}, 1, 1),
    "study_uid": ({"code": "110180", "codeSystemName": "DCM", "displayName": "Study Instance UID"}, 2, 3),
    "sop_uid": ({"code": "sop_instance_uid", "codeSystemName": "MedVision", "displayName": "SOP Instance UID"}, 2, 3),
    "session_id": ({"code": "session_id", "codeSystemName": "MedVision", "displayName": "Session"}, 2, 4),
    "image_id": ({"code": "image_id", "codeSystemName": "MedVision", "displayName": "Image"}, 2, 4),
}


def _code(event_id: str) -> dict[str, str]:
    display = next((e.display for e in AuditEvent if e.code == event_id), event_id)
    return {"code": event_id, "codeSystemName": "DCM", "displayName": display}


def to_atna(record: dict[str, Any]) -> dict[str, Any]:
    """One stored record as an audit message."""
    participants = [{"UserID": record["os_user"], "AlternativeUserID": str(record["pid"]),
                     "UserIsRequestor": True, "NetworkAccessPointID": record["host"],
                     "NetworkAccessPointTypeCode": "1", "RoleIDCode": [{"code": record["front_end"],
                                                                        "codeSystemName": "MedVision"}]}]
    details = json.loads(record["details"] or "{}")
    if record["client"]:
        participants.append({"UserID": record["client"], "UserIsRequestor": True,
                             "RoleIDCode": [{"code": "mcp_client", "codeSystemName": "MedVision"}]})
    if details.get("peer_ae"):
        participants.append({"UserID": details["peer_ae"], "UserIsRequestor": record["action_code"] == "C",
                             "NetworkAccessPointID": details.get("peer_host") or "",
                             "NetworkAccessPointTypeCode": "2"})
    objects = []
    for name, (id_type, type_code, role) in _OBJECTS.items():
        if record.get(name):
            objects.append({"ParticipantObjectID": record[name], "ParticipantObjectIDTypeCode": id_type,
                            "ParticipantObjectTypeCode": type_code, "ParticipantObjectTypeCodeRole": role})
    event = {"EventID": _code(record["event_id"]), "EventActionCode": record["action_code"],
             "EventDateTime": record["time"], "EventOutcomeIndicator": record["outcome"],
             "EventTypeCode": [{"code": record["operation"], "codeSystemName": "MedVision"}]}
    if record["outcome_detail"]:
        event["EventOutcomeDescription"] = record["outcome_detail"]
    return {
        "EventIdentification": event,
        "ActiveParticipant": participants,
        "AuditSourceIdentification": {"AuditSourceID": f"MedVision@{record['host']}",
                                      "AuditSourceTypeCode": [{"code": _SOURCE_TYPE.get(record["front_end"], "4")}]},
        "ParticipantObjectIdentification": objects,
        "MedVision": {"seq": record["seq"], "prev_hash": record["prev_hash"], "hash": record["hash"],
                      "front_end": record["front_end"], "details": details},
    }
