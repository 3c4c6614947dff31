"""Model packs: a directory with ``manifest.json`` and the model files it lists.

The runtime only reads packs; ``models/`` builds them. Every file is checked against
its manifest sha256 before first use in a process, and a missing or tampered file is
refused by name (``MODEL_INTEGRITY_ERROR``). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from engine.errors import ErrorCode, MedVisionError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_HASH_BLOCK = 1 << 22


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    """The manifest JSON schema (package data ``engine/schemas/manifest.schema.json``)."""
    text = (importlib.resources.files("engine.schemas") / "manifest.schema.json").read_text()
    return json.loads(text)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    """One model file of a pack, as its manifest describes it."""

    spec: dict[str, Any]

    @property
    def id(self) -> str:  # noqa: D102
        return self.spec["id"]

    @property
    def task(self) -> str:  # noqa: D102
        return self.spec["task"]

    @property
    def precision(self) -> str:  # noqa: D102
        return self.spec["precision"]

    @property
    def trained(self) -> bool:  # noqa: D102
        return bool(self.spec["trained"])

    @property
    def labels(self) -> list[str]:  # noqa: D102
        return list(self.spec.get("labels") or [])

    def describe(self) -> dict[str, Any]:
        """What every result cites about the model that made it."""
        return {
            "id": self.id,
            "task": self.task,
            "precision": self.precision,
            "sha256": self.spec["sha256"],
            "trained": self.trained,
            "version": self.spec.get("version"),
            "upstream": self.spec["upstream"].get("name"),
        }


class ModelPack:
    """A loaded, schema-checked manifest plus lazy per-file integrity checks."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.entries = [ModelEntry(m) for m in manifest["models"]]
        self._verified: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, root: Path) -> ModelPack:
        """Read and validate ``root/manifest.json``.

        Raises ``MODEL_NOT_FOUND`` when there is no pack, ``MODEL_LOAD_ERROR`` when the
        manifest is unreadable or does not follow the schema.
        """
        root = Path(root)
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise MedVisionError(
                ErrorCode.MODEL_NOT_FOUND,
                "no model pack found (set MEDVISION_MODEL_PACK, or build one with "
                "`medvision models build --dev`)",
                pack=root.name,
            )
        try:
            manifest = json.loads(manifest_path.read_text())
            jsonschema.validate(manifest, manifest_schema())
        except (OSError, ValueError) as exc:
            raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR, f"unreadable model pack manifest: {exc}") from exc
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            raise MedVisionError(
                ErrorCode.MODEL_LOAD_ERROR, f"invalid model pack manifest at {where}: {exc.message}"
            ) from exc
        ids = [m["id"] for m in manifest["models"]]
        if len(ids) != len(set(ids)):
            raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR, "duplicate model ids in the manifest")
        return cls(root, manifest)

    @property
    def name(self) -> str:  # noqa: D102
        return self.manifest["name"]

    @property
    def trained(self) -> bool:
        """True only when every model of the pack holds trained weights."""
        return all(e.trained for e in self.entries)

    def for_task(self, task: str, precision: str | None = None) -> ModelEntry | None:
        """The entry to use for ``task``: the requested precision, else the pack default."""
        candidates = [e for e in self.entries if e.task == task]
        if not candidates:
            return None
        if precision:
            for entry in candidates:
                if entry.precision == precision:
                    return entry
            log.warning("no %s variant for task %s; using the pack default", precision, task)
        for entry in candidates:
            if entry.spec.get("default"):
                return entry
        return candidates[0]

    def get(self, model_id: str) -> ModelEntry:
        """An entry by id (``MODEL_NOT_FOUND`` if the pack has no such model)."""
        for entry in self.entries:
            if entry.id == model_id:
                return entry
        raise MedVisionError(ErrorCode.MODEL_NOT_FOUND, f"the model pack has no model {model_id!r}")

    def path(self, entry: ModelEntry) -> Path:
        """The verified file of ``entry`` (sha256 checked once per process)."""
        path = self.root / entry.spec["file"]
        with self._lock:
            if entry.id in self._verified:
                return path
            self._check(entry, path)
            self._verified.add(entry.id)
        return path

    def _check(self, entry: ModelEntry, path: Path) -> None:
        name = entry.spec["file"]
        if not path.is_file():
            raise MedVisionError(
                ErrorCode.MODEL_INTEGRITY_ERROR, f"model file {name} is missing from the pack", file=name
            )
        actual = sha256_file(path)
        if actual != entry.spec["sha256"]:
            raise MedVisionError(
                ErrorCode.MODEL_INTEGRITY_ERROR,
                f"model file {name} does not match its manifest sha256 (tampered or damaged); refusing to load it",
                file=name,
                expected=entry.spec["sha256"],
                actual=actual,
            )

    def verify(self) -> list[dict[str, Any]]:
        """Check every file; one ``{id, file, ok, error}`` row per model (never raises)."""
        rows = []
        for entry in self.entries:
            try:
                self._check(entry, self.root / entry.spec["file"])
                rows.append({"id": entry.id, "file": entry.spec["file"], "ok": True, "error": None})
            except MedVisionError as exc:
                rows.append({"id": entry.id, "file": entry.spec["file"], "ok": False, "error": exc.message})
        return rows

    def summary(self) -> dict[str, Any]:
        """Name, builder and trained flag, for status bars and result headers."""
        return {
            "name": self.name,
            "builder_version": self.manifest["builder_version"],
            "trained": self.trained,
            "models": [e.id for e in self.entries],
        }
