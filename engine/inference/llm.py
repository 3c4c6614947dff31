"""The pack's language model (a GGUF) through llama-cpp-python, with JSON-schema grammars.

One :class:`LlmRuntime` per process, created lazily by
:meth:`engine.inference.registry.ModelRegistry.llm` over a sha256-verified file.

Decisions worth knowing:

- **Constrained decoding by checking first, then masking.** llama-cpp-python's sampler
  chain applies a grammar to the whole vocabulary at every step; on Gemma 3 (262,144
  tokens) that costs ~45 ms a token on two cores, twice the forward pass. The runtime
  decodes with its own loop instead, the way llama.cpp's ``common_sampler`` does: it
  picks the token it would pick without the grammar, asks the grammar about that one
  token, and only when it is rejected masks the top candidates, then (only if none of
  those is allowed) the whole vocabulary. At temperature 0 the output is the same token
  for token as masking the full vocabulary (the best allowed token is the best
  token when it is allowed, and the best of the top candidates when one of them is).
- **Grammars are cached** per schema (the GBNF text) and per loaded model (the parsed
  llama.cpp sampler, reset before each use).
- **No weight repacking** (``use_extra_bufts = False``): llama.cpp's AMX kernels crash
  on Q4_K matrices on this build (``ggml_backend_amx_mul_mat`` SIGSEGV as soon as a
  batch has two tokens; ggml-org/llama.cpp#20824), which no ``except`` can catch. The
  plain CPU kernels are what every test and benchmark here ran on.
- llama.cpp's log goes to the ``engine.inference.llama_cpp`` logger (never to stderr);
  the last lines are kept to name the cause of a failed load or decode (GPU OOM...).
- Bad model output is reported (``parsed: None`` with ``parse_error``), never raised.
- Images (:meth:`LlmRuntime.complete_with_image`) need a VLM GGUF plus its mmproj in
  the pack and go through llama-cpp-python's generic ``MTMDChatHandler`` (the model's
  own chat template). No VLM GGUF was available here: that path is untested.
"""

from __future__ import annotations

import base64
import collections
import ctypes
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp
import llama_cpp.llama_cpp as llama_capi
import numpy as np
from llama_cpp import Llama, LlamaGrammar

from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.inference.modelpack import ModelEntry

log = logging.getLogger(__name__)
llama_log = logging.getLogger("engine.inference.llama_cpp")

#: Context length when neither the caller nor the manifest (``parameters.n_ctx``) sets one.
DEFAULT_N_CTX = 4096
#: Seed used when a call gives none (sampling at temperature > 0 stays reproducible).
DEFAULT_SEED = 0
#: Sampling at temperature > 0: the usual llama.cpp defaults.
TOP_K = 40
TOP_P = 0.95
#: Candidates masked before falling back to the whole vocabulary (see the module docstring).
GRAMMAR_CANDIDATES = 256
#: llama.cpp log lines kept to explain a failure.
_LOG_LINES = 64
_OOM_MARKERS = ("out of memory", "cudamalloc failed", "failed to allocate", "cuda error 2",
                "unable to allocate", "cudaerrormemoryallocation")
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)
_FILE_TYPES = {0: "fp32", 1: "f16", 7: "q8_0", 15: "q4_k_m"}

_recent_log: collections.deque[tuple[int, str]] = collections.deque(maxlen=_LOG_LINES)
#: ggml_log_level of this llama.cpp (NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5); the
#: table in llama-cpp-python's own _logger.py is an older order.
_log_levels = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_log_state = {"level": logging.DEBUG, "installed": False, "count": 0}
_install_lock = threading.Lock()
_params_lock = threading.Lock()


@llama_capi.llama_log_callback
def _forward_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:  # noqa: ARG001
    """llama.cpp/ggml log callback: into Python logging plus a short ring buffer."""
    message = text.decode("utf-8", errors="replace").rstrip()
    if level != 5:  # GGML_LOG_LEVEL_CONT continues the previous line's level
        _log_state["level"] = _log_levels.get(level, logging.DEBUG)
    if message:
        _log_state["count"] += 1
        _recent_log.append((_log_state["count"], message))
        llama_log.log(_log_state["level"], "%s", message)


