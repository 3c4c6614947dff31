"""Assemble a model pack: run each component builder, hash the files, write the manifest.

The pack is built in a sibling temporary directory and renamed into place, so a
crashed build never leaves a half pack where the runtime looks.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import jsonschema

from engine.inference.modelpack import MANIFEST_NAME, ModelPack, manifest_schema, sha256_file
from models import BUILDER_VERSION, classifier, embedding, llm, sam, segmentation, volume_unet
from models.context import BuildContext

log = logging.getLogger(__name__)


#: One builder per model family; each writes its files under ``out_dir`` and returns
#: manifest entries without ``sha256``/``size_bytes`` (added here).
COMPONENTS: list[Callable[[BuildContext], list[dict]]] = [
    classifier.build,
    segmentation.build,
    embedding.build,
    sam.build,
    llm.build,
    volume_unet.build,
]


def is_fresh(out_dir: Path, *, dev: bool,
             components: list[Callable[[BuildContext], list[dict]]] | None = None) -> bool:
    """True when ``out_dir`` holds a complete pack of this builder version and kind, made of
    exactly ``components`` (default: every model family)."""
    try:
        pack = ModelPack.load(out_dir)
    except Exception:  # noqa: BLE001 - any failure to load means "rebuild"
        return False
    manifest = pack.manifest
    if manifest.get("builder_version") != BUILDER_VERSION or manifest.get("name") != ("dev" if dev else "site"):
        return False
    if manifest.get("components") != _component_names(components or COMPONENTS):
        return False  # a subset (or an older set) of model families
    return all(row["ok"] for row in pack.verify())


def _component_names(components: list[Callable[[BuildContext], list[dict]]]) -> list[str]:
    return [component.__module__.rsplit(".", 1)[-1] for component in components]


def family_names() -> list[str]:
    """The model families a pack can hold, in build order (``classifier``, ``segmentation``...)."""
    return _component_names(COMPONENTS)


def components_named(names: list[str]) -> list[Callable[[BuildContext], list[dict]]]:
    """The builders of the named families, in build order (``--only``); unknown names are refused."""
    unknown = sorted(set(names) - set(family_names()))
    if unknown:
        raise ValueError(f"unknown model famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                         f"choose from {', '.join(family_names())}")
    return [component for component, name in zip(COMPONENTS, family_names(), strict=True) if name in names]


def build_pack(out_dir: Path, *, dev: bool, weights_dir: Path | None = None,
               calibration_dir: Path | None = None, threads: int = 2,
               components: list[Callable[[BuildContext], list[dict]]] | None = None) -> dict:
    """Build a pack into ``out_dir`` (replacing it) and return its manifest.

    ``components`` builds a subset (tests build only the models they exercise);
    the default is every builder in :data:`COMPONENTS`.
    """
    if dev == (weights_dir is not None):
        raise ValueError("choose exactly one of dev=True or weights_dir")
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        context = BuildContext(staging, calibration_dir, weights_dir, threads)
        chosen = COMPONENTS if components is None else components
        entries = []
        for component in chosen:
            entries += component(context)
        for entry in entries:
            path = staging / entry["file"]
            entry["sha256"] = sha256_file(path)
            entry["size_bytes"] = path.stat().st_size
        manifest = {
            "format_version": 1,
            "name": "dev" if dev else "site",
            "builder_version": BUILDER_VERSION,
            "components": _component_names(chosen),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "trained": all(e["trained"] for e in entries),
            "notes": (
                "Development pack: real architectures without pretrained weights. Outputs are not "
                "meaningful (model_trained: false)." if dev else "Site pack built from upstream weights."
            ),
            "models": entries,
        }
        jsonschema.validate(manifest, manifest_schema())
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("model pack written: %d models", len(manifest["models"]))
    return manifest
