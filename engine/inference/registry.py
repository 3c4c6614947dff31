"""Lazily loaded models, one instance per process and task, unloadable."""

from __future__ import annotations

import logging
import threading

from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.inference.llm import LlmRuntime
from engine.inference.modelpack import ModelEntry, ModelPack
from engine.inference.onnx import OnnxModel
from engine.inference.openvino_runtime import OpenVinoModel, load_model

log = logging.getLogger(__name__)


class ModelRegistry:
    """Loads a pack's models on first use and keeps them until :meth:`unload`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pack: ModelPack | None = None
        self._models: dict[str, OnnxModel | OpenVinoModel] = {}
        self._llm: LlmRuntime | None = None
        self._lock = threading.RLock()

    @property
    def pack(self) -> ModelPack:
        """The model pack (manifest read and validated on first access)."""
        with self._lock:
            if self._pack is None:
                self._pack = ModelPack.load(self.settings.model_pack)
            return self._pack

    def entry(self, task: str) -> ModelEntry | None:
        """The pack entry serving ``task`` (honouring MEDVISION_PRECISION), or None."""
        return self.pack.for_task(task, self.settings.precision)

    def require(self, task: str) -> ModelEntry:
        """Like :meth:`entry`, but ``MODEL_NOT_FOUND`` when the pack has no such model."""
        entry = self.entry(task)
        if entry is None:
            raise MedVisionError(ErrorCode.MODEL_NOT_FOUND, f"the model pack has no model for task {task!r}")
        return entry

    def onnx(self, entry: ModelEntry) -> OnnxModel | OpenVinoModel:
        """The loaded session for ``entry``'s ONNX file (verified and created on first use).

        ONNX Runtime, or OpenVINO where the entry names ``runtime: openvino`` and it can run here.
        A pinned precision (``MEDVISION_PRECISION``) runs that file on ONNX Runtime as built, the
        reference numerics, without the measured runtime choice (which may compute in bf16).
        """
        with self._lock:
            model = self._models.get(entry.id)
            if model is None:
                if entry.spec["format"] != "onnx":
                    raise MedVisionError(ErrorCode.MODEL_LOAD_ERROR, f"{entry.id} is not an ONNX model")
                path = self.pack.path(entry)
                spec = {"runtime": "onnxruntime"} if self.settings.precision else entry.spec
                model = load_model(path, spec, threads=self.settings.threads,
                                   providers=self.settings.providers, name=entry.id)
                self._models[entry.id] = model
            return model

    def llm(self) -> LlmRuntime | None:
        """The pack's language model (``llm`` entry), or None when the pack has none.

        One runtime per registry, created on first call over the sha256-verified GGUF
        (paired with the pack's ``vlm_mmproj`` file when there is one); the weights
        themselves load on the runtime's first completion.
        """
        with self._lock:
            if self._llm is None:
                entry = self.entry("llm")
                if entry is None:
                    return None
                projectors = [e for e in self.pack.entries if e.task == "vlm_mmproj"]
                paired = [e for e in projectors if (e.spec.get("parameters") or {}).get("model") == entry.id]
                projector = (paired or projectors or [None])[0]
                mmproj = (projector, self.pack.path(projector)) if projector is not None else None
                self._llm = LlmRuntime(entry, self.pack.path(entry), self.settings, mmproj=mmproj)
            return self._llm

    def loaded(self) -> list[str]:
        """Ids of the models currently in memory."""
        with self._lock:
            llm = [self._llm.entry.id] if self._llm is not None and self._llm.loaded else []
            return list(self._models) + llm

    def unload(self, model_id: str | None = None) -> None:
        """Free one model, or all of them."""
        with self._lock:
            if self._llm is not None and model_id in (None, self._llm.entry.id):
                self._llm.unload()
            if model_id is None:
                self._models.clear()
            else:
                self._models.pop(model_id, None)
