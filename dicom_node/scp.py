"""The DICOM node: a C-ECHO / C-STORE SCP over the engine's store (thin front-end).

``Node(config, engine).start()`` binds the server (non-blocking), starts the analysis
workers, the series watcher (:mod:`dicom_node.series`), the outbox sender and a heartbeat (which also runs the retention policy's cleanup); ``stop()`` undoes it in reverse order.
:func:`main` is ``python -m dicom_node serve``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from dicom_node import spool
from dicom_node.config import NodeConfig, add_arguments, load
from dicom_node.handlers import TRANSFER_SYNTAXES, Handlers
from dicom_node.ingest import Ingestor, reconcile
from dicom_node.outbox import OutboxSender
from dicom_node.pacs.priors import prior_fetcher
from dicom_node.series import SeriesWatcher
from dicom_node.status import HEARTBEAT_S, HEARTBEAT_STALE_S
from dicom_node.worker import AnalysisWorkers

log = logging.getLogger(__name__)

#: Connections allowed beyond ``max_associations`` for peers still negotiating or being
#: refused (each holds a thread until its A-ASSOCIATE-RQ arrives or the ACSE timeout
#: passes); they take no association slot (:class:`dicom_node.handlers.Handlers`).
PENDING_CONNECTIONS = 16
LISTEN_BACKLOG = 256
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _DeferredHandshake(ssl.SSLContext):
    """pynetdicom wraps accepted sockets on its accept thread; with the handshake
    deferred it happens on the association's own thread, on first read, under the
    network timeout, so a stalled TLS client cannot hold up other connections."""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def tls_context(config: NodeConfig) -> ssl.SSLContext | None:
    """Server TLS context (TLS 1.2+), requiring client certificates when a CA is set."""
    if config.tls_certificate is None:
        return None
    context = _DeferredHandshake(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_certificate, config.tls_key)
    if config.tls_client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(config.tls_client_ca)
    return context


class Node:
    """One running SCP with its workers; the engine (and its store) is the caller's."""

    def __init__(self, config: NodeConfig, engine: Any) -> None:
        self.config, self.engine = config, engine
        self.node_id = uuid.uuid4().hex[:12]
        self.ingestor = Ingestor(engine.store, analyze=config.analyze, job_max_attempts=config.job_max_attempts,
                                 limits=engine.settings.limits, index_interval_s=config.index_interval_s)
        self.handlers = Handlers(config, self.ingestor, self.node_id)
        self.priors = prior_fetcher(engine, self.ingestor)
        self.workers = AnalysisWorkers(engine, config, self.node_id, after_job=self.priors.submit)
        self.series = SeriesWatcher(engine.store, self.ingestor.db, quiet_s=config.series_quiet_s,
                                    max_attempts=config.job_max_attempts, wake_workers=self.workers.wake.set)
        if config.analyze:
            self.ingestor.on_indexed = self.series.note
        self.outbox = OutboxSender(engine.store, config)
        self.server: Any = None
        self._stopped = threading.Event()
        self._beat: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when the config says 0)."""
        return int(self.server.server_address[1])

    def start(self) -> Node:
        reconcile(self.engine.store)
        spool.install(self.engine.store.blobs)
        _config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(ae_title=self.config.ae_title)
        # The limit is the handlers' (accepted associations only); pynetdicom's own check,
        # which counts every connection's thread, is kept out of the way: _admit holds
        # connections to this many.
        ae.maximum_associations = self.config.max_associations + PENDING_CONNECTIONS
        ae.acse_timeout = self.config.acse_timeout_s
        ae.network_timeout = self.config.network_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.maximum_pdu_size = self.config.max_pdu
        # The contexts of each association are set from what its peer proposes
        # (handlers.on_requested); this one only makes start_server accept the AE.
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
        self.server = ae.start_server((self.config.bind_address, self.config.port), block=False,
                                      evt_handlers=self.handlers.bindings(), ssl_context=tls_context(self.config))
        self.server.verify_request = self._admit
        # socketserver listens with a backlog of 5 and pynetdicom runs gc.collect() on the
        # accept thread every 60 connections: a burst of connects then overflows the
        # backlog and peers wait a 1 s SYN retransmit. A deeper backlog absorbs the pause.
        self.server.socket.listen(LISTEN_BACKLOG)
        self.workers.start()
        self.series.start()
        self.priors.start()
        self.outbox.start()
        stale = datetime.now(UTC) - timedelta(seconds=HEARTBEAT_STALE_S)
        self._beat_once(dead_before=stale.isoformat(timespec="milliseconds"))
        self._beat = threading.Thread(target=self._heartbeat, name="dicom-heartbeat", daemon=True)
        self._beat.start()
        log.info("DICOM node %s listening as %s on %s:%d", self.node_id, self.config.ae_title,
                 self.config.bind_address, self.port)
        return self

    def _admit(self, request: Any, client_address: Any) -> bool:
        """Accept-thread gate: past ``connection_limit`` connections (associations and
        peers yet to send an A-ASSOCIATE-RQ) new ones are closed without a thread."""
        if len(self.server.active_associations) < self.config.max_associations + PENDING_CONNECTIONS:
            return True
        log.warning("connection from %s closed: %d connections open", client_address[0],
                    len(self.server.active_associations))
        return False

    def _beat_once(self, stopped: bool = False, dead_before: str | None = None) -> None:
        self.ingestor.db(self.ingestor.store.dicom_node_beat, self.node_id, pid=os.getpid(), ae_title=self.config.ae_title,
                         host=self.config.bind_address, port=self.port, stopped=stopped, dead_before=dead_before)

    def _heartbeat(self) -> None:
        """Beat every ``HEARTBEAT_S``; purge expired sessions at start and every cleanup interval."""
        next_purge = time.monotonic()
        while True:
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + self.engine.settings.retention.cleanup_interval_s
                self._purge_expired()
            if self._stopped.wait(HEARTBEAT_S):
                return
            try:
                self._beat_once()
            except Exception:  # noqa: BLE001 - a missed beat only shows in status
                log.exception("heartbeat failed")

    def _purge_expired(self) -> None:
        """The retention policy's periodic cleanup (``Engine.purge_expired_sessions``)."""
        try:
            purged = self.engine.purge_expired_sessions()["sessions"]
        except Exception:  # noqa: BLE001 - retried at the next interval; receiving goes on
            log.exception("purging expired sessions failed")
            return
        if purged:
            log.info("erased %d expired session(s)", len(purged))

    def stop(self) -> None:
        """Stop accepting, end associations, stop workers; the engine stays open."""
        if self.server is None or self._stopped.is_set():
            return
        self._stopped.set()
        self.server.shutdown()
        self.outbox.stop()
        self.series.stop()
        self.workers.stop()
        self.priors.stop()
        try:
            self._beat_once(stopped=True)
        finally:
            self.ingestor.close()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="data directory (default: MEDVISION_HOME)")
    common.add_argument("--model-pack", help="model pack directory (default: MEDVISION_MODEL_PACK)")
    common.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                        help="the node's logging on stderr (serve: INFO, status: WARNING); "
                             "pynetdicom's own lines only at DEBUG")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="INFO, or DEBUG when repeated (an explicit --log-level wins)")
    parser = argparse.ArgumentParser(prog="medvision dicom-node",
                                     description="DICOM C-ECHO/C-STORE node; serve is the default command")
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("serve", parents=[common], help="run the node (default)"))
    status = sub.add_parser("status", parents=[common], help="print the node's status from the store")
    status.add_argument("--json", action="store_true")
    return parser


