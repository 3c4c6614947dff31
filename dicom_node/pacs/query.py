"""Query an archive: Study Root C-FIND (study, series, instance levels) and QIDO-RS.

Results come as pages (lists of at most ``page_size`` plain dicts) from a generator, so
a caller holds one page at a time; ``limit`` bounds the whole answer (default
:data:`MAX_RESULTS`): past it a C-FIND is cancelled (C-CANCEL) and the last page says
``truncated``. A QIDO-RS search asks the archive for one page at a time (``offset``,
``limit``).

Patients are matched by Patient ID *and* Issuer of Patient ID: with ``issuer`` given,
only answers carrying that issuer are kept (an archive that ignores the key cannot merge
two patients into one list); every result carries its issuer, so the same ID under two
issuers shows as two patients.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from dicom_node.handlers import DUL_POLL_S
from dicom_node.pacs.config import Archive, ClientSettings
from dicom_node.pacs.connection import association, dimse_lost
from engine.errors import ErrorCode, MedVisionError

PAGE_SIZE = 100
#: The most results one query returns unless told otherwise; the rest is cancelled.
MAX_RESULTS = 10_000
LEVELS = ("study", "series", "image")
PENDING = (0xFF00, 0xFF01)
CANCELLED = 0xFE00

_DATE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: Matching keys may hold DICOM wildcards (* ?) but no multi-value separator or control characters.
_VALUE = re.compile(r"^[^\\\x00-\x1f]{1,64}$")


@dataclass(frozen=True)
class Query:
    """Matching keys (empty ones match everything); checked at once, the bad one named."""

    patient_id: str | None = None
    issuer: str | None = None
    patient_name: str | None = None
    study_date: str | None = None  # YYYYMMDD, or a range YYYYMMDD-YYYYMMDD (either end open)
    modality: str | None = None
    accession_number: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if item.name.endswith("_uid"):
                ok = len(value) <= 64 and _UID.match(value)
            elif item.name == "study_date":
                ok = bool(_DATE.match(value)) and value not in ("", "-")
            else:
                ok = bool(_VALUE.match(value))
            if not ok:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f'Argument "{item.name}": {value!r} is not a valid'
                                     f" {'UID' if item.name.endswith('_uid') else 'matching value'}.",
                                     argument=item.name)


def identifier(query: Query, level: str) -> Dataset:
    """The C-FIND identifier: matching keys from ``query``, return keys for ``level``."""
    if level not in LEVELS:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f'Argument "level": one of {", ".join(LEVELS)}.')
    ds = Dataset()
    ds.QueryRetrieveLevel = level.upper()
    ds.PatientID = query.patient_id or ""
    ds.IssuerOfPatientID = query.issuer or ""
    ds.PatientName = query.patient_name or ""
    ds.StudyInstanceUID = query.study_uid or ""
    ds.StudyDate = query.study_date or ""
    ds.StudyTime = ""
    ds.AccessionNumber = query.accession_number or ""
    ds.StudyDescription = ""
    if level == "study":
        ds.ModalitiesInStudy = query.modality or ""
        ds.NumberOfStudyRelatedSeries = ""
        ds.NumberOfStudyRelatedInstances = ""
    else:
        ds.SeriesInstanceUID = query.series_uid or ""
        ds.Modality = query.modality or ""
        ds.BodyPartExamined = ""
        ds.SeriesNumber = ""
        ds.SeriesDescription = ""
        ds.NumberOfSeriesRelatedInstances = ""
    if level == "image":
        ds.SOPInstanceUID = ""
        ds.SOPClassUID = ""
        ds.InstanceNumber = ""
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _count(ds: Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword)
    return int(text) if text.isdigit() else None


def result(ds: Dataset, level: str) -> dict[str, Any]:
    """One answer as a plain dict (no pydicom objects kept)."""
    row: dict[str, Any] = {
        "level": level, "study_uid": _text(ds, "StudyInstanceUID"), "study_date": _text(ds, "StudyDate"),
        "study_time": _text(ds, "StudyTime"), "patient_id": _text(ds, "PatientID"),
        "issuer": _text(ds, "IssuerOfPatientID"), "patient_name": _text(ds, "PatientName"),
        "accession_number": _text(ds, "AccessionNumber"), "study_description": _text(ds, "StudyDescription"),
    }
    if level == "study":
        row |= {"modalities": _text(ds, "ModalitiesInStudy"), "series": _count(ds, "NumberOfStudyRelatedSeries"),
                "instances": _count(ds, "NumberOfStudyRelatedInstances")}
    else:
        row |= {"series_uid": _text(ds, "SeriesInstanceUID"), "modality": _text(ds, "Modality"),
                "body_part": _text(ds, "BodyPartExamined"),
                "series_number": _text(ds, "SeriesNumber"), "series_description": _text(ds, "SeriesDescription"),
                "instances": _count(ds, "NumberOfSeriesRelatedInstances")}
    if level == "image":
        row |= {"sop_instance_uid": _text(ds, "SOPInstanceUID"), "sop_class_uid": _text(ds, "SOPClassUID"),
                "instance_number": _text(ds, "InstanceNumber")}
    return row


def _keep(row: dict[str, Any], query: Query) -> bool:
    """An answer the query asked for: same issuer when one was given (never merge two)."""
    return query.issuer is None or row["issuer"] == query.issuer


def find(archive: Archive, settings: ClientSettings, query: Query, *, level: str = "study",
         page_size: int = PAGE_SIZE, limit: int = MAX_RESULTS) -> Iterator[list[dict[str, Any]]]:
    """Study Root C-FIND: pages (:class:`Page`) of at most ``page_size`` results; past
    ``limit`` results the find is cancelled and the last page is ``truncated``."""
    archive.require("find")
    if page_size < 1 or limit < 1:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, 'Arguments "page_size" and "limit" must be at least 1.')
    request = identifier(query, level)
    context = build_context(StudyRootQueryRetrieveInformationModelFind)
    with association(archive, settings, [context]) as assoc:
        assoc.dul._run_loop_delay = DUL_POLL_S  # one wake-up per response: the node's shorter poll
        responses = assoc.send_c_find(request, StudyRootQueryRetrieveInformationModelFind)
        page = Page()
        seen = 0
        for status, answer in responses:
            if "Status" not in status:
                raise dimse_lost(archive, settings, "C-FIND", received=seen)
            code = int(status.Status)
            if code in PENDING:
                if answer is None:
                    continue
                row = result(answer, level)
                if not _keep(row, query):
                    continue
                seen += 1
                page.append(row)
                if seen >= limit:
                    assoc.send_c_cancel(1, query_model=StudyRootQueryRetrieveInformationModelFind)
                    page.truncated = True
                    _drain(responses)
                    break
                if len(page) >= page_size:
                    yield page
                    page = Page()
            elif code in (0x0000, CANCELLED):
                break
            else:
                raise MedVisionError(ErrorCode.PACS_REFUSED, f"archive {archive.label} answered C-FIND with"
                                     f" 0x{code:04X}", archive=archive.label, status=f"0x{code:04X}")
        if page or page.truncated:
            yield page


def _drain(responses: Iterator[Any]) -> None:
    """Read what the archive still sends after a C-CANCEL (its final response), keeping nothing."""
    for status, _answer in responses:
        if "Status" not in status or int(status.Status) not in PENDING:
            return


class Page(list):
    """A page of results; ``truncated`` on the last one when ``limit`` cut the answer."""

    truncated: bool = False


def find_all(archive: Archive, settings: ClientSettings, query: Query, *, level: str = "study",
             limit: int = MAX_RESULTS) -> list[dict[str, Any]]:
    """Every result in one list (for small answers: a study's instances)."""
    return [row for page in find(archive, settings, query, level=level, limit=limit) for row in page]


# -- QIDO-RS ---------------------------------------------------------------------------------
def dicomweb_client(archive: Archive, timeout_s: float = 30.0) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for the archive's DICOMweb base URL."""
    if not archive.dicomweb_url:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"archive {archive.label} has no DICOMweb URL"
                             " (dicomweb_url in pacs.toml)", archive=archive.label)
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if archive.ca_file:
        session.verify = str(archive.ca_file)
    return DICOMwebClient(url=archive.dicomweb_url, session=session, timeout=timeout_s)


