"""Node settings: typed, documented defaults, a TOML file and CLI flags on top (flags win).

Example ``dicom-node.toml``::

    ae_title = "MEDVISION"
    port = 11112
    bind_address = "127.0.0.1"
    allowed_callers = ["CT01", "PACS@10.0.0.5"]   # AE, or AE@host to pin the peer address
    require_called_ae = true
    max_associations = 8
    duplicate_policy = "keep_first"                  # or "keep_newest", "refuse"
    [tls]
    certificate = "node.pem"
    key = "node.key"
    client_ca = "clients.pem"                        # set: a client certificate is required
    [destination]                                    # results go back here (optional)
    ae_title = "PACS"
    host = "10.0.0.5"
    port = 104
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.errors import ErrorCode, MedVisionError
from engine.store.dicom import DUPLICATE_POLICIES, KEEP_FIRST

#: Our AE title (up to 16 characters of the DICOM AE repertoire).
AE_TITLE = "MEDVISION"
#: TCP port; 11112 is the registered non-privileged DICOM port.
PORT = 11112
#: Listen on loopback only unless told otherwise: a node must be opened deliberately.
BIND_ADDRESS = "127.0.0.1"
#: Simultaneous accepted associations; the next one gets a transient A-ASSOCIATE-RJ
#: ("local limit exceeded"). Peers still negotiating or being refused take no slot.
MAX_ASSOCIATIONS = 8
#: Seconds to wait for an A-ASSOCIATE-RQ / any PDU / a DIMSE message before aborting.
ACSE_TIMEOUT_S = 30.0
NETWORK_TIMEOUT_S = 60.0
DIMSE_TIMEOUT_S = 60.0
#: Largest P-DATA PDU we accept; big PDUs cut per-fragment overhead (DCMTK sends <= 128 kB).
MAX_PDU = 262_144
#: Concurrent analysis jobs, and how often a job is retried after a crash or error.
WORKERS = 1
JOB_MAX_ATTEMPTS = 3
#: Outbox C-STORE attempts and the first retry delay (doubles each time, capped at 1 h).
OUTBOX_MAX_ATTEMPTS = 8
OUTBOX_BACKOFF_S = 5.0

#: A resend of a stored SOP Instance UID with *other content* (a corrected image, or a
#: modality reusing UIDs) is recorded as a ``dicom.duplicate`` event (shown by the desktop
#: and ``dicom-node status``) and settled by the policy; an identical resend (a lost
#: response, a retried batch) is always answered 0x0000 and stored nothing new.
#:
#: - ``keep_first`` (default): the copy held stays, the new one is dropped, 0x0000 (the
#:   peer's data is safely held, so it must not retry forever).
#: - ``keep_newest``: the new one is stored as a new image in the same session, its
#:   metadata ``{"supersedes": <image id>}`` naming the one it replaces, which is kept
#:   (analysed again when its type is analysed on arrival), 0x0000.
#: - ``refuse``: nothing stored, answered 0x0111 "Duplicate SOP Instance" (a Failure,
#:   PS3.7 Annex C general status, which every DIMSE response may carry): PS3.4's C-STORE
#:   specific codes do not fit (A7xx is out of resources, A9xx a data set unlike its SOP
#:   class, Cxxx an unreadable one), and a Warning (B000, B006, B007) would tell the peer
#:   the instance was stored, which it was not.
DUPLICATE_POLICY = KEEP_FIRST
#: Seconds an acknowledged instance may wait for its database rows: they are written
#: many at a time (group commit), at the latest when its association is released. Its
#: blob, durable before the acknowledgement, is the record meanwhile (a crash loses
#: nothing: it is indexed when the store is next opened).
INDEX_INTERVAL_S = 0.2
#: A CT/MR series is complete once no new instance of it arrived for this many seconds;
#: then one volume job (classical segmentation, structure volumes) is queued for it
#: (:mod:`dicom_node.series`). ``MEDVISION_SERIES_QUIET_S`` overrides the default.
SERIES_QUIET_S = 10.0
SERIES_QUIET_ENV = "MEDVISION_SERIES_QUIET_S"

_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # no backslash, no control characters


@dataclass(frozen=True)
class Destination:
    """Where results (SR + burned-in Secondary Capture) are sent."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class NodeConfig:
    """Everything the node needs to run; build with :func:`load`."""

    ae_title: str = AE_TITLE
    port: int = PORT
    bind_address: str = BIND_ADDRESS
    allowed_callers: tuple[str, ...] = ()  # empty: any calling AE
    require_called_ae: bool = False
    max_associations: int = MAX_ASSOCIATIONS
    acse_timeout_s: float = ACSE_TIMEOUT_S
    network_timeout_s: float = NETWORK_TIMEOUT_S
    dimse_timeout_s: float = DIMSE_TIMEOUT_S
    max_pdu: int = MAX_PDU
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    workers: int = WORKERS
    job_max_attempts: int = JOB_MAX_ATTEMPTS
    analyze: bool = True
    duplicate_policy: str = DUPLICATE_POLICY
    index_interval_s: float = INDEX_INTERVAL_S
    series_quiet_s: float = SERIES_QUIET_S
    destination: Destination | None = None
    outbox_max_attempts: int = OUTBOX_MAX_ATTEMPTS
    outbox_backoff_s: float = OUTBOX_BACKOFF_S
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("ae_title", *(["destination"] if self.destination else [])):
            title = self.ae_title if name == "ae_title" else self.destination.ae_title
            if not _AE.match(title) or not title.strip():
                _bad(name, f"{title!r} is not a valid AE title")
        for entry in self.allowed_callers:
            if not _AE.match(entry.split("@", 1)[0]):
                _bad("allowed_callers", f"{entry!r} is not AE or AE@host")
        if not 0 <= self.port <= 65535:
            _bad("port", "must be 0..65535")
        if self.max_associations < 1 or self.workers < 1:
            _bad("max_associations/workers", "must be at least 1")
        if not self.index_interval_s >= 0:
            _bad("index_interval_s", "must be 0 or more seconds")
        if not self.series_quiet_s > 0:
            _bad("series_quiet_s", "must be more than 0 seconds")
        if self.duplicate_policy not in DUPLICATE_POLICIES:
            _bad("duplicate_policy", f"must be one of {', '.join(DUPLICATE_POLICIES)}")
        if (self.tls_certificate is None) != (self.tls_key is None):
            _bad("tls", "certificate and key go together")

    def caller_allowed(self, calling_ae: str, host: str) -> bool:
        """The allow list: empty allows all; ``AE`` any host; ``AE@host`` only that host."""
        if not self.allowed_callers:
            return True
        calling_ae = calling_ae.strip()
        return any(entry == calling_ae or entry == f"{calling_ae}@{host}" for entry in self.allowed_callers)


