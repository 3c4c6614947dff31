"""What an export reads: a session's images, analyses, masks, annotations and report.

:func:`gather` collects it once, in one place, so every format (PDF, DICOM SR/SEG/SC,
JSON, PNG, HTML) shows the same facts. Nothing here writes; what is missing (an image
never analysed, a session without an agent report) is listed in ``missing`` so the
export can say so instead of failing.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom

from engine.errors import ErrorCode, MedVisionError
from engine.imaging import DecodedImage
from engine.imaging.masks import decode_rle
from engine.services.annotations import annotation_view
from engine.vocabulary import UNTRAINED_BANNER

if TYPE_CHECKING:
    from engine.services import Services

log = logging.getLogger(__name__)

TEMPLATES = ("default", "clinical", "research")


@dataclass(frozen=True)
class ExportOptions:
    """The caller's choices (``export_study`` arguments)."""

    include_images: tuple[str, ...] = ()
    include_report: bool = True
    include_annotations: bool = True
    include_measurements: bool = True
    include_identifiers: bool = False
    #: Draw masks and AI boxes made by untrained models (hidden by default: they are noise).
    show_untrained_overlays: bool = False
    template: str = "default"
    institution: str = ""


@dataclass
class MaskLayer:
    """One stored mask, decoded: an organ (``source="organ_seg"``) or an interactive result."""

    mask_id: str
    label: str
    source: str
    mask: np.ndarray = field(repr=False)
    area_px: int
    model_id: str | None = None
    area_cm2: float | None = None


@dataclass
class ImageExport:
    """One image of the session with everything known about it."""

    image: dict[str, Any]
    decoded: DecodedImage = field(repr=False)
    analyses: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    masks: list[MaskLayer] = field(default_factory=list)
    dicom: pydicom.Dataset | None = field(default=None, repr=False)
    #: Ids of the untrained models behind this session's results (set by :func:`gather`).
    untrained_models: frozenset[str] = frozenset()

    @property
    def image_id(self) -> str:
        return self.image["id"]

    def mask_untrained(self, mask: MaskLayer) -> bool:
        """Whether a stored mask was made by an untrained model (organ masks of the dev PSPNet, SAM's)."""
        return mask.model_id is not None and mask.model_id in self.untrained_models

    def annotation_untrained(self, annotation: dict[str, Any]) -> bool:
        """Whether an AI annotation may rest on an untrained model.

        When any model behind the session is untrained, an AI box counts as untrained
        unless its own analysis says ``model_trained: true``: an agent's box is placed
        and labelled from the classifier's candidates even when its region analysis ran
        no model itself. User drawings never are.
        """
        if annotation.get("source") != "ai" and annotation.get("layer") != "suggestions":
            return False
        if not self.untrained_models:
            return False
        linked = next((a for a in self.analyses if a.get("analysis_id") == annotation.get("analysis_id")), None)
        return linked is None or linked.get("model_trained") is not True

    def _newest(self, key: str) -> dict[str, Any] | None:
        for result in reversed(self.analyses):
            found = result.get(key)
            if isinstance(found, dict) and found.get("status", "ok") == "ok":
                return found
        return None

    @property
    def analysed(self) -> bool:
        return any(a["kind"] in ("analyze_image", "rag") for a in self.analyses)

    @property
    def regions(self) -> list[dict[str, Any]]:
        """Region analyses (``analyze_selected_region``), oldest first."""
        return [a for a in self.analyses if a["kind"] == "region"]

    @property
    def classification(self) -> dict[str, Any] | None:
        """The newest classifier result (from ``analyze_image`` or a RAG analysis)."""
        found = self._newest("classification")
        return found if found and found.get("findings") else None

    @property
    def segmentation(self) -> dict[str, Any] | None:
        """The newest organ segmentation result (organs with mask ids, areas, ratios)."""
        found = self._newest("segmentation")
        return found if found and found.get("organs") is not None else None

    @property
    def similar_cases(self) -> list[dict[str, Any]]:
        """The newest similar-case search (cases with similarity and report excerpt)."""
        found = self._newest("similar_cases") or {}
        return list(found.get("cases") or found.get("results") or [])

    @property
    def measurements(self) -> list[dict[str, Any]]:
        """Measurement annotations (type ``measure``/``line``) plus the segmentation's ratios."""
        out = [a for a in self.annotations if a["type"] in ("measurement",)]
        seg = self.segmentation or {}
        for item in seg.get("measurements") or []:
            out.append(item)
        return out


