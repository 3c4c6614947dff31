"""``export_study`` and ``get_visualization``: gather, render, write atomically, keep a copy.

Each format is a writer ``bundle -> list[Artifact]``. The files go to the caller's
``output_path`` (or the export folder, ``Settings.export_root``) through a temporary
name, fsync and rename, so a failure leaves nothing at the target; the app keeps its own
copy encrypted in the store (blobs of kind ``export`` + an ``exports`` row). Any error on
the way is ``EXPORT_FAILED`` with the reason. Every target is checked before anything is
written (:func:`check_targets`): an existing file is ``TARGET_EXISTS`` unless the caller asks
to overwrite, and an imported image, the data directory's files and non-regular files are
never replaced. ``get_visualization`` writes its PNG only where the caller names a path.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import numpy as np

from engine.errors import ErrorCode, MedVisionError
from engine.export.artifact import Artifact
from engine.export.bundle import ExportBundle, ExportOptions, gather
from engine.export.render import compose, hidden_caption
from engine.files import fsync_dir
from engine.vocabulary import DISCLAIMER

if TYPE_CHECKING:
    from engine.services import Services

log = logging.getLogger(__name__)

JSON_SCHEMA_VERSION = "1.0.0"


def _pdf(bundle: ExportBundle) -> list[Artifact]:
    from engine.export.pdf import pdf_report

    return pdf_report(bundle)


def _html(bundle: ExportBundle) -> list[Artifact]:
    from engine.export.html import html_report

    return html_report(bundle)


def _png(bundle: ExportBundle) -> list[Artifact]:
    from engine.export.render import png_annotated

    return png_annotated(bundle)


def _sr(bundle: ExportBundle) -> list[Artifact]:
    from engine.export.dicom_sr import dicom_sr

    return dicom_sr(bundle)


def _seg(bundle: ExportBundle) -> list[Artifact]:
    from engine.export.dicom_seg import dicom_seg

    return dicom_seg(bundle)


def rendered_overlays(bundle: ExportBundle) -> dict[str, np.ndarray]:
    """Each image's composited view at full size (RGB uint8), for burned-in captures."""
    opts = bundle.options
    return {item.image_id: np.asarray(compose(item, include_annotations=opts.include_annotations,
                                              include_segmentation=opts.include_annotations,
                                              include_measurements=opts.include_measurements,
                                              show_untrained=opts.show_untrained_overlays)[0])
            for item in bundle.images}


def _sc(bundle: ExportBundle) -> list[Artifact]:
    from engine.export.dicom_sc import secondary_capture

    return secondary_capture(bundle, rendered_overlays(bundle))


def _encapsulated_pdf(bundle: ExportBundle) -> list[Artifact]:
    from engine.export.dicom_sc import encapsulated_pdf

    return encapsulated_pdf(bundle, _pdf(bundle)[0].data)


def dicom_objects(bundle: ExportBundle) -> list[Artifact]:
    """SR, SEG and burned-in captures of one study, built together.

    The full-size overlays (numpy and Pillow, which release the GIL) are drawn on a
    worker thread while the SR and SEG (Python-bound highdicom) are built.
    """
    from engine.export.dicom_sc import secondary_capture

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlay") as pool:
        overlays = pool.submit(rendered_overlays, bundle)
        structured = [*_sr(bundle), *_seg(bundle)]
        return structured + secondary_capture(bundle, overlays.result())


def _dicom_all(bundle: ExportBundle) -> list[Artifact]:
    """Everything a PACS can take: SR, SEG, burned-in captures and the PDF, one study."""
    return [*dicom_objects(bundle), *_encapsulated_pdf(bundle)]


