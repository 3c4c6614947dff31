"""One exception root for the whole product, with stable machine-readable codes.

Every front-end maps :class:`MedVisionError` the same way: the MCP server returns an
``isError`` result carrying ``code``, the DICOM node a status code, the desktop a
dialog, the CLI exit code 2 with ``CODE: message`` on stderr. Messages never carry
patient names or absolute paths outside the data directory.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Stable error codes (product spec, appendix D, plus the ones the design adds)."""

    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND"
    ANNOTATION_NOT_FOUND = "ANNOTATION_NOT_FOUND"
    INVALID_REGION = "INVALID_REGION"
    INVALID_IMAGE_TYPE = "INVALID_IMAGE_TYPE"
    #: A decodable image no model can use: smaller than the model's minimum, or non-finite values.
    INVALID_IMAGE = "INVALID_IMAGE"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FILE_NOT_FOUND = "FILE_NOT_FOUND"
    IMAGE_DECODE_ERROR = "IMAGE_DECODE_ERROR"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    #: Files asked for as a volume hold none: a radiograph, a single 2D image, slices without position.
    NOT_A_VOLUME = "NOT_A_VOLUME"
    #: A volume whose voxels would pass ``MEDVISION_MAX_VOLUME_BYTES``; refused before allocating.
    VOLUME_TOO_LARGE = "VOLUME_TOO_LARGE"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    MODEL_LOAD_ERROR = "MODEL_LOAD_ERROR"
    MODEL_INTEGRITY_ERROR = "MODEL_INTEGRITY_ERROR"
    INFERENCE_ERROR = "INFERENCE_ERROR"
    GPU_OOM = "GPU_OOM"
    EXPORT_FAILED = "EXPORT_FAILED"
    #: An export's target file already exists and the caller did not ask to overwrite it.
    TARGET_EXISTS = "TARGET_EXISTS"
    DATABASE_ERROR = "DATABASE_ERROR"
    DISK_FULL = "DISK_FULL"
    #: A remote archive (PACS): no connection (refused, no route), after the retries.
    PACS_UNREACHABLE = "PACS_UNREACHABLE"
    #: A remote archive accepted the connection but did not answer within the timeout.
    PACS_TIMEOUT = "PACS_TIMEOUT"
    #: A remote archive refused the association or the request (its status is in details).
    PACS_REFUSED = "PACS_REFUSED"
    #: C-MOVE answered 0xA801: the archive does not know the destination AE.
    MOVE_DESTINATION_UNKNOWN = "MOVE_DESTINATION_UNKNOWN"
    #: A retrieve ended with instances missing (aborted, failed sub-operations); resumable.
    RETRIEVE_INCOMPLETE = "RETRIEVE_INCOMPLETE"


class MedVisionError(Exception):
    """The root of every error the engine raises on purpose.

    Parameters
    ----------
    code:
        One of :class:`ErrorCode`; front-ends switch on it, so it never changes meaning.
    message:
        One human sentence, free of PHI and of absolute paths outside the data dir.
    details:
        Structured context (ids, the offending argument, a detected image type...).
    """

    def __init__(self, code: ErrorCode | str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form every front-end sends: ``{"code", "message", "details"}``."""
        return {"code": self.code.value, "message": self.message, "details": self.details}
