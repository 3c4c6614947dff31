"""The language-model runtime on the real Gemma 3 270M GGUF (llama-cpp-python, CPU).

One llama.cpp thread: the test machine is shared, and ggml's spinning thread barrier
makes two threads several times slower than one whenever another process holds a core.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from llama_cpp import LlamaGrammar

from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.inference.llm import LlmRuntime
from engine.inference.registry import ModelRegistry
from tests.fs import linked_copy

ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"finding": {"type": "string", "maxLength": 40}, "present": {"type": "boolean"}},
    "required": ["finding", "present"],
    "additionalProperties": False,
}
PROMPT = 'Chest radiograph facts as JSON.\nText: Large left pleural effusion.\nJSON: {"finding": "pleural effusion", ' \
         '"present": true}\nText: The heart is enlarged.\nJSON: '


@pytest.fixture(scope="module")
def registry(llm_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    home = tmp_path_factory.mktemp("llm-home")
    instance = ModelRegistry(Settings(home=home, model_pack=llm_pack, threads=1))
    yield instance
    instance.unload()


@pytest.fixture(scope="module")
def runtime(registry: ModelRegistry) -> LlmRuntime:
    llm = registry.llm()
    assert llm is not None
    return llm


def test_registry_loads_lazily_once_and_unloads(registry: ModelRegistry, runtime: LlmRuntime) -> None:
    assert registry.llm() is runtime and not runtime.supports_images
    result = runtime.complete("The chest radiograph shows", max_tokens=4)
    assert runtime.loaded and runtime.entry.id in registry.loaded()
    assert result["tokens"] <= 4 and result["grammar"] is False and result["parsed"] is None
    assert result["model"]["id"] == "gemma-3-270m-q4_k_m" and result["model"]["trained"] is True
    registry.unload()
    assert not runtime.loaded and runtime.entry.id not in registry.loaded()
    again = runtime.complete("The chest radiograph shows", max_tokens=4)  # loads again on use
    assert again["text"] == result["text"] and runtime.loaded


def test_a_pack_without_a_language_model_gives_none(llm_pack: Path, tmp_path: Path) -> None:
    pack_dir = linked_copy(llm_pack, tmp_path / "pack")
    manifest = json.loads((pack_dir / "manifest.json").read_text())
    manifest["models"][0]["task"] = "detect"  # the pack's only entry is no longer an llm
    (pack_dir / "manifest.json").write_text(json.dumps(manifest))
    assert ModelRegistry(Settings(home=tmp_path, model_pack=pack_dir, threads=1)).llm() is None


def test_free_and_schema_constrained_completion(runtime: LlmRuntime) -> None:
    free = runtime.complete(PROMPT, max_tokens=12)
    assert free["text"] and free["parsed"] is None and free["parse_error"] is None
    assert free["finish_reason"] in ("stop", "length") and free["tokens_per_s"] > 0

    constrained = runtime.complete(PROMPT, json_schema=ANSWER_SCHEMA, max_tokens=40)
    assert constrained["grammar"] is True and constrained["finish_reason"] == "stop"
    assert isinstance(constrained["parsed"], dict), constrained
    assert set(constrained["parsed"]) == {"finding", "present"}
    assert isinstance(constrained["parsed"]["present"], bool)
    assert len(constrained["parsed"]["finding"]) <= 40
    assert constrained["prompt_tokens"] > 20 and constrained["latency_ms"] >= constrained["prompt_ms"]

    cut = runtime.complete(PROMPT, json_schema=ANSWER_SCHEMA, max_tokens=3)  # too short to close the JSON
    assert cut["parsed"] is None and "JSON" in cut["parse_error"] and cut["finish_reason"] == "length"


def test_checked_first_decoding_equals_full_vocabulary_masking(runtime: LlmRuntime) -> None:
    """At temperature 0 the fast path gives llama-cpp-python's stock grammar output, token for token."""
    ours = runtime.complete(PROMPT, json_schema=ANSWER_SCHEMA, max_tokens=24)
    grammar = LlamaGrammar.from_string(runtime.gbnf(ANSWER_SCHEMA), verbose=False)
    stock = runtime._model().create_completion(PROMPT, max_tokens=24, temperature=0.0, grammar=grammar)
    assert ours["text"] == stock["choices"][0]["text"]
    assert ours["grammar_masks"] < ours["tokens"]  # most tokens needed no masking at all


def test_seeds_are_deterministic(runtime: LlmRuntime) -> None:
    greedy = [runtime.complete(PROMPT, max_tokens=10, seed=seed)["text"] for seed in (1, 2)]
    assert greedy[0] == greedy[1]  # temperature 0: the seed changes nothing
    sampled = [runtime.complete(PROMPT, max_tokens=10, temperature=0.9, seed=seed)["text"] for seed in (7, 7, 8, 9)]
    assert sampled[0] == sampled[1]
    assert len(set(sampled)) > 1
    constrained = [runtime.complete(PROMPT, json_schema=ANSWER_SCHEMA, max_tokens=30, temperature=0.9, seed=5)
                   for _ in range(2)]
    assert constrained[0]["text"] == constrained[1]["text"]


def test_chat_uses_the_gemma_turns(runtime: LlmRuntime) -> None:
    result = runtime.chat([{"role": "user", "content": "Name one chest radiograph finding."}], max_tokens=8)
    assert result["prompt"].startswith("<start_of_turn>user\n") and result["prompt"].endswith("<start_of_turn>model\n")
    assert result["tokens"] <= 8 and "<start_of_turn>" not in result["text"]


def test_bad_arguments_are_invalid_argument(runtime: LlmRuntime, llm_pack: Path, tmp_path: Path) -> None:
    small = LlmRuntime(runtime.entry, runtime.path, runtime.settings, n_ctx=64)
    with pytest.raises(MedVisionError) as err:
        small.complete("finding " * 80, max_tokens=4)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT and "context" in err.value.message
    small.unload()
    with pytest.raises(MedVisionError) as err:
        runtime.complete(PROMPT, max_tokens=0)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(MedVisionError) as err:
        runtime.complete_with_image("What is shown?", b"\x89PNG\r\n\x1a\n")
    assert err.value.code is ErrorCode.MODEL_NOT_FOUND  # the pack has no mmproj


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_gguf_is_a_load_error_not_a_crash(runtime: LlmRuntime, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    if damage == "truncated":
        with open(runtime.path, "rb") as source:
            path.write_bytes(source.read(100_000_000))
    elif damage == "garbage":
        path.write_bytes(b"GGUF" + os.urandom(4096))
    else:
        path.write_bytes(b"")
    broken = LlmRuntime(runtime.entry, path, runtime.settings)
    with pytest.raises(MedVisionError) as err:
        broken.load()
    assert err.value.code is ErrorCode.MODEL_LOAD_ERROR
    assert "gemma-3-270m-q4_k_m" in err.value.message and "not a loadable GGUF" in err.value.message
    assert str(tmp_path) not in err.value.message
    if damage == "truncated":
        assert "corrupted or incomplete" in err.value.message or "file bounds" in err.value.message
    assert not broken.loaded
