"""Associations with a remote archive: timeouts, TLS, bounded retries, coded failures.

:func:`associate` tries up to ``settings.retries`` times, waiting ``backoff_s`` and then
twice as long each time, while the archive is down (connection refused, no route:
``PACS_UNREACHABLE``) or accepts the connection but does not answer within the ACSE
timeout (``PACS_TIMEOUT``). An A-ASSOCIATE-RJ is an answer, not a fault: a permanent
one is raised at once as ``PACS_REFUSED`` with the archive's reason; a transient one is
retried like a fault. Whether the TCP connection opened at all is pynetdicom's own
``EVT_CONN_OPEN``, not a guess from the time spent.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from dicom_node.pacs.config import Archive, ClientSettings
from engine.errors import ErrorCode, MedVisionError

log = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ reasons (PS3.8 9.3.4), by (source, diagnostic), for the error message.
_REJECT_REASONS = {
    (1, 1): "no reason given", (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised", (1, 7): "called AE title not recognised",
    (2, 1): "no reason given", (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion", (3, 2): "local limit exceeded",
}


def tls_context(archive: Archive) -> ssl.SSLContext | None:
    """Client TLS (1.2+) checking the archive's certificate (``ca_file`` or the system CAs)."""
    if not archive.tls:
        return None
    context = ssl.create_default_context(cafile=str(archive.ca_file) if archive.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def new_ae(settings: ClientSettings) -> AE:
    """An application entity with our calling AE and the configured timeouts."""
    ae = AE(ae_title=settings.calling_ae)
    ae.acse_timeout = settings.acse_timeout_s
    ae.connection_timeout = settings.acse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.maximum_pdu_size = settings.max_pdu
    return ae


def associate(archive: Archive, settings: ClientSettings, contexts: Sequence[PresentationContext], *,
              roles: Sequence[Any] = (), handlers: Sequence[tuple[Any, Any]] = (),
              cancel: threading.Event | None = None, sleep: Any = time.sleep) -> Any:
    """An established association with ``archive`` proposing ``contexts``, or a coded error."""
    ae = new_ae(settings)
    ae.requested_contexts = list(contexts)
    tls = tls_context(archive)
    delay = settings.backoff_s
    failure: MedVisionError | None = None
    for attempt in range(1, settings.retries + 1):
        if cancel is not None and cancel.is_set():
            break
        opened = threading.Event()
        bindings = [*handlers, (evt.EVT_CONN_OPEN, lambda event, opened=opened: opened.set())]
        assoc = ae.associate(archive.host, archive.port, ae_title=archive.ae_title, ext_neg=list(roles),
                             evt_handlers=bindings,
                             tls_args=(tls, archive.host) if tls is not None else None)
        if assoc.is_established:
            return assoc
        failure = _failure(archive, settings, assoc, opened.is_set(), attempt)
        if failure.code is ErrorCode.PACS_REFUSED and not failure.details.get("transient"):
            raise failure
        log.info("archive %s: attempt %d of %d failed (%s)", archive.label, attempt, settings.retries,
                 failure.code.value)
        if attempt < settings.retries:
            sleep(delay)
            delay *= 2
    if failure is None:
        raise MedVisionError(ErrorCode.PACS_UNREACHABLE, f"archive {archive.label}: cancelled before connecting",
                             archive=archive.label, attempts=0)
    raise failure


def _failure(archive: Archive, settings: ClientSettings, assoc: Any, connected: bool,
             attempt: int) -> MedVisionError:
    where = archive.label
    if assoc.is_rejected:
        acse = assoc.acceptor.primitive
        result, source, diagnostic = (getattr(acse, name, None) for name in ("result", "result_source", "diagnostic"))
        reason = _REJECT_REASONS.get((source, getattr(diagnostic, "value", diagnostic)), "no reason given")
        transient = result == 0x02
        return MedVisionError(ErrorCode.PACS_REFUSED,
                              f"archive {where} rejected the association ({'transient' if transient else 'permanent'}:"
                              f" {reason}); check that it knows the calling AE {settings.calling_ae!r}",
                              archive=where, reason=reason, transient=transient, attempts=attempt)
    if not connected:
        return MedVisionError(ErrorCode.PACS_UNREACHABLE,
                              f"archive {where} is unreachable (no connection) after {attempt} attempt(s)",
                              archive=where, attempts=attempt)
    return MedVisionError(ErrorCode.PACS_TIMEOUT,
                          f"archive {where} accepted the connection but did not answer within"
                          f" {settings.acse_timeout_s:g} s, {attempt} attempt(s)",
                          archive=where, attempts=attempt, timeout_s=settings.acse_timeout_s)


@contextmanager
def association(archive: Archive, settings: ClientSettings, contexts: Sequence[PresentationContext],
                **kwargs: Any) -> Iterator[Any]:
    """:func:`associate`, released (or aborted, after an error) at the end."""
    assoc = associate(archive, settings, contexts, **kwargs)
    try:
        yield assoc
    except BaseException:
        assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()


def dimse_lost(archive: Archive, settings: ClientSettings, what: str, **details: Any) -> MedVisionError:
    """The archive stopped answering mid-operation (DIMSE timeout, abort, closed connection)."""
    return MedVisionError(ErrorCode.PACS_TIMEOUT,
                          f"archive {archive.label} stopped answering during {what} (no response within"
                          f" {settings.dimse_timeout_s:g} s, or the association was aborted; an archive that does"
                          f" not know the calling AE {settings.calling_ae!r} may drop the request)",
                          archive=archive.label, **details)


def echo(archive: Archive, settings: ClientSettings) -> dict:
    """C-ECHO: the round trip in ms, or a coded error."""
    from pynetdicom.presentation import build_context

    started = time.perf_counter()
    with association(archive, settings, [build_context(Verification)]) as assoc:
        status = assoc.send_c_echo()
    if "Status" not in status:
        raise dimse_lost(archive, settings, "C-ECHO")
    if status.Status != 0x0000:
        raise MedVisionError(ErrorCode.PACS_REFUSED, f"archive {archive.label} answered C-ECHO with"
                             f" 0x{status.Status:04X}", archive=archive.label, status=f"0x{status.Status:04X}")
    return {"archive": archive.label, "status": "0x0000", "ms": round((time.perf_counter() - started) * 1000, 1)}
