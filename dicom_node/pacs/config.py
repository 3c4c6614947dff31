"""Remote archives (PACS): typed settings from a TOML file, or ``AE@HOST:PORT`` on the spot.

Example ``pacs.toml`` (``--config FILE``, else ``MEDVISION_PACS_CONFIG``, else
``HOME/pacs.toml``)::

    calling_ae = "MEDVISION"        # our AE title when we call an archive
    retries = 3                     # attempts to connect (refused or no answer)
    backoff_s = 0.5                 # first wait between attempts; doubles each time
    [[archive]]
    name = "main"
    ae_title = "ORTHANC"
    host = "10.0.0.5"
    port = 4242
    services = ["find", "get", "move"]      # which of C-FIND / C-GET / C-MOVE it serves
    dicomweb_url = "https://10.0.0.5/dicom-web"   # optional: QIDO-RS / WADO-RS / STOW-RS
    tls = true                              # DICOM TLS (and https certificate checks)
    ca_file = "pacs-ca.pem"                 # optional: the CA that signed the archive's certificate
    priors = true                           # the node looks here for a received study's priors (C-FIND + C-GET)
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dicom_node.config import AE_TITLE
from engine.errors import ErrorCode, MedVisionError

#: The services an archive may serve; an ``AE@HOST:PORT`` given on the spot serves all.
SERVICES = ("find", "get", "move", "store")
#: Seconds to connect and get an A-ASSOCIATE answer; to get any PDU; to get each DIMSE message.
ACSE_TIMEOUT_S = 10.0
NETWORK_TIMEOUT_S = 30.0
DIMSE_TIMEOUT_S = 30.0
#: Connection attempts (refused, no answer) and the first wait between them (doubles).
RETRIES = 3
BACKOFF_S = 0.5
MAX_PDU = 262_144
CONFIG_ENV = "MEDVISION_PACS_CONFIG"

_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_ADDRESS = re.compile(r"^([^@]{1,16})@(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class Archive:
    """One remote archive: where it is, what it serves, how we reach it."""

    ae_title: str
    host: str
    port: int
    name: str = ""
    services: frozenset[str] = frozenset(SERVICES)
    dicomweb_url: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    priors: bool = False

    def __post_init__(self) -> None:
        if not _AE.match(self.ae_title) or not self.ae_title.strip():
            _bad("ae_title", f"{self.ae_title!r} is not a valid AE title")
        if not 1 <= self.port <= 65535:
            _bad("port", f"{self.port} is not a TCP port")
        unknown = set(self.services) - set(SERVICES)
        if unknown:
            _bad("services", f"unknown {', '.join(sorted(unknown))}; known: {', '.join(SERVICES)}")

    @property
    def label(self) -> str:
        """How messages name it: ``AE@host:port`` (and its configured name)."""
        where = f"{self.ae_title}@{self.host}:{self.port}"
        return f"{self.name} ({where})" if self.name else where

    def require(self, service: str) -> None:
        """Refuse a service the archive is not configured to serve."""
        if service not in self.services:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"archive {self.label} is not configured for {service}"
                                 f" (it serves {', '.join(sorted(self.services)) or 'nothing'})",
                                 archive=self.label, service=service)


@dataclass(frozen=True)
class ClientSettings:
    """How we call archives, and the archives we know by name."""

    calling_ae: str = AE_TITLE
    acse_timeout_s: float = ACSE_TIMEOUT_S
    network_timeout_s: float = NETWORK_TIMEOUT_S
    dimse_timeout_s: float = DIMSE_TIMEOUT_S
    retries: int = RETRIES
    backoff_s: float = BACKOFF_S
    max_pdu: int = MAX_PDU
    archives: tuple[Archive, ...] = field(default=())

    def __post_init__(self) -> None:
        if not _AE.match(self.calling_ae) or not self.calling_ae.strip():
            _bad("calling_ae", f"{self.calling_ae!r} is not a valid AE title")
        if self.retries < 1:
            _bad("retries", "must be at least 1")

    def archive(self, spec: str) -> Archive:
        """A configured archive by name, else ``AE@HOST:PORT``."""
        for archive in self.archives:
            if archive.name == spec:
                return archive
        return parse_address(spec)


def parse_address(spec: str) -> Archive:
    """``AE@HOST:PORT`` (an IPv6 host in brackets) as an archive serving every service."""
    match = _ADDRESS.match(spec.strip())
    if not match:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                             f'Argument "pacs": {spec!r} is neither a configured archive nor AE@HOST:PORT',
                             argument="pacs")
    return Archive(ae_title=match[1], host=match[2].strip("[]"), port=int(match[3]))


def _bad(name: str, why: str) -> None:
    raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f'Argument "{name}": {why}.', argument=name)


def load(path: Path | None = None, home: Path | None = None, **overrides: Any) -> ClientSettings:
    """Defaults, then the file (``path``, ``MEDVISION_PACS_CONFIG`` or ``HOME/pacs.toml``
    when it exists), then ``overrides`` (None values ignored)."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    if path is None and home is not None and (Path(home) / "pacs.toml").is_file():
        path = Path(home) / "pacs.toml"
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"PACS settings file {Path(path).name} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"PACS settings file {Path(path).name}: {exc}") from None
        archives = []
        for entry in data.pop("archive", []):
            entry = dict(entry)
            if "services" in entry:
                entry["services"] = frozenset(entry["services"])
            if entry.get("ca_file"):
                entry["ca_file"] = (Path(path).parent / entry["ca_file"]).resolve()
            try:
                archives.append(Archive(**entry))
            except TypeError as exc:
                _bad("archive", str(exc))
        values["archives"] = tuple(archives)
        values |= data
    values |= {k: v for k, v in overrides.items() if v is not None}
    try:
        return replace(ClientSettings(), **values)
    except TypeError as exc:
        _bad("pacs settings", str(exc))
        raise  # unreachable: _bad raises
