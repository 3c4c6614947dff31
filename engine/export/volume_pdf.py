"""A volume's structures as a PDF: key slices and the measurement table (reportlab, as the 2D report).

For each structure: the axial slice where its area is largest and the coronal plane where it is
largest, windowed with the structure's CT preset (lung window for the lungs and airways, bone
window for bone, soft tissue otherwise), the mask filled and outlined over it. Then one table:
structure, volume (mL), mean HU, SD, voxel count and method / backend, from the same masks
(:func:`engine.analysis.volume.roi.roi_mask_stats`). Where the structures come from is stated:
a classical method says that no trained model was used; an untrained model's output opens each
section with :data:`engine.vocabulary.UNTRAINED_OUTPUTS` and every page carries the red banner.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.platypus import Image, KeepTogether, Spacer, Table, TableStyle

from engine.analysis.volume.anatomy import AnatomyResult, segment_anatomy
from engine.analysis.volume.roi import roi_mask_stats
from engine.errors import ErrorCode, MedVisionError
from engine.export.artifact import Artifact
from engine.export.pdf import (
    BANNER_STYLE,
    BODY,
    HEADING,
    MARGIN,
    SMALL,
    TITLE,
    build_pdf,
    grid_table,
    paragraph,
)
from engine.export.planes import picture_with_mask, plane_window, windowed_picture
from engine.export.render import ORGAN_PALETTE
from engine.imaging.decode import CT_PRESETS
from engine.imaging.volume.planes import plane_pixels, plane_spacing
from engine.vocabulary import DISCLAIMER, UNTRAINED_BANNER, UNTRAINED_OUTPUTS

if TYPE_CHECKING:
    from engine.analysis.volume.unet import VolumeSegmentation
    from engine.imaging.volume import Volume
    from engine.services import Services

#: Longest side of a key slice in pixels (embedded as JPEG).
PICTURE_MAX_SIDE = 512
#: The CT window each structure is shown in (others: soft tissue).
STRUCTURE_WINDOWS = {"lung_left": "Lung", "lung_right": "Lung", "airways": "Lung", "bone": "Bone"}
SOFT_TISSUE = "Soft tissue (mediastinum, abdomen)"
KEY_PLANES = ("axial", "coronal")
CLASSICAL_BACKEND = "numpy (CPU), no model"


@dataclass(frozen=True)
class StructureSource:
    """The masks a report shows and where they came from: a classical method (``trained`` None) or a model."""

    names: tuple[str, ...]
    mask: Callable[[str], np.ndarray]
    method: str
    backend: str
    trained: bool | None

    @property
    def provenance(self) -> str:
        """One sentence on where the structures come from."""
        if self.trained is None:
            return (f"Structures from {self.method}: a classical method (Hounsfield-unit thresholds and "
                    "connectivity); no trained model was used.")
        weights = "trained weights" if self.trained else "untrained development weights"
        return f"Structures from the model {self.method} ({self.backend}), {weights}."


def anatomy_source(result: AnatomyResult) -> StructureSource:
    """The structures :func:`segment_anatomy` found (a classical method)."""
    return StructureSource(tuple(s.name for s in result.structures if s.found), result.mask, result.method,
                           CLASSICAL_BACKEND, None)


def model_source(segmentation: VolumeSegmentation) -> StructureSource:
    """The structures a ``segment3d`` model found (:func:`engine.analysis.volume.unet.segment_ct`)."""
    model = segmentation.model or {}
    name = str(model.get("id") or model.get("name") or "segment3d model")
    return StructureSource(tuple(s.name for s in segmentation.structures), segmentation.mask, name,
                           segmentation.backend, bool(segmentation.trained))


def key_slice(mask: np.ndarray, plane: str, spacing_zyx: tuple[float, float, float]) -> dict[str, Any]:
    """The ``plane`` (axial: slice z; coronal: row y) where ``mask`` covers the largest area, first on a tie."""
    axes = {"axial": (1, 2), "coronal": (0, 2)}[plane]
    counts = mask.sum(axis=axes)
    index = int(np.argmax(counts))
    row_mm, column_mm = plane_spacing(spacing_zyx, plane)
    return {"plane": plane, "index": index, "pixels": int(counts[index]),
            "area_cm2": round(float(counts[index]) * row_mm * column_mm / 100, 2)}


def measurement_row(voxels: np.ndarray, spacing_zyx: tuple[float, float, float], name: str, mask: np.ndarray,
                    source: StructureSource) -> dict[str, Any]:
    """One structure's table row (values rounded as printed)."""
    stats = roi_mask_stats(voxels, spacing_zyx, mask)
    return {"structure": name, "volume_ml": round(stats.volume_ml, 2),
            "mean_hu": None if stats.mean_hu is None else round(stats.mean_hu, 1),
            "sd_hu": None if stats.sd_hu is None else round(stats.sd_hu, 1), "voxel_count": stats.voxel_count,
            "method": f"{source.method} / {source.backend}"}


@dataclass(frozen=True)
class VolumeReport:
    """The PDF and what it prints (JSON-safe): the measurement rows and the key slices."""

    pdf: bytes
    measurements: list[dict[str, Any]]
    key_slices: list[dict[str, Any]]
    images: int

    def summary(self) -> dict[str, Any]:
        return {"measurements": self.measurements, "key_slices": self.key_slices, "images": self.images,
                "bytes": len(self.pdf)}


def _window(values: np.ndarray, modality: str, name: str) -> tuple[float, float]:
    if modality in ("CT", ""):
        return CT_PRESETS[STRUCTURE_WINDOWS.get(name, SOFT_TISSUE)]
    return plane_window(values, modality)