def _install_log_callback() -> None:
    """Route llama.cpp's log through :func:`_forward_llama_log` (once per process)."""
    with _install_lock:
        if not _log_state["installed"]:
            llama_capi.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))
            _log_state["installed"] = True


@contextmanager
def _model_params(**overrides: Any) -> Iterator[None]:
    """Make ``Llama`` see extra ``llama_model_params`` fields it has no argument for."""
    original = llama_capi.llama_model_default_params

    def patched() -> llama_capi.llama_model_params:
        params = original()
        for name, value in overrides.items():
            setattr(params, name, value)
        return params

    with _params_lock:
        llama_capi.llama_model_default_params = patched
        try:
            yield
        finally:
            llama_capi.llama_model_default_params = original


def _failure_code(exc: BaseException, lines: list[str]) -> ErrorCode:
    text = " ".join([str(exc), *lines]).lower()
    return ErrorCode.GPU_OOM if any(marker in text for marker in _OOM_MARKERS) else ErrorCode.INFERENCE_ERROR


def _log_mark() -> int:
    """A position in llama.cpp's log, for :func:`_log_since`."""
    return int(_log_state["count"])


def _log_since(mark: int) -> list[str]:
    """The kept llama.cpp lines logged after ``mark``."""
    return [line for number, line in list(_recent_log) if number > mark]


def schema_key(json_schema: dict) -> str:
    """The cache key of a JSON schema (canonical JSON text)."""
    return json.dumps(json_schema, sort_keys=True, separators=(",", ":"))


@dataclass
class _CompiledGrammar:
    """A schema's GBNF and its llama.cpp sampler (tied to one loaded model)."""

    gbnf: str
    sampler: Any
    convert_ms: float
    parse_ms: float