@dataclass
class ExportBundle:
    """A session as exports see it."""

    session: dict[str, Any]
    images: list[ImageExport]
    options: ExportOptions
    report: dict[str, Any] | None = None
    trace: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    generated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def model_trained(self) -> bool | None:
        """False when any model used was untrained; None when no model ran."""
        flags = [m.get("trained") for m in self.models if m.get("trained") is not None]
        return all(flags) if flags else None

    @property
    def banner(self) -> str | None:
        return UNTRAINED_BANNER if self.model_trained is False else None

    @property
    def session_id(self) -> str:
        return self.session["id"]

    def patient_block(self) -> dict[str, Any]:
        """The patient as exports print it: de-identified unless identifiers were asked for."""
        first = self.images[0].image.get("patient") if self.images else {}
        first = first or {}
        if self.options.include_identifiers:
            return {k: v for k, v in first.items() if v not in (None, "")} | {"deidentified": False}
        block: dict[str, Any] = {"deidentified": True, "case_id": (self.report or {}).get("case_id")}
        for key in ("PatientSex", "PatientAge", "sex", "age"):
            if first.get(key):
                block[key] = first[key]
        return block


def _models(images: list[ImageExport], run: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every model behind the exported results, once each (id, version, sha256, trained)."""
    seen: dict[str, dict[str, Any]] = {}

    def add(model: dict[str, Any] | None) -> None:
        if isinstance(model, dict) and model.get("id") and model["id"] not in seen:
            seen[model["id"]] = {k: model.get(k) for k in ("id", "task", "version", "sha256", "precision", "trained")}

    for item in images:
        for source in item.analyses:
            for model in (source or {}).get("models") or []:
                add(model)
            for key in ("classification", "segmentation"):
                add(((source or {}).get(key) or {}).get("model"))
            add(((source or {}).get("similar_cases") or {}).get("model"))
    for model in ((run or {}).get("state") or {}).get("models") or []:
        add(model)
    return list(seen.values())


def _dicom_header(data: bytes) -> pydicom.Dataset | None:
    """The source DICOM dataset (pixel data included, for SR/SEG references), or None."""
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - a PNG/JPEG source is not DICOM, and that is fine
        return None


def gather(services: Services, session_id: str, options: ExportOptions) -> ExportBundle:
    """Collect what the session holds for an export; ``missing`` names what it lacks."""
    if options.template not in TEMPLATES:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"template must be one of {', '.join(TEMPLATES)}")
    store = services.store
    session = store.get_session(session_id)
    rows = store.list_images(session_id)
    known = {r["id"] for r in rows}
    unknown = [i for i in options.include_images if i not in known]
    if unknown:
        raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, f"no image {unknown[0]!r} in this session")
    if options.include_images:
        rows = [r for r in rows if r["id"] in options.include_images]
    analyses = store.list_analyses(session_id)
    missing: list[str] = []
    if not rows:
        missing.append("the session has no images")
    images = []
    for row in rows:
        image, decoded = services.images.decoded_image(session_id, row["id"])
        mine = [a for a in analyses if a["image_id"] == row["id"]]
        item = ImageExport(image=image, decoded=decoded,
                           analyses=[a["result"] | {"analysis_id": a["id"], "kind": a["kind"]} for a in mine])
        if image["format"] == "dicom":
            item.dicom = _dicom_header(store.image_bytes(image))
        if options.include_annotations:
            item.annotations = [annotation_view(a) for a in store.list_annotations(session_id, row["id"])]
            latest_organs: str | None = None
            stored = store.list_masks(session_id, row["id"])
            organ_runs = [m["analysis_id"] for m in stored if m["source"] == "organ_seg"]
            latest_organs = organ_runs[-1] if organ_runs else None
            areas = {o.get("mask_id"): o.get("area_cm2") for o in ((item.segmentation or {}).get("organs") or [])}
            for mask in stored:
                if mask["source"] == "organ_seg" and mask["analysis_id"] != latest_organs:
                    continue
                item.masks.append(MaskLayer(mask_id=mask["id"], label=mask["label"], source=mask["source"],
                                            mask=decode_rle(mask["rle"]), area_px=int(mask["area_px"]),
                                            model_id=mask.get("model_id"), area_cm2=areas.get(mask["id"])))
        if not item.analysed:
            missing.append(f"image {row['id']} has not been analysed")
        images.append(item)
    run = report = trace = None
    if options.include_report:
        runs = store.list_agent_runs(session_id, status="completed")
        if runs:
            run = store.get_agent_run(runs[-1]["id"], session_id)
            report = run["report"]
            from engine.agent.trace import export_trace

            trace = export_trace(store, run["id"], session_id)
        else:
            missing.append("no completed agent run: the export has no narrative report or trace")
    bundle = ExportBundle(session=session, images=images, options=options, report=report, trace=trace, run=run,
                          models=_models(images, run), missing=missing)
    untrained = {m["id"] for m in bundle.models if m.get("trained") is False}
    for model_id in {m.model_id for item in images for m in item.masks} - {m["id"] for m in bundle.models} - {None}:
        try:  # a mask's model that no stored analysis names (an interactive SAM mask): the pack says
            if not services.models.pack.get(model_id).trained:
                untrained.add(model_id)
        except MedVisionError:
            log.info("mask model %s is not in the current pack: its training is unknown", model_id)
    for item in images:
        item.untrained_models = frozenset(untrained)
    return bundle