def _picture(volume: Volume, mask: np.ndarray, key: dict[str, Any], name: str, color: tuple[int, int, int],
             width: float) -> list[Any]:
    """A key slice as a JPEG flowable (``width`` wide at most) with its caption."""
    values = plane_pixels(volume.voxels, key["plane"], key["index"])
    window = _window(values, volume.modality, name)
    picture = windowed_picture(values, plane_spacing(volume.spacing_zyx, key["plane"]), window, PICTURE_MAX_SIDE)
    picture = picture_with_mask(picture, plane_pixels(mask, key["plane"], key["index"]), color)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=88)
    buffer.seek(0)
    scale = min(width / picture.width, 95 * mm / picture.height)
    axis = "z" if key["plane"] == "axial" else "y"
    caption = (f"{key['plane']} {axis} = {key['index']}: largest area, {key['area_cm2']:.2f} cm2; "
               f"window C {window[0]:g} / W {window[1]:g}")
    return [Image(buffer, width=picture.width * scale, height=picture.height * scale), paragraph(caption, SMALL)]


def _lead(source: StructureSource) -> list[Any]:
    """The untrained-models sentence that opens a section of an untrained model's output (else nothing)."""
    return [paragraph(UNTRAINED_OUTPUTS, BANNER_STYLE)] if source.trained is False else []


def _cell(value: Any, suffix: str = "") -> str:
    return "" if value is None else f"{value}{suffix}"


def volume_report(volume: Volume, source: StructureSource) -> VolumeReport:
    """The PDF of ``source``'s structures over ``volume`` (see the module docstring). EXPORT_FAILED when the
    masks and the volume disagree in shape or there is no structure to show."""
    if not source.names:
        raise MedVisionError(ErrorCode.EXPORT_FAILED, "no structure was found: nothing to report")
    width = (A4[0] - 2 * MARGIN) / 2 - 3 * mm
    summary = volume.summary()
    x, y, z = summary["dimensions_xyz"]
    dz, dy, dx = summary["spacing_zyx_mm"]
    story: list[Any] = [
        paragraph("MedVision volume report", TITLE),
        paragraph(f"{summary['series_description'] or 'Volume'} ({volume.modality or 'volume'}), series "
                  f"{volume.series_uid or 'not given'}: {x} x {y} x {z} voxels, spacing {dx:.3f} x {dy:.3f} x "
                  f"{dz:.3f} mm, {len(volume.warnings)} assembly warning(s)."),
        paragraph(source.provenance, BODY),
        paragraph("Key slices", HEADING), *_lead(source),
    ]
    rows, keys, images = [], [], 0
    for number, name in enumerate(source.names):
        mask = source.mask(name)
        if mask.shape != volume.voxels.shape:
            raise MedVisionError(ErrorCode.EXPORT_FAILED, f"the mask of {name} is {mask.shape}, the volume "
                                 f"{volume.voxels.shape}", structure=name)
        rows.append(measurement_row(volume.voxels, volume.spacing_zyx, name, mask, source))
        color = ORGAN_PALETTE[number % len(ORGAN_PALETTE)]
        pair = [key_slice(mask, plane, volume.spacing_zyx) for plane in KEY_PLANES]
        keys += [{"structure": name, **key} for key in pair]
        cells = [_picture(volume, mask, key, name, color, width) for key in pair]
        images += len(cells)
        grid = Table([cells], colWidths=[width + 3 * mm] * len(cells), hAlign="LEFT")
        grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
        story.append(KeepTogether([paragraph(name.replace("_", " "), HEADING), grid]))
        del mask
    story += [paragraph("Measurements", HEADING), *_lead(source), grid_table(
        ["Structure", "Volume (mL)", "Mean HU", "SD", "Voxels", "Method / backend"],
        [[r["structure"], f"{r['volume_ml']:.2f}", _cell(r["mean_hu"]), _cell(r["sd_hu"]), str(r["voxel_count"]),
          r["method"]] for r in rows],
        [28 * mm, 22 * mm, 18 * mm, 15 * mm, 20 * mm, 77 * mm])]
    story += [paragraph(source.provenance, SMALL), Spacer(1, 4 * mm), paragraph(DISCLAIMER, HEADING)]
    pdf = build_pdf(story, banner=UNTRAINED_BANNER if source.trained is False else None,
                    title=f"MedVision volume report, series {volume.series_uid or ''}".strip(),
                    footer="MedVision volume report, page {page}")
    return VolumeReport(pdf, rows, keys, images)


def export_volume_report(services: Services, session_id: str, output_path: str | Path | None = None,
                         structures: list[str] | str | None = None, series_uid: str | None = None,
                         stack: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """A stored CT's structures (:func:`segment_anatomy`, no trained model) as a volume report PDF written to
    ``output_path`` (default: the export folder); the same checks and atomic write as every export."""
    from engine.export.service import check_targets, write_atomically

    volume = services.volumes.volume(session_id, series_uid, stack)
    if volume.modality not in ("CT", ""):
        raise MedVisionError(ErrorCode.INVALID_IMAGE_TYPE,
                             f"the volume report needs a CT (Hounsfield units); this series is {volume.modality}")
    result = segment_anatomy(volume.voxels, volume.affine,
                             structures=structures or ("body", "lungs", "airways", "bone"))
    report = volume_report(volume, anatomy_source(result))
    artifact = Artifact(f"{session_id}_volume_report.pdf", report.pdf, "application/pdf")
    target = Path(output_path) if output_path else services.settings.export_root / artifact.name
    check_targets(services, [target], overwrite=overwrite)
    write_atomically(target.parent, [artifact], target, overwrite=overwrite)
    return {"path": str(target), "series_uid": volume.series_uid, "segmentation": result.to_dict(),
            "model_trained": False, **report.summary()}
