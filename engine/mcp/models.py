"""Pydantic types of the MCP tools: argument shapes and results.

Results declare the fields an agent usually needs, with descriptions; the engine's other
fields pass through unchanged (``extra="allow"``), so the output schema documents the
contract without duplicating every engine result.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
SessionId = Annotated[Id, Field(description="A study session id (from create_study_session).")]
ImageId = Annotated[Id | None, Field(description="An image id of the session; default: its current image.")]
ImageType = Literal["CXR", "KUB", "CT", "MRI", "US", "EKG", "Other"]
Preset = Literal["quick", "full", "segment_only", "report_only"]
RegionAction = Literal["describe", "segment", "measure", "classify", "rag_search", "compare"]
ExportFormat = Literal["pdf", "dicom_sr", "dicom_seg", "dicom_sc", "dicom_pdf", "dicom", "json",
                       "png_annotated", "html"]
CanvasAction = Literal["add_layer", "update_layer", "remove_layer", "highlight", "animate", "add_annotations"]
InputType = Literal["select_region", "confirm", "choose", "draw"]
AgentMode = Literal["auto", "interactive", "step_by_step"]
RagMode = Literal["quick", "full", "rag_only"]
AnnotationType = Literal["bbox", "polygon", "point", "freehand", "mask"]
SeriesUid = Annotated[str | None, Field(max_length=64, pattern=r"^[0-9.]+$", description=(
    "A SeriesInstanceUID from list_series; default: the session's one volume series."))]
StackKey = Annotated[str | None, Field(max_length=200, description=(
    "A stack from list_series; default: the series' main stack."))]
VolumeStructure = Literal["body", "lungs", "airways", "bone"]


class AnalysisOptions(BaseModel):
    """Which analyses to run; a preset overrides the switches."""

    model_config = ConfigDict(extra="forbid")
    preset: Preset | None = Field(None, description="quick (classify), full (all), segment_only, report_only.")
    classify: bool = Field(True, description="Multi-label finding classification.")
    detect: bool = Field(False, description="Lesion detection; the result says 'unavailable' without a detection model.")
    segment: bool = Field(False, description="Organ segmentation (lungs, heart...).")
    generate_report: bool = Field(False, description="A narrative report; 'unavailable' without a language model.")
    classification_threshold: float = Field(0.5, ge=0, le=1, description="Probability above which a finding is positive.")
    segment_organs: list[str] | None = Field(None, description="Organs to segment; default: all the model knows.")
    force: bool = Field(False, description="Run even when the image type is not one the model was made for.")


class Region(BaseModel):
    """A region of the image, in the coordinates of the displayed frame (origin top-left)."""

    model_config = ConfigDict(extra="forbid")
    type: AnnotationType = Field(description="bbox [x1,y1,x2,y2]; polygon/freehand [[x,y],...]; point [x,y]; mask RLE.")
    coordinates: Any = Field(description="Coordinates in the shape the type asks for.")
    format: Literal["pixel", "relative"] = Field("pixel", description="pixel, or relative (0..1 of width/height).")
    radius_px: float | None = Field(None, gt=0, description="For a point: the radius of the disc around it.")


class Result(BaseModel):
    """An engine result; fields beyond the declared ones pass through."""

    model_config = ConfigDict(extra="allow")


class SessionCreated(Result):
    session_id: str = Field(description="The new session's id; its resources are medvision://session/{session_id}/...")
    name: str | None = Field(None, description="The session's name.")
    created_at: str | None = Field(None, description="ISO 8601 creation time.")


class SessionStatus(Result):
    session_id: str = Field(description="The session's id.")
    images: list[dict[str, Any]] = Field(description="Its images: id, type, modality, size, spacing, analyzed; "
                                         "a slice of a volume also its series_uid, stack and z.")
    series: list[dict[str, Any]] = Field(default_factory=list, description=(
        "Volume series, one entry per stack (geometry, slice count, warnings): show these, not each slice."))
    current_image: str | None = Field(None, description="The image tools use when no image_id is given.")
    total_annotations: int = Field(0, description="Annotations in the session.")
    total_analyses: int = Field(0, description="Stored analyses in the session.")


class ImageSwitched(Result):
    session_id: str = Field(description="The session's id.")
    current_image: str = Field(description="The new current image.")
    image: dict[str, Any] = Field(description="Its summary.")


class ImageAdded(Result):
    session_id: str = Field(description="The session's id.")
    image_id: str = Field(description="The new image's id (now the current image).")
    type: str = Field(description="Image type, given or detected (CXR, KUB, CT, MRI, US, EKG, Other).")
    quality_warnings: list[Any] = Field(default_factory=list, description="Ingest quality checks that failed.")
    auto_analysis: dict[str, Any] | None = Field(None, description="The automatic analysis, or why it was skipped.")


class Analysis(Result):
    session_id: str = Field(description="The session's id.")
    image_id: str = Field(description="The analysed image.")
    analysis_id: str = Field(description="The stored analysis.")
    classification: dict[str, Any] | None = Field(None, description="Findings with probabilities and positives.")
    segmentation: dict[str, Any] | None = Field(None, description="Organs with areas and mask ids, or unavailable.")
    detections: dict[str, Any] | None = Field(None, description="Detections, or {status: unavailable, reason}.")
    report: dict[str, Any] | None = Field(None, description="The report, or {status: unavailable, reason}.")
    model_trained: bool | None = Field(None, description="False: development models, output not meaningful.")


class RegionAnalysis(Result):
    session_id: str = Field(description="The session's id.")
    image_id: str = Field(description="The image the region is on.")
    analysis_id: str = Field(description="The stored region analysis.")
    annotation_id: str = Field(description="The AI annotation kept for the region.")
    region_info: dict[str, Any] = Field(description="Bounds, area, pixel statistics and anatomy of the region.")
    confidence_summary: dict[str, Any] = Field(description="Confidence per section and overall.")


class AnnotationResult(Result):
    annotation_id: str = Field(description="The annotation's id.")
    annotation: dict[str, Any] | None = Field(None, description="The annotation as stored (pixel coordinates).")


class Annotations(Result):
    session_id: str = Field(description="The session's id.")
    annotations: list[dict[str, Any]] = Field(description="Annotations, oldest first.")
    count: int = Field(description="How many.")


class AnalysisSummary(Result):
    session_id: str = Field(description="The session's id.")
    images: list[dict[str, Any]] = Field(description="Per image: analyzed, top findings, positive findings.")
    model_trained: bool | None = Field(None, description="False: development models, output not meaningful.")


class Export(Result):
    export_path: str = Field(description="The file or folder written.")
    format: str = Field(description="The export format.")
    sha256: str | None = Field(None, description="SHA-256 of the file (one-file formats).")
    files: list[Any] = Field(default_factory=list, description="The files written.")


class Visualization(Result):
    session_id: str = Field(description="The session's id.")
    image_id: str = Field(description="The image shown.")
    image_path: str | None = Field(None, description="The PNG file, only where one was asked for; the "
                                   "PNG itself comes back as image content.")
    width: int = Field(description="PNG width in pixels.")
    height: int = Field(description="PNG height in pixels.")
    layers: list[Any] = Field(description="The layers: drawn ones say visible true; those of untrained models "
                              "are listed with visible false unless show_untrained_overlays.")
    hidden_note: str | None = Field(None, description="Which overlays of untrained models were left out, and why.")


class AgentResult(Result):
    status: str = Field(description="completed, need_input, in_progress or failed.")
    run_id: str | None = Field(None, description="The run; pass context.run_id to resume it.")
    result: dict[str, Any] | None = Field(None, description="summary, findings, annotations, report.")


class UserInputRequest(Result):
    request_id: str = Field(description="Poll it with get_user_input, or watch medvision://session/{id}/agent_message.")
    status: str = Field(description="pending, answered or cancelled.")
    user_input: Any = Field(None, description="The user's answer once answered.")


class Answer(Result):
    answer: str = Field(description="The answer, grounded in the stored analyses.")
    sources: list[Any] = Field(default_factory=list, description="The tool outputs the answer cites.")
    confidence: Any = Field(None, description="Confidence of the answer, when known.")


class SeriesList(Result):
    session_id: str = Field(description="The session's id.")
    series: list[dict[str, Any]] = Field(description=(
        "Each volume series: series_uid, modality, description and its stacks, each with slices, shape_zyx, "
        "spacing_zyx_mm, orientation (LPS letters), affine_lps (voxel x,y,z -> patient mm) and warnings."))
    notes: list[str] = Field(default_factory=list, description="Images or series left out, and why.")


class VolumeRoi(Result):
    series_uid: str | None = Field(description="The series measured.")
    stack: str = Field(description="The stack measured.")
    roi: dict[str, Any] = Field(description="The box (voxel indices) or sphere (centre in mm and in voxels).")
    statistics: dict[str, Any] = Field(description="voxel_count, volume_ml, mean/sd/min/max in HU.")
    unit: str = Field(description="HU for CT.")
    warnings: list[dict[str, Any]] = Field(default_factory=list, description="Irregularities of the volume.")


class VolumeSegmentation(Result):
    series_uid: str | None = Field(description="The series segmented.")
    segmentation: dict[str, Any] = Field(description="method and each structure's found flag, voxels and mL.")
    model_trained: bool = Field(description="Always false: HU thresholds and connectivity, no trained model.")
    warnings: list[dict[str, Any]] = Field(default_factory=list, description="Irregularities of the volume.")


class EngineResult(Result):
    """A result whose fields are documented by the engine method of the same name."""