class LlmRuntime:
    """A GGUF language model, loaded on first use, with grammar-constrained completion.

    Parameters
    ----------
    entry:
        The pack's ``llm`` entry; :meth:`describe` cites it in every result.
    path:
        The verified GGUF file (``ModelPack.path`` checked its sha256).
    settings:
        ``threads`` sets llama.cpp's decode and batch threads.
    mmproj:
        The ``vlm_mmproj`` entry and its verified file, when the pack pairs the model
        with a vision projector; enables :meth:`complete_with_image`.
    n_ctx:
        Context length; default the entry's ``parameters.n_ctx``, else :data:`DEFAULT_N_CTX`.
    """

    def __init__(self, entry: ModelEntry, path: Path, settings: Settings, *,
                 mmproj: tuple[ModelEntry, Path] | None = None, n_ctx: int | None = None) -> None:
        if entry.spec.get("format") != "gguf":
            raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR, f"{entry.id} is not a GGUF model", model=entry.id)
        self.entry = entry
        self.path = Path(path)
        self.settings = settings
        self.mmproj = mmproj
        parameters = entry.spec.get("parameters") or {}
        self.n_ctx = int(n_ctx or parameters.get("n_ctx") or DEFAULT_N_CTX)
        self.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        self._llama: Llama | None = None
        self._lock = threading.RLock()
        self._gbnf: dict[str, str] = {}
        self._grammars: dict[str, _CompiledGrammar] = {}
        self._tokens_array = np.zeros(0, dtype=_TOKEN_DATA)  # the whole vocabulary, for full masking
        self.load_ms: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """True while the model is in memory."""
        return self._llama is not None

    @property
    def supports_images(self) -> bool:
        """True when the pack gave this model a vision projector (mmproj)."""
        return self.mmproj is not None

    def load(self) -> None:
        """Load the GGUF now (otherwise the first completion does it); idempotent.

        Raises
        ------
        MedVisionError
            ``MODEL_LOAD_ERROR`` for a missing, truncated or non-GGUF file (the message
            names the file and quotes llama.cpp), ``GPU_OOM`` when the GPU is out of memory.
        """
        with self._lock:
            if self._llama is not None:
                return
            _install_log_callback()
            name = self.entry.spec.get("file", self.path.name)
            if not self.path.is_file():
                raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR, f"language model file {name} is missing",
                                     model=self.entry.id, file=name)
            handler = None
            mark = _log_mark()
            started = time.perf_counter()
            try:
                if self.mmproj is not None:
                    from llama_cpp.llama_chat_format import MTMDChatHandler

                    handler = MTMDChatHandler(clip_model_path=str(self.mmproj[1]), verbose=False,
                                              use_gpu=self.gpu_offload)
                with _model_params(use_extra_bufts=False):
                    llama = Llama(
                        model_path=str(self.path),
                        n_ctx=self.n_ctx,
                        n_threads=self.settings.threads,
                        n_threads_batch=self.settings.threads,
                        n_gpu_layers=-1 if self.gpu_offload else 0,
                        seed=DEFAULT_SEED,
                        logits_all=False,
                        swa_full=True,  # partial KV removal, so a shared prompt prefix is reused
                        chat_handler=handler,
                        verbose=False,
                    )
            except (ValueError, RuntimeError, OSError, MemoryError) as exc:
                lines = [line.replace(str(self.path), name) for line in _log_since(mark)]
                errors = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
                cause = "; ".join(errors[-3:]) or str(exc).replace(str(self.path), name)
                if _failure_code(exc, lines) is ErrorCode.GPU_OOM:
                    raise MedVisionError(ErrorCode.GPU_OOM, f"not enough GPU memory for language model "
                                         f"{self.entry.id}. llama.cpp: {cause}", model=self.entry.id) from exc
                raise MedVisionError(
                    ErrorCode.MODEL_LOAD_ERROR,
                    f"cannot load language model {self.entry.id} from {name}: the file is not a loadable "
                    f"GGUF model (truncated, corrupt or of an unsupported architecture). llama.cpp: {cause}",
                    model=self.entry.id, file=name,
                ) from exc
            self.load_ms = (time.perf_counter() - started) * 1000
            self._llama = llama
            self._tokens_array = np.zeros(llama.n_vocab(), dtype=_TOKEN_DATA)
            self._tokens_array["id"] = np.arange(llama.n_vocab(), dtype=np.int32)
            log.info("loaded %s (%s, n_ctx %d, %s) in %.0f ms", self.entry.id, self.entry.precision, self.n_ctx,
                     "GPU offload" if self.gpu_offload else "CPU", self.load_ms)

    def unload(self) -> None:
        """Free the model (and its grammar samplers); the next call loads it again."""
        with self._lock:
            for compiled in self._grammars.values():
                llama_capi.llama_sampler_free(compiled.sampler)
            self._grammars.clear()
            if self._llama is not None:
                self._llama.close()
                self._llama = None
                log.info("unloaded %s", self.entry.id)

    def _model(self) -> Llama:
        self.load()
        assert self._llama is not None
        return self._llama

    # -- description -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The entry's citation plus how it runs (context, threads, device, images)."""
        return self.entry.describe() | {
            "format": "gguf",
            "n_ctx": self.n_ctx,
            "threads": self.settings.threads,
            "device": "gpu" if self.gpu_offload else "cpu",
            "images": self.supports_images,
            "mmproj": self.mmproj[0].id if self.mmproj else None,
        }

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as a prompt (BOS included)."""
        with self._lock:
            return len(self._model().tokenize(text.encode("utf-8"), add_bos=True))

    # -- grammars ----------------------------------------------------------------------------

    def gbnf(self, json_schema: dict) -> str:
        """The GBNF grammar of ``json_schema`` (llama-cpp-python's converter), cached."""
        key = schema_key(json_schema)
        gbnf = self._gbnf.get(key)
        if gbnf is None:
            try:
                gbnf = LlamaGrammar.from_json_schema(key, verbose=False)._grammar
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"cannot turn the JSON schema into a grammar: {exc}") from exc
            self._gbnf[key] = gbnf
        return gbnf

    def grammar(self, json_schema: dict) -> _CompiledGrammar:
        """The llama.cpp grammar sampler of ``json_schema`` for the loaded model (cached)."""
        key = schema_key(json_schema)
        with self._lock:
            compiled = self._grammars.get(key)
            if compiled is None:
                llama = self._model()
                started = time.perf_counter()
                gbnf = self.gbnf(json_schema)
                converted = time.perf_counter()
                sampler = llama_capi.llama_sampler_init_grammar(llama._model.vocab, gbnf.encode("utf-8"), b"root")
                parsed = time.perf_counter()
                if not sampler:
                    raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "llama.cpp rejected the grammar of the JSON schema")
                compiled = _CompiledGrammar(gbnf, sampler, (converted - started) * 1000, (parsed - converted) * 1000)
                self._grammars[key] = compiled
            return compiled

    # -- completion --------------------------------------------------------------------------

    def complete(self, prompt: str, *, json_schema: dict | None = None, max_tokens: int = 256,
                 temperature: float = 0.0, seed: int | None = None, stop: list[str] | None = None,
                 abort_at_sentence: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """Continue ``prompt``; under ``json_schema`` the output is grammar-constrained JSON.

        Parameters
        ----------
        prompt:
            Raw text (a BOS token is added); no chat template is applied (see :meth:`chat`).
        json_schema:
            When given, decoding follows its grammar and ``parsed`` holds the decoded object
            (``None`` with ``parse_error`` when the output is cut short or fails the schema).
        max_tokens:
            Generated tokens at most (also clipped to the context left after the prompt).
        temperature:
            0 decodes greedily (deterministic); above 0 samples (top-k 40, top-p 0.95).
        seed:
            Sampling seed (default :data:`DEFAULT_SEED`): a seed gives the same text every time.
        stop:
            Strings that end the output (not included in ``text``).
        abort_at_sentence:
            Called with the text so far at each word boundary (the text ends with a space
            or a quote); True stops decoding there (``finish_reason`` ``aborted``): a caller
            that will reject the output anyway (the narrative guard) does not pay for the rest.

        Returns
        -------
        dict
            ``text``, ``parsed``, ``parse_error``, ``tokens`` (generated), ``prompt_tokens``,
            ``latency_ms`` (prompt + decode), ``prompt_ms``, ``tokens_per_s`` (decode only),
            ``grammar`` (bool), ``grammar_masks`` (how often the grammar had to mask
            candidates), ``finish_reason`` (``stop`` / ``length`` / ``aborted``), ``seed``, ``model``.

        Raises
        ------
        MedVisionError
            ``INVALID_ARGUMENT`` (prompt longer than the context, bad arguments),
            ``MODEL_LOAD_ERROR``, ``INFERENCE_ERROR`` or ``GPU_OOM``.
        """
        if max_tokens < 1:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "max_tokens must be at least 1")
        if temperature < 0:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "temperature must be >= 0")
        seed = DEFAULT_SEED if seed is None else int(seed)
        with self._lock:
            llama = self._model()
            compiled = self.grammar(json_schema) if json_schema is not None else None
            return self._generate(llama, prompt, compiled, json_schema, max_tokens, temperature, seed, stop or [],
                                  special=False, abort_at_sentence=abort_at_sentence)

    def chat(self, messages: list[dict[str, Any]], *, json_schema: dict | None = None, max_tokens: int = 256,
             temperature: float = 0.0, seed: int | None = None, stop: list[str] | None = None) -> dict[str, Any]:
        """:meth:`complete` over ``messages`` rendered with the model's chat template.

        The GGUF's own ``tokenizer.chat_template`` when it has one, else llama-cpp-python's
        ``gemma`` format for Gemma models (the 270M GGUF carries no template). The turn
        separator is added to ``stop``. A base model follows chat turns loosely.
        """
        if max_tokens < 1 or temperature < 0:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "max_tokens must be >= 1 and temperature >= 0")
        seed = DEFAULT_SEED if seed is None else int(seed)
        with self._lock:
            prompt, turn_stop = self._render_chat(messages)
            compiled = self.grammar(json_schema) if json_schema is not None else None
            result = self._generate(self._model(), prompt, compiled, json_schema, max_tokens, temperature, seed,
                                    [*(stop or []), *turn_stop], special=True)
        return result | {"prompt": prompt}

    def complete_with_image(self, prompt: str, image_png_bytes: bytes, *, json_schema: dict | None = None,
                            max_tokens: int = 256, temperature: float = 0.0,
                            seed: int | None = None) -> dict[str, Any]:
        """Answer ``prompt`` about one PNG image through the pack's VLM + mmproj.

        Untested here (no VLM GGUF on the build machine). Images go through
        llama-cpp-python's ``MTMDChatHandler`` as a ``data:`` URL (never fetched), with
        llama-cpp-python's own grammar sampling over the full vocabulary.

        Raises
        ------
        MedVisionError
            ``MODEL_NOT_FOUND`` when the pack holds no mmproj for this model,
            ``INVALID_ARGUMENT`` for bytes that are not a PNG, ``INFERENCE_ERROR``/``GPU_OOM``.
        """
        if self.mmproj is None:
            raise MedVisionError(ErrorCode.MODEL_NOT_FOUND,
                                 f"{self.entry.id} has no vision projector (vlm_mmproj) in the pack")
        if not image_png_bytes.startswith(b"\x89PNG\r\n\x1a\n"):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "image_png_bytes is not a PNG image")
        url = "data:image/png;base64," + base64.b64encode(image_png_bytes).decode("ascii")
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                  {"type": "text", "text": prompt}]}]
        seed = DEFAULT_SEED if seed is None else int(seed)
        with self._lock:
            llama = self._model()
            grammar = LlamaGrammar.from_string(self.gbnf(json_schema), verbose=False) if json_schema else None
            mark = _log_mark()
            started = time.perf_counter()
            try:
                response = llama.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                                        temperature=temperature, seed=seed, grammar=grammar)
            except (ValueError, RuntimeError) as exc:
                raise MedVisionError(_failure_code(exc, _log_since(mark)),
                                     f"{self.entry.id} failed on the image: {exc}") from exc
            finally:
                # Image positions leave stale token ids behind: never reuse this KV cache as a text prefix.
                llama.reset()
            elapsed = time.perf_counter() - started
        choice = response["choices"][0]
        text = choice["message"].get("content") or ""
        tokens = int(response.get("usage", {}).get("completion_tokens", 0))
        parsed, parse_error = _parse(text, json_schema)
        return {"text": text, "parsed": parsed, "parse_error": parse_error, "tokens": tokens,
                "prompt_tokens": int(response.get("usage", {}).get("prompt_tokens", 0)),
                "latency_ms": round(elapsed * 1000, 1), "prompt_ms": None,
                "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
                "grammar": json_schema is not None, "grammar_masks": None,
                "finish_reason": choice.get("finish_reason"), "seed": seed, "model": self.describe()}

    # -- internals ---------------------------------------------------------------------------

    def _render_chat(self, messages: list[dict[str, Any]]) -> tuple[str, list[str]]:
        from llama_cpp import llama_chat_format

        llama = self._model()
        template = llama.metadata.get("tokenizer.chat_template")
        try:
            if template:
                formatter = llama_chat_format.Jinja2ChatFormatter(
                    template=template,
                    eos_token=llama.detokenize([llama.token_eos()]).decode("utf-8", errors="ignore"),
                    bos_token="",  # complete() adds BOS as a token
                )
                rendered = formatter(messages=messages)
            elif llama.metadata.get("general.architecture", "").startswith("gemma"):
                rendered = llama_chat_format.format_gemma(messages=messages)
            else:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                     f"{self.entry.id} has no chat template; use complete() with a plain prompt")
        except (ValueError, KeyError, TypeError) as exc:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"cannot render the chat messages: {exc}") from exc
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return rendered.prompt, [s.strip() or s for s in stop]

    def _prefill(self, llama: Llama, tokens: list[int]) -> None:
        """Evaluate ``tokens``, reusing the KV cache of a shared prefix with the last prompt."""
        cached = llama.n_tokens
        common = 0
        limit = min(cached, len(tokens) - 1)  # re-evaluate at least one token for fresh logits
        previous = llama.input_ids
        while common < limit and previous[common] == tokens[common]:
            common += 1
        if common and llama._ctx.kv_cache_seq_rm(-1, common, -1):
            llama.n_tokens = common
        else:
            llama.reset()
            common = 0
        llama.eval(tokens[common:])

    def _generate(self, llama: Llama, prompt: str, compiled: _CompiledGrammar | None, json_schema: dict | None,
                  max_tokens: int, temperature: float, seed: int, stop: list[str], *,
                  special: bool, abort_at_sentence: Callable[[str], bool] | None = None) -> dict[str, Any]:
        # Control tokens (<start_of_turn>...) are parsed only in prompts we rendered (chat).
        tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=special)
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx}")
        max_tokens = min(max_tokens, room)
        rng = np.random.default_rng(seed) if temperature > 0 else None
        vocab = llama._model.vocab
        n_vocab = llama.n_vocab()
        if compiled is not None:
            llama_capi.llama_sampler_reset(compiled.sampler)
        mark = _log_mark()
        started = time.perf_counter()
        generated: list[int] = []
        text = ""
        finish = "length"
        masks = 0
        try:
            self._prefill(llama, tokens)
            prompt_done = time.perf_counter()
            for _ in range(max_tokens):
                logits = np.ctypeslib.as_array(llama_capi.llama_get_logits_ith(llama._ctx.ctx, -1), shape=(n_vocab,))
                token, masked = self._pick(logits, compiled, temperature, rng)
                masks += masked
                if token is None or llama_capi.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                if compiled is not None:
                    llama_capi.llama_sampler_accept(compiled.sampler, token)
                generated.append(token)
                text = llama.detokenize(generated).decode("utf-8", errors="ignore")
                cut = _first_stop(text, stop)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    break
                if json_schema is not None and text.rstrip().endswith("}") and _is_json(text):
                    finish = "stop"
                    break
                if abort_at_sentence is not None and text[-1:] in (" ", '"') and abort_at_sentence(text):
                    finish = "aborted"
                    break
                llama.eval([token])
        except RuntimeError as exc:
            raise MedVisionError(_failure_code(exc, _log_since(mark)), f"{self.entry.id} failed: {exc}",
                                 model=self.entry.id) from exc
        finished = time.perf_counter()
        if finish == "length":
            text = llama.detokenize(generated).decode("utf-8", errors="replace")
        parsed, parse_error = _parse(text, json_schema)
        decode_s = finished - prompt_done
        return {
            "text": text,
            "parsed": parsed,
            "parse_error": parse_error,
            "tokens": len(generated),
            "prompt_tokens": len(tokens),
            "latency_ms": round((finished - started) * 1000, 1),
            "prompt_ms": round((prompt_done - started) * 1000, 1),
            "tokens_per_s": round(len(generated) / decode_s, 1) if generated and decode_s > 0 else None,
            "grammar": compiled is not None,
            "grammar_masks": masks if compiled is not None else None,
            "finish_reason": finish,
            "seed": seed,
            "model": self.describe(),
        }

    def _pick(self, logits: np.ndarray, compiled: _CompiledGrammar | None, temperature: float,
              rng: np.random.Generator | None) -> tuple[int | None, int]:
        """The next token and how many grammar masks it took (0: first choice allowed)."""
        if rng is None:
            token = int(np.argmax(logits))
            if compiled is None or self._allowed(compiled, np.array([token], dtype=np.int32), logits)[0]:
                return token, 0
            top = np.argpartition(logits, -GRAMMAR_CANDIDATES)[-GRAMMAR_CANDIDATES:].astype(np.int32)
            allowed = self._allowed(compiled, top, logits)
            if allowed.any():
                candidates = top[allowed]
                return int(candidates[np.argmax(logits[candidates])]), 1
            allowed = self._allowed(compiled, None, logits)
            if not allowed.any():
                return None, 2
            candidates = np.flatnonzero(allowed)
            return int(candidates[np.argmax(logits[candidates])]), 2
        top = np.argpartition(logits, -TOP_K)[-TOP_K:].astype(np.int32)
        token = _sample(top, logits, temperature, rng)
        if compiled is None or self._allowed(compiled, np.array([token], dtype=np.int32), logits)[0]:
            return token, 0
        wide = np.argpartition(logits, -GRAMMAR_CANDIDATES)[-GRAMMAR_CANDIDATES:].astype(np.int32)
        allowed = self._allowed(compiled, wide, logits)
        masked = 1
        if not allowed.any():
            allowed_all = self._allowed(compiled, None, logits)
            if not allowed_all.any():
                return None, 2
            wide, allowed, masked = np.flatnonzero(allowed_all).astype(np.int32), np.ones(int(allowed_all.sum()), bool), 2
        candidates = wide[allowed]
        if len(candidates) > TOP_K:
            candidates = candidates[np.argpartition(logits[candidates], -TOP_K)[-TOP_K:]]
        return _sample(candidates, logits, temperature, rng), masked

    def _allowed(self, compiled: _CompiledGrammar, token_ids: np.ndarray | None, logits: np.ndarray) -> np.ndarray:
        """Which of ``token_ids`` (``None``: the whole vocabulary) the grammar allows next."""
        if token_ids is None:
            data = self._tokens_array
            data["id"] = np.arange(len(data), dtype=np.int32)
            data["logit"] = logits
        else:
            data = np.zeros(len(token_ids), dtype=_TOKEN_DATA)
            data["id"] = token_ids
            data["logit"] = logits[token_ids]
        array = llama_capi.llama_token_data_array(data.ctypes.data_as(llama_capi.llama_token_data_p),
                                                  len(data), -1, False)
        llama_capi.llama_sampler_apply(compiled.sampler, ctypes.byref(array))
        if array.size != len(data):
            raise MedVisionError(ErrorCode.INFERENCE_ERROR, "the grammar sampler resized the candidate list")
        return np.isfinite(data["logit"])


