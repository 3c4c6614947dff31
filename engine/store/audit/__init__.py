"""The audit trail's store: an append-only, hash-chained log in its own encrypted file.

``log`` (the repository, :class:`AuditLog`), ``chain`` (hashing and verification),
``codes`` (event ids, action and outcome codes, the identifiers a record may hold),
``atna`` (records as RFC 3881 / DICOM PS3.15 A.5 audit messages in JSON).
"""

from engine.store.audit.chain import Break, Verification
from engine.store.audit.codes import DEFAULT_IDENTIFIERS, IDENTIFIERS, AuditEvent
from engine.store.audit.log import AUDIT_DATABASE_NAME, AuditEntry, AuditLog

__all__ = ["AUDIT_DATABASE_NAME", "DEFAULT_IDENTIFIERS", "IDENTIFIERS", "AuditEntry", "AuditEvent", "AuditLog",
           "Break", "Verification"]
