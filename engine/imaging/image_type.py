"""Guess what kind of study an image is, so the right analysis pipeline is picked.

The result is one of :data:`engine.vocabulary.IMAGE_TYPES`, a short reason (never PHI: only tag values
such as the modality or a matched keyword are quoted) and a confidence in 0..1.

Rules for DICOM, first match wins (keyword tables in ``image_type_rules.json``):

1. ECG waveform SOP classes (12-lead, general, ambulatory, 32-bit) or Modality ECG
   -> ``EKG``.
2. Modality CT -> ``CT``, MR -> ``MRI``, US/IVUS -> ``US`` (confidence 0.95). Other
   modalities of PET/CT studies (PT) are not CT images and fall through to ``Other``.
3. Radiographs (Modality CR, DX, DR, RG): BodyPartExamined, then Study/Series
   Description, matched against the keyword tables: chest words -> ``CXR``, abdomen or
   kidney words -> ``KUB``; a spine/rib/shoulder word vetoes ``CXR``. With no hint, a
   PA ViewPosition -> ``CXR`` (0.5); any other body part -> ``Other`` naming it.
   Fluoroscopy (RF) and mammography (MG) are not plain films and give ``Other``.
4. Anything else (secondary capture, OT, missing modality): the SOP class name for
   CT/MR/US, then the descriptions (chest, abdomen, ECG words, confidence 0.6), else
   ``Other``.

PNG and JPEG carry no header, so a pixel heuristic is used, capped at 0.6 confidence
(computed on a strided subsample of about 64k pixels):

- very wide (width/height >= 1.6), mostly bright (>= 50 % of pixels above 200/255)
  with a small share (0.2 %..20 %) of dark pixels, i.e. thin dark traces on paper
  -> ``EKG`` (0.5);
- near-grayscale (< 1 % of pixels with a channel spread above 24/255), not mostly
  black (< 40 % of pixels below 20/255, which rules out CT/MR/US frames), aspect ratio
  0.7..1.45 and the short side >= 256 px, the look of a chest film -> ``CXR`` (0.4);
- otherwise ``Other`` (0.3).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

import numpy as np


class ImageTypeGuess(NamedTuple):
    """The detected image type, why it was chosen and how sure the rule is."""

    image_type: str
    reason: str
    confidence: float


@lru_cache(maxsize=1)
def _rules() -> dict[str, Any]:
    """Load the keyword tables shipped as package data (read once per process)."""
    text = resources.files("engine.imaging").joinpath("image_type_rules.json").read_text("utf-8")
    return json.loads(text)


def _words(text: Any) -> list[str]:
    """Split a tag value (string or multi-value) into upper-case words."""
    if isinstance(text, list | tuple):
        text = " ".join(str(part) for part in text)
    return re.findall(r"[A-Z]+", str(text or "").upper())


def _match(words: Iterable[str], keywords: Iterable[str]) -> str | None:
    """Return the first keyword that starts one of ``words``, or None."""
    words = list(words)
    for keyword in keywords:
        if any(word.startswith(keyword) for word in words):
            return keyword
    return None


def _keyword_type(text: Any) -> tuple[str, str] | None:
    """Map free text (body part, description) to (image type, matched keyword)."""
    words = _words(text)
    rules = _rules()
    for image_type, keywords in rules["keywords"].items():
        keyword = _match(words, keywords)
        if keyword is None:
            continue
        if image_type == "CXR" and _match(words, rules["not_chest"]):
            return None
        return image_type, keyword
    return None


def detect_image_type(
    metadata: Mapping[str, Any] | None = None, image: np.ndarray | None = None
) -> ImageTypeGuess:
    """Classify an image as CXR, KUB, CT, MRI, US, EKG or Other.

    Parameters
    ----------
    metadata:
        DICOM keywords to values, as in ``DecodedImage.metadata`` (Modality,
        SOPClassUID, BodyPartExamined, ViewPosition, StudyDescription,
        SeriesDescription). Empty or None for PNG/JPEG.
    image:
        The decoded raster (HxW or HxWx3); used only when there is no DICOM header.

    Returns
    -------
    ImageTypeGuess
        ``(image_type, reason, confidence)``; see the module docstring for the rules.
    """
    metadata = metadata or {}
    if metadata.get("Modality") or metadata.get("SOPClassUID"):
        return _dicom_guess(metadata)
    if image is not None and image.size:
        return _raster_guess(image)
    return ImageTypeGuess("Other", "No header and no pixels to go on.", 0.0)


def _dicom_guess(metadata: Mapping[str, Any]) -> ImageTypeGuess:
    """Apply the DICOM header rules (module docstring, rules 1-4)."""
    rules = _rules()
    modality = str(metadata.get("Modality") or "").upper()
    sop_class_uid = str(metadata.get("SOPClassUID") or "")
    sop_name = str(metadata.get("SOPClassName") or "")

    if sop_class_uid in rules["ecg_sop_classes"]:
        name = rules["ecg_sop_classes"][sop_class_uid]
        return ImageTypeGuess("EKG", f"SOP class is {name}.", 0.98)
    if modality in rules["modalities"]:
        return ImageTypeGuess(rules["modalities"][modality], f"Modality is {modality}.", 0.95)

    descriptions = [metadata.get("StudyDescription"), metadata.get("SeriesDescription")]
    if modality in rules["radiograph_modalities"]:
        body_part = str(metadata.get("BodyPartExamined") or "").strip().upper()
        hit = _keyword_type(body_part)
        if hit:
            return ImageTypeGuess(
                hit[0], f"{modality} radiograph, BodyPartExamined is {body_part}.", 0.9
            )
        hit = _keyword_type(descriptions)
        if hit:
            reason = f"{modality} radiograph, description mentions {hit[1]}."
            return ImageTypeGuess(hit[0], reason, 0.75)
        if body_part:
            return ImageTypeGuess(
                "Other", f"{modality} radiograph of {body_part}, not chest or abdomen.", 0.85
            )
        view = str(metadata.get("ViewPosition") or "").strip().upper()
        if view in rules["chest_view_positions"]:
            reason = f"{modality} radiograph in {view} view, no body part given."
            return ImageTypeGuess("CXR", reason, 0.5)
        return ImageTypeGuess("Other", f"{modality} radiograph of an unknown body part.", 0.4)

    for fragment, image_type in rules["sop_class_name_hints"].items():
        if fragment in sop_name:
            return ImageTypeGuess(image_type, f"SOP class is {sop_name}.", 0.8)
    hit = _keyword_type(descriptions)
    if hit:
        reason = f"Modality {modality or 'unknown'}, description mentions {hit[1]}."
        return ImageTypeGuess(hit[0], reason, 0.6)
    kind = f"Modality {modality}" if modality else f"SOP class {sop_name or sop_class_uid}"
    return ImageTypeGuess("Other", f"{kind} is not one of the supported image types.", 0.8)


def _raster_guess(image: np.ndarray) -> ImageTypeGuess:
    """Pixel heuristic for PNG/JPEG (module docstring, lower confidence)."""
    height, width = image.shape[:2]
    step = max(1, int(np.sqrt(height * width / 65536)))
    sample = image[::step, ::step].astype(np.float32)
    peak = float(sample.max())
    if peak > 255:  # 16-bit data: bring the used range to 0..255
        sample *= 255.0 / peak
    if sample.ndim == 3:
        coloured = float(np.mean(np.ptp(sample[..., :3], axis=-1) > 24))
        gray = sample[..., :3].mean(axis=-1)
    else:
        coloured, gray = 0.0, sample
    aspect = width / height
    bright = float(np.mean(gray > 200))
    dark = float(np.mean(gray < 110))
    black = float(np.mean(gray < 20))

    if aspect >= 1.6 and bright >= 0.5 and 0.002 <= dark <= 0.2:
        return ImageTypeGuess(
            "EKG", "Wide, mostly bright image with thin dark traces, like an ECG printout.", 0.5
        )
    if coloured < 0.01 and black < 0.4 and 0.7 <= aspect <= 1.45 and min(height, width) >= 256:
        return ImageTypeGuess(
            "CXR", "Grayscale image with the size and shape of a chest radiograph.", 0.4
        )
    return ImageTypeGuess("Other", "No header; pixels match no known layout.", 0.3)

