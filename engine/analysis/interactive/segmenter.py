"""The click-to-segment entry point: picks the backend and caches per-image work.

The manifest decides the default: SAM serves only when the pack holds ``sam_encoder``
and ``sam_decoder`` entries with trained weights; a development pack (``trained:
false``) or a pack without SAM gets the classical backend. ``backend=`` or the
environment variable ``MEDVISION_INTERACTIVE_BACKEND`` (``sam`` / ``classical``)
override it, and every result names the backend that made it. SAM's image embedding is
cached in memory (LRU) and, through optional ``cache_get`` / ``cache_put`` callables,
in the engine's encrypted store.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.analysis.interactive.classical import ImageContext, image_context, segment_classical
from engine.analysis.interactive.prompt import Prompt, invalid_region, validate_prompt
from engine.analysis.interactive.sam import decode_masks, encode_image
from engine.errors import ErrorCode, MedVisionError

if TYPE_CHECKING:
    from engine.imaging import DecodedImage
    from engine.inference.modelpack import ModelEntry
    from engine.inference.registry import ModelRegistry

log = logging.getLogger(__name__)

#: Environment variable overriding the manifest's choice of backend.
BACKEND_ENV = "MEDVISION_INTERACTIVE_BACKEND"
BACKENDS = ("sam", "classical")
#: Image embeddings kept in memory (4 MiB each for MobileSAM).
EMBEDDING_CACHE_SIZE = 4
#: Per-image working data of the classical backend and of the background check.
CONTEXT_CACHE_SIZE = 8


class InteractiveSegmenter:
    """Click-to-segment on one image at a time, with per-image caches.

    Parameters
    ----------
    registry:
        Serves the pack's ``sam_encoder`` / ``sam_decoder`` entries (and decides the
        default backend from their ``trained`` flag).
    backend:
        ``"sam"`` or ``"classical"`` to override the manifest (else the environment
        variable ``MEDVISION_INTERACTIVE_BACKEND``, else the manifest).
    cache_get, cache_put:
        Optional persistent embedding cache (the engine encrypts and stores the bytes).
        Keys are ``"<image_key>:<encoder sha256>"``; values are ``.npy`` bytes.
    """

    def __init__(
        self,
        registry: ModelRegistry | None,
        backend: str | None = None,
        cache_get: Callable[[str], bytes | None] | None = None,
        cache_put: Callable[[str, bytes], None] | None = None,
    ) -> None:
        requested = backend or os.environ.get(BACKEND_ENV) or None
        if requested is not None and requested not in BACKENDS:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"unknown interactive backend {requested!r}; use one of {', '.join(BACKENDS)}",
                                 backend=requested)
        self.registry = registry
        self._requested = requested
        self._backend: str | None = None
        self._cache_get = cache_get
        self._cache_put = cache_put
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()
        self._contexts: OrderedDict[str, ImageContext] = OrderedDict()
        self._lock = threading.RLock()
        #: How many times the image encoder ran (the embedding cache's effect is visible here).
        self.encoder_runs = 0

    # -- backend choice --

    @property
    def backend(self) -> str:
        """The backend serving requests: the override, else the manifest's choice."""
        with self._lock:
            if self._backend is None:
                self._backend = self._requested or self._manifest_backend()
                log.info("interactive segmentation backend: %s", self._backend)
            return self._backend

    def _manifest_backend(self) -> str:
        if self.registry is None:
            return "classical"
        try:
            encoder, decoder = self.registry.entry("sam_encoder"), self.registry.entry("sam_decoder")
        except MedVisionError as exc:
            if exc.code is ErrorCode.MODEL_NOT_FOUND:
                return "classical"
            raise
        if encoder is None or decoder is None or not (encoder.trained and decoder.trained):
            return "classical"
        return "sam"

    def _sam_entries(self) -> tuple[ModelEntry, ModelEntry]:
        if self.registry is None:
            raise MedVisionError(ErrorCode.MODEL_NOT_FOUND, "the SAM backend needs a model pack")
        return self.registry.require("sam_encoder"), self.registry.require("sam_decoder")

    # -- caches --

    def _context(self, image_key: str, decoded: DecodedImage) -> ImageContext:
        with self._lock:
            context = self._contexts.get(image_key)
            if context is not None and (context.rows, context.columns) == (decoded.rows, decoded.columns):
                self._contexts.move_to_end(image_key)
                return context
        context = image_context(decoded.display())
        with self._lock:
            self._contexts[image_key] = context
            while len(self._contexts) > CONTEXT_CACHE_SIZE:
                self._contexts.popitem(last=False)
        return context

    def _embedding(self, image_key: str, decoded: DecodedImage, timings: dict[str, float]) -> tuple[np.ndarray, str]:
        """The image embedding: memory cache, then the persistent cache, then the encoder."""
        encoder, _ = self._sam_entries()
        key = f"{image_key}:{encoder.spec['sha256']}"
        expected = tuple(encoder.spec.get("output", {}).get("shape", (1, 256, 64, 64)))
        with self._lock:
            cached = self._embeddings.get(key)
            if cached is not None:
                self._embeddings.move_to_end(key)
                return cached, "memory"
        embedding, source = None, "computed"
        if self._cache_get is not None:
            blob = self._cache_get(key)
            if blob is not None:
                embedding = _embedding_from_bytes(blob, expected)
                if embedding is None:
                    log.warning("ignoring an unreadable cached embedding for image %s", image_key)
                else:
                    source = "store"
        if embedding is None:
            embedding = encode_image(self.registry, encoder, decoded, timings)  # type: ignore[arg-type]
            with self._lock:
                self.encoder_runs += 1
            if embedding.shape != expected:
                raise MedVisionError(ErrorCode.INFERENCE_ERROR,
                                     f"{encoder.id} returned an embedding of shape {embedding.shape}, "
                                     f"expected {expected}")
            if self._cache_put is not None:
                self._cache_put(key, _embedding_to_bytes(embedding))
        with self._lock:
            self._embeddings[key] = embedding
            while len(self._embeddings) > EMBEDDING_CACHE_SIZE:
                self._embeddings.popitem(last=False)
        return embedding, source

    def clear(self, image_key: str | None = None) -> None:
        """Forget the cached data of one image (all encoders), or of every image."""
        with self._lock:
            if image_key is None:
                self._embeddings.clear()
                self._contexts.clear()
                return
            self._contexts.pop(image_key, None)
            for key in [k for k in self._embeddings if k.rsplit(":", 1)[0] == image_key]:
                del self._embeddings[key]

    # -- public API --

    def precompute(self, image_key: str, decoded: DecodedImage) -> dict[str, Any]:
        """Prepare an image ahead of the first click (the engine calls this at ingest).

        Computes (or loads) the SAM embedding when SAM serves, and the working data
        of the background check either way.
        """
        timings: dict[str, float] = {}
        started = time.perf_counter()
        self._context(image_key, decoded)
        timings["context"] = round((time.perf_counter() - started) * 1000, 2)
        source = None
        if self.backend == "sam":
            _, source = self._embedding(image_key, decoded, timings)
        return {"status": "ok", "backend": self.backend, "embedding_source": source, "timings_ms": timings}

    def segment(
        self,
        image_key: str,
        decoded: DecodedImage,
        *,
        points: list[list[float]] | None = None,
        labels: list[int] | None = None,
        box: list[float] | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = True,
    ) -> dict[str, Any]:
        """Segment the structure a prompt designates.

        Parameters
        ----------
        image_key:
            Identifies the image (and frame) for the caches; the same key must always
            mean the same pixels.
        decoded:
            The image; masks are computed from its display rendering.
        points, labels:
            ``[[x, y], ...]`` in image pixels and one label each (1 foreground,
            0 background; default all foreground).
        box:
            ``[x1, y1, x2, y2]`` in image pixels.
        mask_input:
            ``low_res_logits`` of the previous result, to refine it (SAM only; the
            classical backend ignores it).
        multimask:
            Three candidates (SAM's multimask output) or one.

        Returns
        -------
        dict
            ``status``, ``backend``, ``model`` (SAM: the encoder's ``describe()`` with the
            decoder's under ``decoder``; classical: None), ``model_trained`` (None for
            classical), ``masks`` (``[{"mask": bool array of the image size, "score",
            "area_px"}]``, non-empty), ``best`` (index into ``masks``), ``low_res_logits``
            (``(256, 256)`` float32 of the best SAM mask, for the next click; None for
            classical), ``embedding_source`` (SAM: computed / memory / store; classical:
            None) and ``timings_ms``. Classical candidates come smallest first.
        """
        started = time.perf_counter()
        prompt = validate_prompt(decoded.rows, decoded.columns, points=points, labels=labels, box=box,
                                 mask_input=mask_input)
        context = self._context(image_key, decoded)
        seeds = context.to_work(prompt.foreground)
        if len(seeds) and context.air[seeds[:, 0], seeds[:, 1]].any():
            raise invalid_region("point on background: a foreground point lies on the air outside the body",
                                 argument="points")
        timings = {"validate": round((time.perf_counter() - started) * 1000, 2)}
        if self.backend == "sam":
            result = self._segment_sam(image_key, decoded, prompt, multimask, timings)
        else:
            result = segment_classical(context, prompt, multimask, timings)
        timings["total"] = round((time.perf_counter() - started) * 1000, 2)
        result["timings_ms"] = timings
        return result

    def _segment_sam(self, image_key: str, decoded: DecodedImage, prompt: Prompt, multimask: bool,
                     timings: dict[str, float]) -> dict[str, Any]:
        encoder, decoder = self._sam_entries()
        embedding, source = self._embedding(image_key, decoded, timings)
        result = decode_masks(self.registry, encoder, decoder, embedding,  # type: ignore[arg-type]
                              (decoded.rows, decoded.columns), prompt, multimask, timings)
        return result | {"embedding_source": source}


def _embedding_to_bytes(embedding: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(embedding, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _embedding_from_bytes(blob: bytes, expected: tuple[int, ...]) -> np.ndarray | None:
    """A cached embedding, or None when the bytes are not a float32 array of ``expected`` shape."""
    try:
        array = np.load(io.BytesIO(blob), allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != np.float32 or tuple(array.shape) != expected:
        return None
    return array
