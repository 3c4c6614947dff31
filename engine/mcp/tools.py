"""The MCP tools: one per product-spec tool, each a typed call of the Engine method of that name.

Every call runs through :meth:`engine.mcp.context.AppContext.call` (per-session lock,
worker thread, time limit). Paths an agent passes are checked by :mod:`engine.mcp.paths`
first. Errors surface as ``isError`` results (see :func:`engine.mcp.server.error_result`).
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from mcp import types
from mcp.server.fastmcp import Context, FastMCP
from pydantic import Field

from engine.api import Engine
from engine.mcp import paths
from engine.mcp.context import app_context
from engine.mcp.models import (
    AgentMode,
    AgentResult,
    Analysis,
    AnalysisOptions,
    AnalysisSummary,
    AnnotationResult,
    Annotations,
    AnnotationType,
    Answer,
    CanvasAction,
    EngineResult,
    Export,
    ExportFormat,
    Id,
    ImageAdded,
    ImageId,
    ImageSwitched,
    ImageType,
    InputType,
    Preset,
    RagMode,
    Region,
    RegionAction,
    RegionAnalysis,
    Result,
    SeriesList,
    SeriesUid,
    SessionCreated,
    SessionId,
    SessionStatus,
    StackKey,
    UserInputRequest,
    Visualization,
    VolumeRoi,
    VolumeSegmentation,
    VolumeStructure,
)

R = TypeVar("R", bound=Result)
TopK = Annotated[int, Field(ge=1, le=50, description="How many similar cases.")]
Text = Annotated[str, Field(min_length=1, max_length=4000)]
#: get_visualization returns its PNG inline (base64), so it stays a thumbnail.
MAX_SIDE = 1024


async def _call(ctx: Context, model: type[R], key: str | None, method: Callable[..., Any], *args: Any,
                announce: bool = False, **kwargs: Any) -> R:
    """``method`` (an ``Engine`` method) bound to the app's engine, run through the app's runner,
    validated as ``model``."""
    app = app_context(ctx)
    result = await app.call(ctx, key, method.__get__(app.engine), *args, announce=announce, **kwargs)
    return model.model_validate(result)


async def _pacs_call(ctx: Context, key: str | None, operation: str, *args: Any, announce: bool = False,
                     **kwargs: Any) -> EngineResult:
    """``dicom_node.pacs.client.<operation>(engine, ...)``: the network side, imported when a PACS tool runs."""
    from dicom_node.pacs import client

    app = app_context(ctx)
    function = getattr(client, operation)
    result = await app.call(ctx, key, function, app.engine, *args, announce=announce, **kwargs)
    return EngineResult.model_validate(result)


def register(app: FastMCP) -> None:
    """Add every tool to ``app``."""
    tool = app.tool

    # -- sessions and images -----------------------------------------------------------
    @tool()
    async def create_study_session(
        ctx: Context,
        name: Annotated[str | None, Field(max_length=200, description="A name for the study (no patient names).")] = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="Free JSON metadata.")] = None,
    ) -> SessionCreated:
        """Create a new study session; returns its id and the URIs of its resources. It is kept 24 hours
        after its last change (MEDVISION_RETAIN_MCP_HOURS) unless pinned; then it answers SESSION_EXPIRED."""
        return await _call(ctx, SessionCreated, None, Engine.create_study_session, name, metadata, "mcp")

    @tool()
    async def add_image_to_session(
        ctx: Context, session_id: SessionId,
        image_path: Annotated[str, Field(min_length=1, max_length=4096, description=(
            "Absolute path of a DICOM, PNG or JPEG file under an allowed root "
            "(--root, MEDVISION_MCP_ROOTS or the client's roots)."))],
        image_type: Annotated[ImageType | None, Field(description="Override the detected image type.")] = None,
        auto_analyze: Annotated[bool, Field(description="Run the quick analysis on CXR images.")] = True,
        analysis_config: Annotated[AnalysisOptions | None, Field(description="The automatic analysis.")] = None,
        frame: Annotated[int, Field(ge=0, description="Frame of a multi-frame image.")] = 0,
    ) -> ImageAdded:
        """Add an image file to a session (stored encrypted); it becomes the current image."""
        path = paths.image_file(image_path, await app_context(ctx).allowed_roots(ctx))
        config = analysis_config.model_dump(exclude_none=True) if analysis_config else None
        return await _call(ctx, ImageAdded, session_id, Engine.add_image_to_session, session_id, str(path), image_type,
                           auto_analyze, config, frame, announce=True)

    @tool()
    async def get_session_status(ctx: Context, session_id: SessionId) -> SessionStatus:
        """A session's images, current image and annotation/analysis counts."""
        return await _call(ctx, SessionStatus, session_id, Engine.get_session_status, session_id)

    @tool()
    async def delete_session(ctx: Context, session_id: SessionId) -> EngineResult:
        """Erase a session and everything derived from it: images, analyses, masks, annotations,
        cached embeddings, kept exports, queued results. It cannot be undone."""
        return await _call(ctx, EngineResult, session_id, Engine.delete_session, session_id)

    @tool()
    async def pin_session(ctx: Context, session_id: SessionId,
                          pinned: Annotated[bool, Field(description="False unpins it.")] = True) -> EngineResult:
        """Keep a session past the retention policy (or, with pinned false, let the policy apply again)."""
        return await _call(ctx, EngineResult, session_id, Engine.pin_session, session_id, pinned)

    @tool()
    async def switch_image(ctx: Context, session_id: SessionId,
                           image_id: Annotated[Id, Field(description="The image to focus.")]) -> ImageSwitched:
        """Make another image of the session the current one."""
        return await _call(ctx, ImageSwitched, session_id, Engine.switch_image, session_id, image_id)

    # -- volumes -----------------------------------------------------------------------
    @tool()
    async def list_series(ctx: Context, session_id: SessionId) -> SeriesList:
        """The session's volume series (CT, MR...) with their stacks: slice count, voxel shape, spacing,
        orientation, the affine to patient mm and every warning (gaps, tilt...); no pixel is decoded."""
        return await _call(ctx, SeriesList, session_id, Engine.list_series, session_id)

    @tool()
    async def volume_roi(
        ctx: Context, session_id: SessionId, series_uid: SeriesUid = None, stack: StackKey = None,
        box: Annotated[list[int] | None, Field(min_length=6, max_length=6, description=(
            "[x1, y1, z1, x2, y2, z2] voxel indices, inclusive: x column, y row, z the slice in the sorted stack."))]
        = None,
        center_mm: Annotated[list[float] | None, Field(min_length=3, max_length=3, description=(
            "A sphere's centre in patient LPS mm (with radius_mm) instead of a box."))] = None,
        radius_mm: Annotated[float | None, Field(gt=0, le=500, description="The sphere's radius in mm.")] = None,
    ) -> VolumeRoi:
        """HU statistics (mean, SD, min, max) and volume in mL of a 3D box or sphere of a stored series."""
        return await _call(ctx, VolumeRoi, session_id, Engine.volume_roi, session_id, box=box, center_mm=center_mm,
                           radius_mm=radius_mm, series_uid=series_uid, stack=stack)

    @tool()
    async def segment_volume(
        ctx: Context, session_id: SessionId, series_uid: SeriesUid = None, stack: StackKey = None,
        structures: Annotated[list[VolumeStructure] | None, Field(description=(
            "Some of body, lungs, airways, bone; default all."))] = None,
    ) -> VolumeSegmentation:
        """Body, left and right lung, airways and bone of a stored CT with each volume in mL, from HU
        thresholds and 3D connectivity (no trained model)."""
        return await _call(ctx, VolumeSegmentation, session_id, Engine.segment_volume, session_id, structures,
                           series_uid, stack)

    # -- analysis ----------------------------------------------------------------------
    @tool()
    async def analyze_image(
        ctx: Context, session_id: SessionId, image_id: ImageId = None,
        preset: Annotated[Preset | None, Field(description="quick, full, segment_only or report_only; "
                                               "overrides the switches.")] = None,
        classify: Annotated[bool, Field(description="Classify findings.")] = True,
        detect: Annotated[bool, Field(description="Detect lesions (unavailable without a detection model).")] = False,
        segment: Annotated[bool, Field(description="Segment organs.")] = False,
        generate_report: Annotated[bool, Field(description="Write a report (needs a language model).")] = False,
        classification_threshold: Annotated[float, Field(ge=0, le=1, description="Positive above this.")] = 0.5,
        segment_organs: Annotated[list[str] | None, Field(description="Organs to segment (default all).")] = None,
        force: Annotated[bool, Field(description="Run on image types the models were not made for.")] = False,
    ) -> Analysis:
        """Analyse an image (classification, detection, segmentation, report) and store the result."""
        return await _call(ctx, Analysis, session_id, Engine.analyze_image, session_id, image_id, classify=classify,
                           detect=detect, segment=segment, generate_report=generate_report,
                           classification_threshold=classification_threshold, segment_organs=segment_organs,
                           preset=preset, force=force, announce=True)

    @tool()
    async def ask_about_image(
        ctx: Context, session_id: SessionId, question: Annotated[Text, Field(description="The question.")],
        image_id: ImageId = None,
        include_context: Annotated[bool, Field(description="Use the stored analyses as context.")] = True,
    ) -> Answer:
        """Answer a question about an image from its analyses, citing the tool outputs used."""
        return await _call(ctx, Answer, session_id, Engine.ask_about_image, session_id, question, image_id,
                           include_context, announce=True)

    @tool()
    async def analyze_selected_region(
        ctx: Context, session_id: SessionId, region: Annotated[Region, Field(description="The region.")],
        question: Annotated[str | None, Field(max_length=4000, description="What to look for.")] = None,
        actions: Annotated[list[RegionAction], Field(min_length=1, description="What to do with the region.")] = [  # noqa: B006 - FastMCP copies defaults
            "describe"],
        image_id: ImageId = None, top_k: TopK = 5,
    ) -> RegionAnalysis:
        """Analyse a selected region (describe, segment, measure, classify, rag_search, compare); keeps it as an AI annotation."""
        return await _call(ctx, RegionAnalysis, session_id, Engine.analyze_selected_region, session_id,
                           region.model_dump(exclude_none=True), question, list(actions), image_id, top_k,
                           announce=True)

    # -- annotations -------------------------------------------------------------------
    @tool()
    async def add_annotation(
        ctx: Context, session_id: SessionId,
        annotation_type: Annotated[AnnotationType, Field(description="Shape of the annotation.")],
        coordinates: Annotated[Any, Field(description="bbox [x1,y1,x2,y2]; polygon/freehand [[x,y],...]; "
                                          "point [x,y]; mask RLE; image pixels, origin top-left.")],
        label: Annotated[str, Field(max_length=200, description="Short label.")] = "",
        notes: Annotated[str | None, Field(max_length=4000, description="Free text.")] = None,
        image_id: ImageId = None,
        confidence: Annotated[float | None, Field(ge=0, le=1, description="Confidence of an AI annotation.")] = None,
        source: Annotated[str, Field(pattern="^(ai|user|system)$", description="ai, user or system.")] = "ai",
        layer: Annotated[str | None, Field(max_length=100, description="Canvas layer name.")] = None,
    ) -> AnnotationResult:
        """Add an annotation to an image (validated against the image bounds)."""
        return await _call(ctx, AnnotationResult, session_id, Engine.add_annotation, session_id, image_id, annotation_type,
                           coordinates, label=label, notes=notes, source=source, confidence=confidence, layer=layer)

    @tool()
    async def update_annotation(
        ctx: Context, session_id: SessionId, annotation_id: Annotated[Id, Field(description="The annotation.")],
        label: Annotated[str | None, Field(max_length=200, description="New label.")] = None,
        notes: Annotated[str | None, Field(max_length=4000, description="New notes.")] = None,
        coordinates: Annotated[Any, Field(description="New coordinates (same shape as the type).")] = None,
    ) -> AnnotationResult:
        """Change an annotation's label, notes or coordinates."""
        return await _call(ctx, AnnotationResult, session_id, Engine.update_annotation, session_id, annotation_id,
                           label, notes, coordinates)

    @tool()
    async def delete_annotation(ctx: Context, session_id: SessionId,
                                annotation_id: Annotated[Id, Field(description="The annotation.")]) -> AnnotationResult:
        """Delete an annotation."""
        return await _call(ctx, AnnotationResult, session_id, Engine.delete_annotation, session_id, annotation_id)

    @tool()
    async def get_annotations(
        ctx: Context, session_id: SessionId, image_id: ImageId = None,
        source: Annotated[str, Field(pattern="^(all|ai|user|system)$", description="all, ai, user or system.")] = "all",
    ) -> Annotations:
        """The annotations of a session or of one image (also the resource medvision://session/{id}/annotations)."""
        return await _call(ctx, Annotations, session_id, Engine.get_annotations, session_id, image_id, source)

    @tool()
    async def get_analysis_summary(ctx: Context, session_id: SessionId, image_id: ImageId = None) -> AnalysisSummary:
        """The latest analysis of each image in short form."""
        return await _call(ctx, AnalysisSummary, session_id, Engine.get_analysis_summary, session_id, image_id)

    # -- export and views --------------------------------------------------------------
    @tool()
    async def export_study(
        ctx: Context, session_id: SessionId,
        format: Annotated[ExportFormat, Field(description="pdf, dicom_sr, dicom_seg, dicom_sc, dicom_pdf, dicom, "  # noqa: A002
                                              "json, png_annotated or html.")] = "pdf",
        include_images: Annotated[list[Id] | None, Field(description="Image ids (default all).")] = None,
        include_report: Annotated[bool, Field(description="Include the findings report.")] = True,
        include_annotations: Annotated[bool, Field(description="Include annotations.")] = True,
        include_measurements: Annotated[bool, Field(description="Include measurements.")] = True,
        template: Annotated[str | None, Field(pattern="^(default|clinical|research)$",
                                              description="PDF/HTML template.")] = None,
        output_path: Annotated[str | None, Field(max_length=4096, description=(
            "Absolute file or folder under an allowed root or the export folder; default: a new "
            "folder under the export folder."))] = None,
        overwrite: Annotated[bool, Field(description=(
            "Replace files that already exist at output_path (else TARGET_EXISTS and nothing is "
            "written). An image a session imported is never replaced."))] = False,
        show_untrained_overlays: Annotated[bool, Field(description=(
            "Draw masks and AI boxes made by untrained models (hidden by default: not meaningful)."))] = False,
    ) -> Export:
        """Export the study (report, annotations, measurements) as PDF, DICOM SR/SEG/SC, JSON, PNG or HTML."""
        app = app_context(ctx)
        if output_path is not None:
            allowed = [*await app.allowed_roots(ctx), app.engine.settings.export_root]
            output_path = str(paths.confine(output_path, allowed, must_exist=False))
        return await _call(ctx, Export, session_id, Engine.export_study, session_id, format, include_images,
                           include_report, include_annotations, include_measurements, template, output_path,
                           overwrite=overwrite, show_untrained_overlays=show_untrained_overlays, announce=True)

    @tool()
    async def get_visualization(
        ctx: Context, session_id: SessionId, image_id: ImageId = None,
        include_annotations: Annotated[bool, Field(description="Draw the annotations.")] = True,
        include_segmentation: Annotated[bool, Field(description="Draw the organ masks.")] = True,
        include_measurements: Annotated[bool, Field(description="Draw measurements.")] = True,
        max_side: Annotated[int, Field(ge=64, le=MAX_SIDE, description="Longest side of the PNG.")] = 512,
        plane: Annotated[Literal["axial", "coronal", "sagittal"] | None, Field(description=(
            "Show a volume series' plane instead of an image: axial (slice z, with its layers), coronal (row y) "
            "or sagittal (column x), resliced from the volume."))] = None,
        index: Annotated[int | None, Field(ge=0, description="The plane's slice, row or column index.")] = None,
        series_uid: SeriesUid = None,
        show_untrained_overlays: Annotated[bool, Field(description=(
            "Draw masks and AI boxes made by untrained models (hidden by default: not meaningful)."))] = False,
    ) -> Visualization:
        """The image with its overlays as a PNG, or any plane of a volume series, returned as MCP image
        content (no file is written)."""
        app = app_context(ctx)
        result = await app.call(ctx, session_id, app.engine.get_visualization, session_id, image_id, include_annotations,
                                include_segmentation, include_measurements, None, max_side, False, plane, index,
                                series_uid, show_untrained_overlays=show_untrained_overlays)
        png = result.pop("png_base64")
        view = Visualization.model_validate(result)
        content: list[types.ContentBlock] = [types.TextContent(type="text", text=view.model_dump_json()),
                                             types.ImageContent(type="image", data=png, mimeType="image/png")]
        return types.CallToolResult(content=content, structuredContent=view.model_dump(mode="json"))  # type: ignore[return-value]

    # -- the medical agent ---------------------------------------------------------------
    @tool()
    async def invoke_medical_agent(
        ctx: Context, session_id: SessionId, task: Annotated[Text, Field(description="What to do, in words.")],
        context: Annotated[dict[str, Any] | None, Field(description=(
            "user_selection (a region), clinical_history, image_id, pipeline, run_id (resume), seed, "
            "auto_suggest."))] = None,
        mode: Annotated[AgentMode, Field(description="auto, interactive (may pause with need_input) or "
                                         "step_by_step (one step per call).")] = "auto",
        handoff: Annotated[dict[str, Any] | None, Field(description="return_on, max_turns, preserve_context.")] = None,
    ) -> AgentResult:
        """Delegate the analysis to the built-in medical agent; returns its findings, report and trace summary."""
        return await _call(ctx, AgentResult, session_id, Engine.invoke_medical_agent, session_id, task, context, mode,
                           handoff, announce=True)

    @tool()
    async def get_agent_capabilities(ctx: Context) -> EngineResult:
        """What the agent can do: tasks, modes, image types, tools with versions, pipelines, models."""
        return await _call(ctx, EngineResult, None, Engine.get_agent_capabilities)

    @tool()
    async def request_user_input(
        ctx: Context, session_id: SessionId, input_type: Annotated[InputType, Field(description="What to ask for.")],
        prompt: Annotated[Text, Field(description="The question shown to the radiologist.")],
        options: Annotated[list[dict[str, Any]] | None, Field(description="Choices for 'choose'.")] = None,
    ) -> UserInputRequest:
        """Ask the desktop user something; returns a pending request_id (poll get_user_input or subscribe
        to medvision://session/{session_id}/agent_message)."""
        return await _call(ctx, UserInputRequest, session_id, Engine.request_user_input, session_id, input_type, prompt,
                           options)

    @tool()
    async def get_user_input(ctx: Context,
                             request_id: Annotated[Id, Field(description="From request_user_input.")]) -> UserInputRequest:
        """A user-input request and, once the user answered, the answer."""
        return await _call(ctx, UserInputRequest, None, Engine.get_user_input, request_id)

    # -- the canvas --------------------------------------------------------------------
    @tool()
    async def sync_canvas_state(
        ctx: Context, session_id: SessionId,
        canvas_state: Annotated[dict[str, Any], Field(description=(
            "Any of viewport {zoom, pan {x, y}, window?}, active_tool, current_image_id, user_drawings, "
            "pending_selection."))],
    ) -> EngineResult:
        """Exchange canvas state with the desktop; returns the desktop's current state."""
        return await _call(ctx, EngineResult, session_id, Engine.sync_canvas_state, session_id, canvas_state)

    @tool()
    async def push_to_canvas(
        ctx: Context, session_id: SessionId,
        action: Annotated[CanvasAction, Field(description="add_layer, update_layer, remove_layer, highlight, "
                                              "animate or add_annotations.")],
        payload: Annotated[dict[str, Any], Field(description=(
            "The action's data, e.g. {layer, ...}; add_annotations: {annotations, related_suggestions, message}."))],
    ) -> EngineResult:
        """Show something on the radiologist's canvas, live."""
        return await _call(ctx, EngineResult, session_id, Engine.push_to_canvas, session_id, action, payload)

    # -- visual RAG --------------------------------------------------------------------
    @tool()
    async def search_similar_cases(
        ctx: Context, session_id: SessionId, image_id: ImageId = None, top_k: TopK = 5,
        include_reports: Annotated[bool, Field(description="Include each case's report text.")] = True,
        min_similarity: Annotated[float, Field(ge=-1, le=1, description="Cosine similarity floor.")] = 0.0,
    ) -> EngineResult:
        """The reference cases most similar to an image, with similarity-weighted labels. Each case says
        where it came from: ``origin`` (the file relative to the folder it was built from, or the CSV and
        its row; kind "unknown" for cases of an older library) and ``source_name``, the same in words."""
        return await _call(ctx, EngineResult, session_id, Engine.search_similar_cases, session_id, image_id, top_k,
                           include_reports, min_similarity, announce=True)

    @tool()
    async def analyze_with_rag(
        ctx: Context, session_id: SessionId, image_id: ImageId = None,
        mode: Annotated[RagMode, Field(description="quick, full (adds segmentation) or rag_only.")] = "quick",
        top_k: TopK = 5,
    ) -> EngineResult:
        """Classifier and similar cases merged into one label list, with a suggested prompt."""
        return await _call(ctx, EngineResult, session_id, Engine.analyze_with_rag, session_id, image_id, mode, top_k,
                           announce=True)

    # -- priors, compare and the PACS ------------------------------------------------------
    @tool()
    async def list_priors(
        ctx: Context, session_id: SessionId,
        pacs: Annotated[str | None, Field(max_length=200, description=(
            "Also look in this archive: its name in pacs.toml or AE@HOST:PORT (default: the store only)."))] = None,
        fetch: Annotated[bool, Field(description="With pacs: retrieve the chosen priors and record them.")] = False,
        count: Annotated[int | None, Field(ge=0, le=20, description="At most this many (default: the settings').")] = None,
    ) -> EngineResult:
        """The same patient's earlier relevant studies (same Patient ID and issuer, modality, body part),
        most recent first: those in the store, and with ``pacs`` those in the archive."""
        if pacs is None:
            return await _call(ctx, EngineResult, session_id, Engine.list_priors, session_id, count)
        return await _pacs_call(ctx, session_id, "priors", session_id, pacs, fetch=fetch, count=count)

    @tool()
    async def compare_with_prior(
        ctx: Context, session_id: SessionId,
        prior: Annotated[Id, Field(description="The prior: a session id or the Study Instance UID of a study in the store.")],
        image_id: ImageId = None,
        prior_image_id: Annotated[Id | None, Field(description="An image of the prior; default: its current one.")] = None,
        register: Annotated[bool, Field(description="Register the prior radiograph onto the current one.")] = True,
    ) -> EngineResult:
        """Compare a study with a prior: each finding's probability then and now (models and thresholds
        named), the cardiothoracic ratio and organ areas, and the registration's transform and quality."""
        return await _call(ctx, EngineResult, session_id, Engine.compare_with_prior, session_id, prior, image_id,
                           prior_image_id, register, announce=True)

    @tool()
    async def query_pacs(
        ctx: Context,
        pacs: Annotated[str, Field(min_length=1, max_length=200, description="The archive: its name in pacs.toml or AE@HOST:PORT.")],
        patient_id: Annotated[str | None, Field(max_length=64, description="Patient ID.")] = None,
        issuer: Annotated[str | None, Field(max_length=64, description="Issuer of Patient ID: only that issuer's patient.")] = None,
        study_date: Annotated[str | None, Field(max_length=17, description="YYYYMMDD or a range YYYYMMDD-YYYYMMDD.")] = None,
        modality: Annotated[str | None, Field(max_length=16, description="A modality in the study.")] = None,
        accession_number: Annotated[str | None, Field(max_length=64, description="Accession Number.")] = None,
        study_uid: Annotated[str | None, Field(max_length=64, description="Study Instance UID (series level: its series).")] = None,
        level: Annotated[str, Field(pattern="^(study|series)$", description="study or series.")] = "study",
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many results.")] = 100,
    ) -> EngineResult:
        """C-FIND in an archive: studies (or a study's series) with their UIDs, dates, modalities and the
        patient's ID and issuer (two issuers are two patients)."""
        return await _pacs_call(ctx, None, "query", pacs, level=level, limit=limit, patient_id=patient_id,
                                issuer=issuer, study_date=study_date, modality=modality,
                                accession_number=accession_number, study_uid=study_uid)

    @tool()
    async def retrieve_study(
        ctx: Context,
        pacs: Annotated[str, Field(min_length=1, max_length=200, description="The archive: its name in pacs.toml or AE@HOST:PORT.")],
        study_uid: Annotated[str, Field(min_length=1, max_length=64, description="Study Instance UID.")],
        series_uid: Annotated[str | None, Field(max_length=64, description="Only this series.")] = None,
    ) -> EngineResult:
        """C-GET a study into the encrypted store (resumable; held instances are not asked for again);
        returns the counts, what is missing, and the session holding it."""
        return await _pacs_call(ctx, f"pacs:{study_uid}", "retrieve", study_uid=study_uid, pacs=pacs,
                                series_uid=series_uid, announce=True)

    @tool()
    async def build_rag_index(
        ctx: Context,
        data_path: Annotated[str, Field(min_length=1, max_length=4096, description=(
            "A CSV or a folder of images under an allowed root."))],
        source: Annotated[str, Field(max_length=100, description="Name of the reference source.")] = "custom",
        reports_csv: Annotated[str | None, Field(max_length=4096, description="Reports CSV under an allowed root.")] = None,
        rebuild: Annotated[bool, Field(description="Start over instead of extending.")] = False,
    ) -> EngineResult:
        """Build or extend the similar-case library (reports progress per image)."""
        app = app_context(ctx)
        roots = await app.allowed_roots(ctx)
        data = paths.confine(data_path, roots)
        reports = paths.confine(reports_csv, roots) if reports_csv else None
        return await _call(ctx, EngineResult, "rag-library", Engine.build_rag_index, source, data, reports, rebuild,
                           progress=app.progress_callback(ctx))