def web_failure(archive: Archive, exc: Exception, what: str) -> MedVisionError:
    """A DICOMweb request's failure as a coded error (unreachable, timeout or refused)."""
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        code = ErrorCode.PACS_TIMEOUT
    elif isinstance(exc, requests.exceptions.ConnectionError):
        code = ErrorCode.PACS_UNREACHABLE
    else:
        code = ErrorCode.PACS_REFUSED
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return MedVisionError(code, f"archive {archive.label}: {what} failed ({type(exc).__name__}"
                          f"{f', HTTP {status}' if status else ''})", archive=archive.label, http_status=status)


def _search_filters(query: Query, level: str) -> dict[str, str]:
    keys = {"PatientID": query.patient_id, "IssuerOfPatientID": query.issuer, "PatientName": query.patient_name,
            "StudyDate": query.study_date, "AccessionNumber": query.accession_number,
            "StudyInstanceUID": query.study_uid,
            "ModalitiesInStudy" if level == "study" else "Modality": query.modality}
    return {key: value for key, value in keys.items() if value}


def qido(archive: Archive, query: Query, *, level: str = "study", page_size: int = PAGE_SIZE,
         limit: int = MAX_RESULTS) -> Iterator[list[dict[str, Any]]]:
    """QIDO-RS search, one request per page (``offset``/``limit``), the same dicts as :func:`find`."""
    import requests

    if level not in ("study", "series"):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, 'Argument "level": study or series for QIDO-RS.')
    client = dicomweb_client(archive)
    filters = _search_filters(query, level)
    wanted = ["IssuerOfPatientID", "PatientName", "StudyDescription", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "SeriesDescription", "SeriesNumber",
              "NumberOfSeriesRelatedInstances"]
    seen, offset = 0, 0
    while seen < limit:
        size = min(page_size, limit - seen)
        try:
            if level == "study":
                answers = client.search_for_studies(search_filters=filters, offset=offset, limit=size, fields=wanted)
            else:
                answers = client.search_for_series(study_instance_uid=query.study_uid, search_filters=filters,
                                                   offset=offset, limit=size, fields=wanted)
        except requests.exceptions.RequestException as exc:
            raise web_failure(archive, exc, "QIDO-RS search") from None
        offset += len(answers)
        page = Page(row for row in (result(Dataset.from_json(a), level) for a in answers) if _keep(row, query))
        seen += len(page)
        if page:
            yield page
        if len(answers) < size:
            return


def qido_ping(archive: Archive) -> dict:
    """One QIDO-RS search asking for a single study: the DICOMweb side answers."""
    import time

    import requests

    client = dicomweb_client(archive)
    started = time.perf_counter()
    try:
        client.search_for_studies(limit=1)
    except requests.exceptions.RequestException as exc:
        raise web_failure(archive, exc, "QIDO-RS ping") from None
    return {"archive": archive.label, "dicomweb_url": archive.dicomweb_url,
            "ms": round((time.perf_counter() - started) * 1000, 1)}