def json_export(bundle: ExportBundle) -> list[Artifact]:
    """The report (report.schema.json) and trace (trace.schema.json) plus per-image results."""
    from engine.agent.report import validate_report
    from engine.agent.trace import trace_schema

    if bundle.report is not None:
        validate_report(bundle.report)
    if bundle.trace is not None:
        jsonschema.Draft202012Validator(trace_schema()).validate(bundle.trace)
    images = []
    for item in bundle.images:
        image = item.image
        images.append({
            "image_id": item.image_id, "type": image["type"], "modality": image["modality"],
            "rows": image["rows"], "columns": image["columns"],
            "sop_instance_uid": image.get("sop_instance_uid"),
            "classification": item.classification, "segmentation": item.segmentation,
            "similar_cases": item.similar_cases, "regions": item.regions,
            "annotations": item.annotations if bundle.options.include_annotations else [],
            "measurements": item.measurements if bundle.options.include_measurements else [],
            "masks": [{"mask_id": m.mask_id, "label": m.label, "source": m.source, "area_px": m.area_px,
                       "area_cm2": m.area_cm2, "model_id": m.model_id} for m in item.masks],
        })
    document = {
        "schema_version": JSON_SCHEMA_VERSION, "session_id": bundle.session_id, "generated_at": bundle.generated_at,
        "patient": bundle.patient_block(), "report": bundle.report, "trace": bundle.trace, "images": images,
        "models": bundle.models, "model_trained": bundle.model_trained, "banner": bundle.banner,
        "missing": bundle.missing, "disclaimer": DISCLAIMER,
    }
    data = json.dumps(document, indent=2, ensure_ascii=False, default=_jsonable).encode()
    return [Artifact(f"medvision-{bundle.session_id}.json", data, "application/json")]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


WRITERS: dict[str, Callable[[ExportBundle], list[Artifact]]] = {
    "pdf": _pdf,
    "dicom_sr": _sr,
    "dicom_seg": _seg,
    "dicom_sc": _sc,
    "dicom_pdf": _encapsulated_pdf,
    "dicom": _dicom_all,
    "json": json_export,
    "png_annotated": _png,
    "html": _html,
}
FORMATS = tuple(WRITERS)


def _fail(message: str, /, **fields: Any) -> MedVisionError:
    return MedVisionError(ErrorCode.EXPORT_FAILED, message, **fields)


#: What a path that is not a regular file is, for the refusal's message.
_NOT_REGULAR = ((stat.S_ISDIR, "folder"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))


def _kind(mode: int) -> str | None:
    """None for a regular file, else what the thing at the path is."""
    return next((kind for test, kind in _NOT_REGULAR if test(mode)), None if stat.S_ISREG(mode) else "special file")


def _mode(path: Path) -> int | None:
    """``st_mode`` of what is at ``path`` (links followed), None where nothing can be seen."""
    try:
        return path.stat().st_mode
    except (OSError, ValueError):
        return None


def _protected(services: Services, resolved: Path) -> str | None:
    """Why an existing file may never be replaced by an export, even with ``overwrite``."""
    if str(resolved) in services.store.imported_among([str(resolved)]):
        return "a file imported into a session"
    home = services.settings.home.expanduser().resolve()
    exports = services.settings.export_root.expanduser().resolve()
    if resolved.is_relative_to(home) and not resolved.is_relative_to(exports):
        return "a file of the app's data directory"
    return None


def check_targets(services: Services, targets: list[Path], *, overwrite: bool) -> None:
    """Refuse, before anything is written, a target that an export must not replace.

    Never replaced: a file some session imported (an ``images`` row's ``source_path``) or
    one of the data directory's own files, and anything that is not a regular file (a
    device, FIFO, socket or folder): ``EXPORT_FAILED`` with ``details.reason``
    ``protected`` or ``not_a_regular_file``. An existing regular file is replaced only
    when the caller asked (``overwrite``); else ``TARGET_EXISTS`` naming every such file.
    A target that cannot be looked at (its folder is a file, say) is left to the write,
    which reports why.
    """
    existing: list[str] = []
    for target in targets:
        try:
            mode = target.stat().st_mode
        except FileNotFoundError:
            if target.is_symlink():  # a dangling link: replacing it is still replacing something
                existing.append(target.name)
            continue
        except (OSError, ValueError):
            continue
        why = _protected(services, target.resolve())
        if why is not None:
            raise _fail(f"{target.name} is {why}; an export never replaces it", reason="protected", name=target.name)
        kind = _kind(mode)
        if kind is not None:
            raise _fail(f"{target.name} is a {kind}, not a regular file; an export writes regular files only",
                        reason="not_a_regular_file", kind=kind, name=target.name)
        existing.append(target.name)
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise MedVisionError(ErrorCode.TARGET_EXISTS, f"{shown} already exists; nothing was written (ask to "
                             "overwrite to replace it)", names=existing)