def serve(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM."""
    from engine.api import Engine

    config = load(args)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with Engine(home=args.home, model_pack=args.model_pack, front_end="node") as engine, Node(config, engine) as node:
        log.info("ready on port %d", node.port)
        done.wait()
    return 0


def status(args: argparse.Namespace) -> int:
    import json

    from dicom_node.status import format_status, node_status
    from engine.config import Settings
    from engine.store import Store

    settings = Settings.from_env(args.home, args.model_pack)
    store = Store.open(settings.home, use_keyring=settings.use_keyring)
    try:
        report = node_status(store)
    finally:
        store.close()
    sys.stdout.write((json.dumps(report, indent=2) if args.json else format_status(report)) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m dicom_node [serve|status] ...``; serve is the default."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("serve", "status", "-h", "--help"):
        argv = ["serve", *argv]
    args = build_parser().parse_args(argv)
    verbose = {0: None, 1: "INFO"}.get(args.verbose, "DEBUG")
    configure_logging(args.log_level or verbose or ("WARNING" if args.command == "status" else "INFO"))
    return status(args) if args.command == "status" else serve(args)


def configure_logging(level: str) -> None:
    """The node's loggers at ``level`` on stderr, whatever the process configured before
    (``medvision``'s CLI quiets everything else to ERROR); pynetdicom's per-association
    and per-message lines only at DEBUG."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    numeric = logging.getLevelName(level)
    logging.getLogger("dicom_node").setLevel(numeric)
    logging.getLogger("pynetdicom").setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
