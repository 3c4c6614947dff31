"""Model packs: schema, sha256 verification by name, providers, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from engine.errors import ErrorCode, MedVisionError
from engine.inference.modelpack import ModelPack, manifest_schema
from engine.inference.onnx import choose_providers
from tests.fs import linked_copy


@pytest.fixture
def pack_copy(model_pack: Path, tmp_path: Path) -> Path:
    """The dev pack, its model files hard-linked: a test changes them only by unlinking or replacing."""
    return linked_copy(model_pack, tmp_path / "pack")


def test_dev_pack_follows_the_schema_and_says_it_is_untrained(model_pack: Path) -> None:
    manifest = json.loads((model_pack / "manifest.json").read_text())
    jsonschema.validate(manifest, manifest_schema())
    pack = ModelPack.load(model_pack)
    assert pack.trained is False and manifest["name"] == "dev"
    classifiers = [e for e in pack.entries if e.task == "classify"]
    assert {e.precision for e in classifiers} == {"fp32", "int8"}
    assert sum(bool(e.spec.get("default")) for e in classifiers) == 1
    for entry in classifiers:
        assert entry.trained is False and entry.spec["thresholds"] is None
        assert len(entry.labels) == 18 and "Pneumothorax" in entry.labels
    int8 = pack.for_task("classify", "int8")
    quant = int8.spec["quantization"]
    assert quant["method"] == "static_qdq" and quant["parity_max_abs_dp"] <= quant["parity_limit"]
    assert all(row["ok"] for row in pack.verify())


def test_a_tampered_file_is_refused_by_name(pack_copy: Path) -> None:
    pack = ModelPack.load(pack_copy)
    entry = pack.for_task("classify", "int8")
    path = pack_copy / entry.spec["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.unlink()  # a new file, not a write through the link into the session's pack
    path.write_bytes(bytes(data))
    with pytest.raises(MedVisionError) as err:
        pack.path(entry)
    assert err.value.code is ErrorCode.MODEL_INTEGRITY_ERROR
    assert entry.spec["file"] in err.value.message
    rows = {row["file"]: row for row in pack.verify()}
    assert rows[entry.spec["file"]]["ok"] is False
    assert pack.path(pack.for_task("classify", "fp32")).is_file()  # the untouched file still loads


def test_a_missing_file_is_named(pack_copy: Path) -> None:
    pack = ModelPack.load(pack_copy)
    entry = pack.for_task("classify", "fp32")
    (pack_copy / entry.spec["file"]).unlink()
    with pytest.raises(MedVisionError) as err:
        pack.path(entry)
    assert err.value.code is ErrorCode.MODEL_INTEGRITY_ERROR and "missing" in err.value.message


def test_a_manifest_off_schema_is_a_load_error(pack_copy: Path) -> None:
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    manifest["models"][0]["sha256"] = "not-a-digest"
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MedVisionError) as err:
        ModelPack.load(pack_copy)
    assert err.value.code is ErrorCode.MODEL_LOAD_ERROR and "models/0/sha256" in err.value.message


def test_no_pack_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(MedVisionError) as err:
        ModelPack.load(tmp_path / "nowhere")
    assert err.value.code is ErrorCode.MODEL_NOT_FOUND
    assert str(tmp_path) not in err.value.message


def test_cpu_is_always_the_last_provider() -> None:
    assert choose_providers(("CUDAExecutionProvider", "CPUExecutionProvider"))[-1] == "CPUExecutionProvider"
    assert choose_providers(()) == ["CPUExecutionProvider"]