def _sample(candidates: np.ndarray, logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Sample among ``candidates`` (token ids): temperature, then top-p over their softmax."""
    scores = logits[candidates].astype(np.float64) / temperature
    order = np.argsort(-scores)
    candidates, scores = candidates[order], scores[order]
    probabilities = np.exp(scores - scores[0])
    probabilities /= probabilities.sum()
    keep = int(np.searchsorted(np.cumsum(probabilities), TOP_P) + 1)
    probabilities = probabilities[:keep] / probabilities[:keep].sum()
    return int(candidates[rng.choice(keep, p=probabilities)])


def _first_stop(text: str, stop: list[str]) -> int | None:
    positions = [text.find(s) for s in stop if s and s in text]
    return min(positions) if positions else None


def _is_json(text: str) -> bool:
    try:
        json.loads(text, strict=False)
    except ValueError:
        return False
    return True


def _parse(text: str, json_schema: dict | None) -> tuple[dict | None, str | None]:
    """``(object, None)`` when ``text`` is JSON following ``json_schema``, else ``(None, why)``."""
    if json_schema is None:
        return None, None
    try:
        # strict=False: the JSON grammar lets raw control characters (new lines) into strings.
        value = json.loads(text, strict=False)
    except ValueError as exc:
        return None, f"not valid JSON (cut short by max_tokens?): {exc}"
    try:
        jsonschema.validate(value, json_schema)
    except jsonschema.ValidationError as exc:
        return None, f"does not follow the schema: {exc.message}"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, None


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """A GGUF's metadata key/values and vocabulary size, read without loading the weights.

    Raises ``MODEL_LOAD_ERROR`` (naming the file) when llama.cpp cannot read it.
    """
    path = Path(path)
    _install_log_callback()
    mark = _log_mark()
    try:
        llama = Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError, OSError) as exc:
        lines = [line.replace(str(path), path.name) for line in _log_since(mark)]
        cause = "; ".join(line for line in lines if "error" in line.lower())[-400:] or "unreadable"
        raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR, f"{path.name} is not a readable GGUF file: {cause}",
                             file=path.name) from exc
    try:
        return dict(llama.metadata) | {"n_vocab": llama.n_vocab()}
    finally:
        llama.close()


def gguf_precision(file_type: int | str | None) -> str | None:
    """The manifest precision of a GGUF ``general.file_type`` (None when not one we list)."""
    try:
        return _FILE_TYPES.get(int(file_type)) if file_type is not None else None
    except ValueError:
        return None