def _place(temporary: Path, target: Path, overwrite: bool) -> None:
    """Rename ``temporary`` to ``target``; without ``overwrite``, never over a file that
    appeared since the check (a hard link fails if the name exists, a rename would not)."""
    if overwrite:
        temporary.replace(target)
        return
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system (FAT, some shares): the check stands
        temporary.replace(target)
        return
    temporary.unlink()


def write_atomically(folder: Path, artifacts: list[Artifact], single_target: Path | None, *,
                     overwrite: bool = False) -> list[Path]:
    """Write artifacts into ``folder`` (or the one to ``single_target``): tmp -> fsync -> rename.

    All files are written under temporary names first and put in place only when every one
    is durable; on any failure the temporaries and the files this call placed are removed.
    The caller checks the targets first (:func:`check_targets`); without ``overwrite`` a
    target that appears meanwhile is ``TARGET_EXISTS``, not replaced.
    """
    targets = [single_target] if single_target is not None else [folder / a.name for a in artifacts]
    temporaries: list[Path] = []
    placed: list[Path] = []
    placing: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for artifact, target in zip(artifacts, targets, strict=True):
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            temporaries.append(temporary)
            with open(temporary, "wb") as handle:
                handle.write(artifact.data)
                handle.flush()
                os.fsync(handle.fileno())
        for temporary, placing in zip(temporaries, targets, strict=True):
            _place(temporary, placing, overwrite)
            placed.append(placing)
        fsync_dir(folder)
    except OSError as exc:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        if not overwrite:  # what this call created; with overwrite the old files are gone anyway
            for target in placed:
                target.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError) and placing is not None and placing not in placed:
            raise MedVisionError(ErrorCode.TARGET_EXISTS, f"{placing.name} appeared while the export was written; "
                                 "nothing was written", names=[placing.name]) from exc
        code = errno.errorcode.get(exc.errno or 0)
        if exc.errno == errno.ENOSPC:
            reason = "no space left on the device (ENOSPC)"
        else:
            reason = exc.strerror or type(exc).__name__
        raise _fail(f"cannot write the export to the target folder: {reason}",
                    **({"errno": code} if code else {})) from exc
    return targets


def _target(output_path: str | Path | None, default_root: Path, session_id: str, fmt: str,
            artifacts: list[Artifact]) -> tuple[Path, Path | None]:
    """(folder, single-file target or None). One artifact + a path with a suffix, or an
    existing path that is not a folder -> that file; no path -> a new folder under the
    export root (never an existing one)."""
    if output_path is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = default_root / session_id / f"{stamp}-{fmt}"
        folder, n = base, 1
        while folder.exists() or folder.is_symlink():
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
        return folder, None
    path = Path(output_path).expanduser()
    mode = _mode(path)
    if mode is not None and not stat.S_ISDIR(mode):
        if len(artifacts) == 1:
            return path.parent, path
        kind = _kind(mode) or "file"
        raise _fail(f"{path.name} is a {kind}, not a folder; {fmt} writes {len(artifacts)} files",
                    reason="not_a_folder", kind=kind, name=path.name)
    if len(artifacts) == 1 and path.suffix and mode is None:
        return path.parent, path
    return path, None


def _targets(folder: Path, artifacts: list[Artifact], single: Path | None) -> list[Path]:
    return [single] if single is not None else [folder / a.name for a in artifacts]


