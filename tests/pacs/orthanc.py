"""A real Orthanc for the tests: generated configuration, a subprocess on free localhost ports.

``Orthanc(folder).start()`` writes ``orthanc.json`` (storage and index in ``folder``, the
DICOM AE, DICOM and HTTP ports, no remote access, no authentication, the DICOMweb plugin
from the Debian package ``orthanc-dicomweb``), starts ``Orthanc orthanc.json`` and waits
for its REST ``/system``. Instances are loaded with ``POST /instances``; known modalities
(our node, our client) are set with ``PUT /modalities/{name}``. ``stop()`` terminates it
and waits; ``kill()`` is a crash (SIGKILL) that a later ``start()`` on the same folder
recovers from.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ORTHANC = "Orthanc"
#: The DICOMweb plugin as the Debian package installs it (``dpkg -L orthanc-dicomweb``).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """One Orthanc server over ``folder`` (its storage, index, configuration and log)."""

    def __init__(self, folder: Path, *, modalities: dict[str, dict] | None = None, **overrides: Any) -> None:
        self.folder = folder
        self.dicom_port, self.http_port = free_port(), free_port()
        self.modalities = dict(modalities or {})
        self.overrides = overrides
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def address(self) -> str:
        """``AE@HOST:PORT`` as ``medvision pacs --pacs`` takes it."""
        return f"{AE_TITLE}@127.0.0.1:{self.dicom_port}"

    def configuration(self) -> dict[str, Any]:
        config = {
            "Name": "medvision-tests",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": AE_TITLE,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "StorageCompression": False,
            "SaveJobs": False,
            "HttpThreadsCount": 8,
            "DicomThreadsCount": 4,
            "DicomScuTimeout": 10,
            "DicomAssociationCloseDelay": 0,
            "DicomModalities": {name: dict(entry) for name, entry in self.modalities.items()},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full"},
        }
        config.update(self.overrides)
        return config

    def start(self, timeout: float = 30.0) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(self.configuration(), indent=2))
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.folder, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        path = self.folder / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """A crash: SIGKILL, no clean shutdown."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    # -- REST ------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, *,
                content_type: str = "application/json") -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read()
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, files: Iterable[Path | bytes]) -> list[str]:
        """``POST /instances`` each file (Part 10 bytes); the Orthanc instance ids."""
        ids = []
        for item in files:
            data = item if isinstance(item, bytes) else Path(item).read_bytes()
            ids.append(self.request("POST", "/instances", data, content_type="application/dicom")["ID"])
        return ids

    def set_modality(self, name: str, ae_title: str, port: int, host: str = "127.0.0.1") -> None:
        """Make ``ae_title`` a known modality (C-MOVE destination, C-FIND/C-GET caller)."""
        entry = {"AET": ae_title, "Host": host, "Port": port}
        self.request("PUT", f"/modalities/{name}", json.dumps(entry).encode())

    def remove_modality(self, name: str) -> None:
        self.request("DELETE", f"/modalities/{name}")

    def study_instances(self, study_uid: str) -> list[dict]:
        """The instances Orthanc holds for a Study Instance UID (their main DICOM tags)."""
        found = self.request("POST", "/tools/find", json.dumps(
            {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).encode())
        if not found:
            return []
        return self.get(f"/studies/{found[0]}/instances")

    def instance_file(self, orthanc_id: str) -> bytes:
        request = urllib.request.Request(f"{self.url}/instances/{orthanc_id}/file")
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    def clear(self) -> None:
        for patient in self.get("/patients"):
            self.request("DELETE", f"/patients/{patient}")

