"""Send our results (the SR, SEG and secondary capture ``medvision export`` writes) to an archive.

C-STORE proposes one context per SOP class among the files, in each file's own transfer
syntax (and Explicit VR Little Endian), over one association; STOW-RS posts them to the
archive's DICOMweb ``/studies``. Each file's answer is reported; nothing is retried here
(the node's outbox is the retrying road for results sent on arrival).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context

from dicom_node.pacs.config import Archive, ClientSettings
from dicom_node.pacs.connection import association, dimse_lost
from dicom_node.pacs.query import dicomweb_client, web_failure
from engine.errors import ErrorCode, MedVisionError

#: pynetdicom proposes at most 128 presentation contexts in one association.
MAX_CONTEXTS = 128


def _read(path: str | Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError:
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"{Path(path).name}: no such file") from None
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise MedVisionError(ErrorCode.UNSUPPORTED_FORMAT, f"{Path(path).name} is not a DICOM file"
                             f" ({type(exc).__name__})") from None


def send_files(archive: Archive, settings: ClientSettings, files: Sequence[str | Path], *,
               web: bool = False) -> dict[str, Any]:
    """C-STORE (or STOW-RS) each file; ``{"instances": [{file, sop_instance_uid, status}], "failed": n}``."""
    archive.require("store")
    datasets = [(Path(path), _read(path)) for path in files]  # every file checked before anything is sent
    rows = []
    if web:
        import requests

        client = dicomweb_client(archive)
        try:
            client.store_instances([ds for _path, ds in datasets])
        except requests.exceptions.RequestException as exc:
            raise web_failure(archive, exc, "STOW-RS") from None
        rows = [{"file": path.name, "sop_instance_uid": str(ds.SOPInstanceUID), "status": "stored"}
                for path, ds in datasets]
    else:
        pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _path, ds in datasets})
        if len(pairs) > MAX_CONTEXTS:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"more than {MAX_CONTEXTS} kinds of instance in one send")
        contexts = [build_context(cls, list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian])))
                    for cls, syntax in pairs]
        with association(archive, settings, contexts) as assoc:
            for path, ds in datasets:
                status = assoc.send_c_store(ds)
                if "Status" not in status:
                    raise dimse_lost(archive, settings, "C-STORE", sent=len(rows))
                rows.append({"file": path.name, "sop_instance_uid": str(ds.SOPInstanceUID),
                             "status": f"0x{int(status.Status):04X}"})
    failed = sum(row["status"] not in ("stored", "0x0000") and not row["status"].startswith("0xB") for row in rows)
    return {"instances": rows, "failed": failed}
