"""The audit vocabulary: DICOM PS3.16 CID 400 event ids, RFC 3881 action and outcome codes."""

from __future__ import annotations

from enum import Enum

from engine.config import AUDIT_IDENTIFIERS as IDENTIFIERS
from engine.config import DEFAULT_AUDIT_IDENTIFIERS as DEFAULT_IDENTIFIERS


class AuditEvent(Enum):
    """An audit record's EventID: ``(DCM code, display name)`` from DICOM PS3.16 CID 400."""

    AUDIT_LOG_USED = ("110101", "Audit Log Used")
    INSTANCES_ACCESSED = ("110103", "DICOM Instances Accessed")
    INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
    STUDY_DELETED = ("110105", "DICOM Study Deleted")
    EXPORT = ("110106", "Export")
    IMPORT = ("110107", "Import")
    PATIENT_RECORD = ("110110", "Patient Record")
    QUERY = ("110112", "Query")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def display(self) -> str:
        return self.value[1]


#: RFC 3881 EventActionCode: create, read, update, delete, execute.
ACTION_CODES = frozenset("CRUDE")

#: RFC 3881 EventOutcomeIndicator.
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12
OUTCOMES = frozenset({SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE})

#: The front-ends a record names.
FRONT_ENDS = frozenset({"cli", "desktop", "mcp", "node", "agent", "api"})

__all__ = ["ACTION_CODES", "DEFAULT_IDENTIFIERS", "FRONT_ENDS", "IDENTIFIERS", "OUTCOMES", "AuditEvent"]
