"""The pack builder: a real dev build into a fresh directory, freshness, atomic replacement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.inference.modelpack import ModelPack
from models import BUILDER_VERSION, classifier, sam
from models.pack import COMPONENTS, build_pack, components_named, family_names, is_fresh
from tests.models.runtime_choice import assert_runtime_choice


def test_dev_build_is_complete_fresh_and_replaces_atomically(tmp_path: Path) -> None:
    out = tmp_path / "pack"
    out.mkdir()
    (out / "stale.txt").write_text("from an older build")
    assert classifier.build in COMPONENTS  # the full build runs in test.sh; here the fast component
    manifest = build_pack(out, dev=True, threads=2, components=[classifier.build])
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pack"]  # no staging dirs left behind
    assert manifest["builder_version"] == BUILDER_VERSION and manifest["trained"] is False
    assert all(row["ok"] for row in ModelPack.load(out).verify())
    assert manifest["components"] == ["classifier"]
    assert_runtime_choice(manifest["models"])
    assert not is_fresh(out, dev=True)  # a subset of the model families is not the default pack
    assert is_fresh(out, dev=True, components=[classifier.build])  # but it is the pack asked for
    manifest["components"] = [c.__module__.rsplit(".", 1)[-1] for c in COMPONENTS]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert is_fresh(out, dev=True) and not is_fresh(out, dev=False)

    stale = json.loads((out / "manifest.json").read_text())
    stale["builder_version"] = "0"
    (out / "manifest.json").write_text(json.dumps(stale))
    assert not is_fresh(out, dev=True)


def test_families_are_chosen_by_name_in_build_order() -> None:
    assert family_names() == ["classifier", "segmentation", "embedding", "sam", "llm", "volume_unet"]
    assert components_named(["sam", "classifier"]) == [classifier.build, sam.build]
    with pytest.raises(ValueError, match="unknown model family densenet; choose from classifier"):
        components_named(["classifier", "densenet"])