def _bad(name: str, why: str) -> None:
    raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f'Argument "{name}": {why}.')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve flags; every one defaults to None so the file's value stands."""
    add = parser.add_argument
    add("--config", type=Path, help="TOML settings file")
    add("--ae-title")
    add("--port", type=int)
    add("--bind", dest="bind_address", help="address to listen on (default 127.0.0.1)")
    add("--allow", dest="allowed_callers", action="append", help="allowed calling AE (AE or AE@host); repeat")
    add("--require-called-ae", action="store_true", default=None)
    add("--max-associations", type=int)
    add("--acse-timeout", dest="acse_timeout_s", type=float)
    add("--network-timeout", dest="network_timeout_s", type=float)
    add("--dimse-timeout", dest="dimse_timeout_s", type=float)
    add("--max-pdu", type=int)
    add("--tls-cert", dest="tls_certificate", type=Path)
    add("--tls-key", dest="tls_key", type=Path)
    add("--tls-client-ca", dest="tls_client_ca", type=Path, help="require client certificates signed by it")
    add("--workers", type=int)
    add("--no-analyze", dest="analyze", action="store_false", default=None)
    add("--duplicate-policy", choices=DUPLICATE_POLICIES,
        help="a resend of a stored instance with other content: keep_first (default), keep_newest, refuse")
    add("--index-interval", dest="index_interval_s", type=float,
        help="seconds an acknowledged instance may wait for its database rows (default 0.2)")
    add("--series-quiet", dest="series_quiet_s", type=float,
        help=f"seconds without a new instance after which a CT/MR series is complete and its volume job"
             f" queued (default {SERIES_QUIET_S:g}, or {SERIES_QUIET_ENV})")
    add("--destination", help="send results to AE@host:port")


def load(args: argparse.Namespace | None = None, path: Path | None = None) -> NodeConfig:
    """Defaults, then the environment (``MEDVISION_SERIES_QUIET_S``), then the TOML file
    (``--config`` or ``path``), then the flags."""
    values: dict[str, Any] = {}
    if os.environ.get(SERIES_QUIET_ENV):
        try:
            values["series_quiet_s"] = float(os.environ[SERIES_QUIET_ENV])
        except ValueError:
            _bad(SERIES_QUIET_ENV, "must be a number of seconds")
    path = getattr(args, "config", None) or path
    if path is not None:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
        tls = data.pop("tls", {})
        values |= {f"tls_{k}": Path(v) for k, v in tls.items()}
        if "destination" in data:
            values["destination"] = Destination(**data.pop("destination"))
        values |= data
    names = {f.name for f in fields(NodeConfig)}
    for name, value in vars(args or argparse.Namespace()).items():
        if name == "destination" and value:
            match = re.fullmatch(r"(.+)@(.+):(\d+)", value)
            if not match:
                _bad("destination", "expected AE@host:port")
            values["destination"] = Destination(match[1], match[2], int(match[3]))
        elif name in names and value is not None:
            values[name] = value
    unknown = set(values) - names
    if unknown:
        _bad(", ".join(sorted(unknown)), "unknown setting")
    if "allowed_callers" in values:
        values["allowed_callers"] = tuple(values["allowed_callers"])
    return replace(NodeConfig(), **values)