def export_study(services: Services, session_id: str, format: str = "pdf", include_images: list[str] | None = None,  # noqa: A002
                 include_report: bool = True, include_annotations: bool = True, include_measurements: bool = True,
                 template: str | None = None, output_path: str | Path | None = None,
                 include_identifiers: bool = False, institution: str = "", overwrite: bool = False,
                 show_untrained_overlays: bool = False) -> dict[str, Any]:
    """Export a session's results as a file (or a folder of files) people and PACS use.

    Parameters
    ----------
    format:
        ``pdf``, ``dicom_sr`` (TID 1500), ``dicom_seg``, ``dicom_sc`` (overlay burned
        in), ``dicom_pdf`` (encapsulated PDF), ``dicom`` (all four), ``json`` (report +
        trace), ``png_annotated`` or ``html`` (one self-contained file).
    include_images:
        Image ids to export; empty means all.
    template:
        PDF/HTML template: ``default``, ``clinical`` or ``research``.
    output_path:
        A file (one-file formats) or folder; default: a new folder under
        ``Settings.export_root``. Nothing is left there when the export fails.
    include_identifiers:
        Print the patient's identifiers in PDF/HTML/JSON (de-identified by default;
        DICOM objects always carry the source study's patient module).
    overwrite:
        Replace files that already exist at the target. Without it an existing file is
        ``TARGET_EXISTS`` and nothing is written; every target is checked before any is
        written. A file a session imported, the data directory's files and anything that
        is not a regular file are never replaced (``EXPORT_FAILED``, ``details.reason``).
    show_untrained_overlays:
        Draw masks and AI boxes made by untrained models in PNG, PDF, HTML and the
        secondary capture (named as untrained). By default they are left out (HTML: its
        layer unchecked) and a caption says so.

    Returns ``export_path``, ``format``, ``size``, ``sha256``, ``files`` and what the
    session lacked (``missing``). Errors: ``EXPORT_FAILED`` with the reason,
    ``TARGET_EXISTS``.
    """
    if format not in WRITERS:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"format must be one of {', '.join(FORMATS)}")
    if output_path is not None:  # an existing file named as the target: refused before the work
        early = Path(output_path).expanduser()
        mode = _mode(early)
        if mode is not None and not stat.S_ISDIR(mode):
            check_targets(services, [early], overwrite=overwrite)
    started = time.perf_counter()
    options = ExportOptions(include_images=tuple(include_images or ()), include_report=include_report,
                            include_annotations=include_annotations, include_measurements=include_measurements,
                            include_identifiers=include_identifiers, template=template or "default",
                            institution=institution, show_untrained_overlays=show_untrained_overlays)
    try:
        bundle = gather(services, session_id, options)
    except MedVisionError as exc:
        if exc.code is ErrorCode.INVALID_ARGUMENT:
            raise
        raise _fail(f"nothing to export: {exc.message}", cause=exc.code.value) from exc
    if not bundle.images and format not in ("json", "pdf", "html"):
        raise _fail(f"{format} needs at least one image; the session has no images")
    try:
        artifacts = WRITERS[format](bundle)
    except MedVisionError as exc:
        if exc.code is ErrorCode.EXPORT_FAILED:
            raise
        raise _fail(f"{format} export failed: {exc.message}") from exc
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, jsonschema.ValidationError) as exc:
        log.exception("%s export of session %s failed", format, session_id)
        raise _fail(f"{format} export failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
    built = time.perf_counter()
    folder, single = _target(output_path, services.settings.export_root, session_id, format, artifacts)
    check_targets(services, _targets(folder, artifacts, single), overwrite=overwrite)
    paths = write_atomically(folder, artifacts, single, overwrite=overwrite)
    try:
        kept = services.store.add_export(session_id, format, [(a.name, a.data, a.media_type) for a in artifacts],
                                       options=asdict(options) | {"include_images": list(options.include_images)},
                                       missing=bundle.missing)
    except MedVisionError as exc:  # no kept copy, no file: the export did not happen
        for path in paths:
            path.unlink(missing_ok=True)
        raise _fail(f"the encrypted copy of the export could not be kept: {exc.message}", cause=exc.code.value) from exc
    files = [{"path": str(p), "name": a.name, "media_type": a.media_type, "size": len(a.data),
              "sha256": hashlib.sha256(a.data).hexdigest()} for p, a in zip(paths, artifacts, strict=True)]
    main = files[0]
    return {
        "session_id": session_id, "format": format, "export_id": kept["id"],
        "export_path": main["path"] if len(files) == 1 else str(folder),
        "size": sum(f["size"] for f in files), "sha256": main["sha256"], "files": files,
        "missing": bundle.missing, "model_trained": bundle.model_trained, "banner": bundle.banner,
        "disclaimer": DISCLAIMER,
        "timings_ms": {"build": round((built - started) * 1000, 2),
                       "total": round((time.perf_counter() - started) * 1000, 2)},
    }


def get_visualization(services: Services, session_id: str, image_id: str | None = None,
                      include_annotations: bool = True, include_segmentation: bool = True,
                      include_measurements: bool = True, output_path: str | Path | None = None,
                      max_side: int | None = None, overwrite: bool = False, plane: str | None = None,
                      index: int | None = None, series_uid: str | None = None,
                      show_untrained_overlays: bool = False) -> dict[str, Any]:
    """The composited view of one image as a PNG, with its list of layers.

    Layers from untrained models are listed with ``visible: false`` and not drawn unless
    ``show_untrained_overlays``; ``hidden_note`` then says what was left out and why.

    The PNG comes back as ``png_base64``; it is written (in plaintext) only where the caller
    names an ``output_path`` (a ``.png`` file, or a folder for ``view-<image>.png``), with
    :func:`export_study`'s rules for an existing file. Without one, ``image_path`` and
    ``image_url`` are None and nothing is written.

    With ``plane`` and ``index`` a volume series is shown instead: ``axial`` is slice ``index`` of
    the (named or only) series with that slice's layers; ``coronal`` (row ``index``) and
    ``sagittal`` (column ``index``) are resliced from the assembled volume, the image layer only.
    """
    from engine.export.planes import axial_image_id, plane_picture

    session = services.store.get_session(session_id)
    if plane is not None and index is None:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "a plane needs an index (slice, row or column)")
    view: dict[str, Any] = {}
    if plane == "axial":
        image_id = axial_image_id(services, session_id, index, series_uid)  # type: ignore[arg-type]
    image_id = image_id or session["current_image_id"]
    if image_id is None:
        raise MedVisionError(ErrorCode.IMAGE_NOT_FOUND, "the session has no images yet")
    bundle = gather(services, session_id, ExportOptions(include_images=(image_id,), include_report=False))
    if plane in (None, "axial"):
        picture, layers = compose(bundle.images[0], include_annotations=include_annotations,
                                  include_segmentation=include_segmentation, include_measurements=include_measurements,
                                  max_side=max_side, show_untrained=show_untrained_overlays)
    else:
        picture, view = plane_picture(services, session_id, plane, index, series_uid, max_side)  # type: ignore[arg-type]
        image_id = f"{plane}-{index}"
        layers = [{"id": "image", "name": f"{plane.capitalize()} plane {index}", "kind": "image", "count": 1,
                   "color": None, "untrained": False, "visible": True}]
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    path: Path | None = None
    if output_path is not None:
        artifact = Artifact(f"view-{image_id}.png", data, "image/png")
        folder, single = _target(output_path, services.settings.export_root, session_id, "view", [artifact])
        check_targets(services, _targets(folder, [artifact], single), overwrite=overwrite)
        (path,) = write_atomically(folder, [artifact], single, overwrite=overwrite)
    return {"session_id": session_id, "image_id": image_id,
            "image_path": str(path) if path is not None else None,
            "image_url": path.as_uri() if path is not None else None,
            "png_base64": base64.b64encode(data).decode("ascii"),
            "width": picture.width, "height": picture.height, "layers": layers,
            "hidden_note": hidden_caption(layers),
            "sha256": hashlib.sha256(data).hexdigest(), "model_trained": bundle.model_trained,
            "banner": bundle.banner, "disclaimer": DISCLAIMER,
            **({"plane": plane, "index": index, "volume": view or None} if plane else {})}


def queue_for_destination(services: Services, session_id: str, image_id: str, formats: tuple[str, ...],
                          destination: dict[str, Any], max_attempts: int) -> list[int]:
    """Results of one image (e.g. SR + burned-in SC) built in memory, kept encrypted as an
    export and queued in the DICOM outbox for ``destination``; returns the outbox item ids."""
    bundle = gather(services, session_id, ExportOptions(include_images=(image_id,)))
    artifacts = [a for fmt in formats for a in WRITERS[fmt](bundle)]
    kept = services.store.add_export(session_id, "dicom_node_results",
                                     [(a.name, a.data, a.media_type) for a in artifacts],
                                     options={"image_id": image_id, "formats": list(formats)})
    return services.store.dicom_outbox_add(session_id, kept["id"], [a.name for a in artifacts], destination,
                                           max_attempts=max_attempts)
