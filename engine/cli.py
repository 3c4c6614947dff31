"""The ``medvision`` command line: analyze, models, sessions.

Bad input ends with exit code 2 and one line on stderr that starts with the error
code (``INVALID_IMAGE_TYPE: ...``). Output for people goes to stdout; ``--json``
writes the full machine-readable result.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from engine.errors import ErrorCode, MedVisionError

EXIT_BAD_INPUT = 2


def _engine(args: argparse.Namespace):  # noqa: ANN202 - engine.api imported lazily for start-up time
    from engine.api import Engine

    return Engine(home=args.home, model_pack=args.pack)


def _bar(probability: float, width: int = 20) -> str:
    filled = int(round(probability * width))
    return "#" * filled + "." * (width - filled)


def format_summary(result: dict[str, Any]) -> str:
    """A radiologist-readable summary of one ``add_image_to_session`` result."""
    image = result["image"]
    lines = [f"{image['source_name']}  (image {result['image_id']})"]
    spacing = image.get("pixel_spacing_mm")
    spacing_text = f"{spacing[0]:.3f} x {spacing[1]:.3f} mm ({image['spacing_source']})" if spacing else "unknown"
    origin = "set by the user" if result["type_source"] == "user" else f"detected: {result['type_reason']}"
    lines.append(
        f"  Type {result['type']} ({origin})"
        f"  {image['columns']}x{image['rows']} px  spacing {spacing_text}"
    )
    analysis = result.get("auto_analysis") or {}
    classification = analysis.get("classification")
    if classification:
        model = classification["model"]
        lines.append(
            f"  Classifier {model['id']} ({model['precision']}, {model['device']}), "
            f"threshold {classification['threshold']:.2f}, calibration {classification['calibration']}"
        )
        if analysis.get("banner"):
            lines.append(f"  !! {analysis['banner']} (model_trained: false)")
        for finding in classification["findings"]:
            mark = "POSITIVE" if finding["positive"] else ""
            lines.append(f"    {finding['label']:<28} {finding['probability']:.3f}  {_bar(finding['probability'])}  {mark}")
        segmentation = analysis.get("segmentation") or {}
        if segmentation.get("status") == "ok":
            lines.append(f"  Organ segmentation {segmentation['model']['id']}:")
            for organ in segmentation["organs"]:
                size = f"{organ['area_cm2']:.1f} cm2" if organ.get("area_cm2") is not None else f"{organ['area_px']} px"
                lines.append(f"    {organ['label']:<28} {size}")
            ctr = segmentation["ctr"]
            if ctr.get("status") == "ok":
                lines.append(f"    cardiothoracic ratio {ctr['ratio']:.2f}" + (f"  {ctr['finding']}" if ctr.get("finding") else ""))
            if segmentation["spacing"].get("note"):
                lines.append(f"    ({segmentation['spacing']['note']})")
        rag = result.get("rag")
        if rag:
            meta = rag["similar_cases"]["search_metadata"]
            lines.append(f"  Similar cases (library of {meta['index_size']}):")
            for case in rag["similar_cases"]["results"]:
                lines.append(f"    {case['case_id']}  similarity {case['similarity']:.3f}  {case.get('source_name', '')}")
            if meta.get("note"):
                lines.append(f"    {meta['note']}")
        timings = {"decode": result["timings_ms"]["decode"], "store": result["timings_ms"]["store"]}
        timings |= {k: v for k, v in analysis["timings_ms"].items()
                    if k in ("preprocess", "inference", "segmentation", "persist")}
        lines.append("  Timings: " + ", ".join(f"{k} {v:.0f} ms" for k, v in timings.items()))
    elif analysis:
        lines.append(f"  Analysis {analysis.get('status')}: {analysis.get('reason')}")
    return "\n".join(lines)


def _outcome_line(outcome: dict[str, Any]) -> str:
    """One line saying what became of a file: analysed, stored but not analysed (why), or not stored (why)."""
    if outcome["analysed"]:
        return f"  {outcome['file']}: stored as image {outcome['image_id']} and analysed"
    error = outcome["error"] or {}
    why = f"{error.get('code')}: {error.get('message')}"
    if outcome["stored"]:
        return f"  {outcome['file']}: stored as image {outcome['image_id']}, not analysed ({why})"
    return f"  {outcome['file']}: not stored ({why})"


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyse one or more image files in a new session; say what became of each file."""
    failures = 0
    outcomes: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    session_id: str | None = None
    with _engine(args) as engine:
        print(f"MedVision - {_disclaimer()}")
        try:
            for name in args.files:
                outcome: dict[str, Any] = {"file": Path(name).name, "stored": False, "analysed": False,
                                           "image_id": None, "error": None}
                outcomes.append(outcome)
                try:
                    engine.check_image_file(name)  # a file that cannot be read makes no session
                    if session_id is None:
                        session_id = engine.create_study_session(args.session_name or "cli analyze")["session_id"]
                        print(f"Session {session_id}")
                    result = engine.add_image_to_session(session_id, name, image_type=args.type, auto_analyze=False)
                    outcome.update(stored=True, image_id=result["image_id"])
                    result["auto_analysis"] = engine.analyze_image(
                        session_id, result["image_id"], classify=True, detect=False,
                        segment=args.segment, generate_report=False,
                        classification_threshold=args.threshold, force=args.force,
                    )
                    if args.rag:
                        result["rag"] = engine.analyze_with_rag(session_id, result["image_id"],
                                                                mode="full" if args.segment else "quick")
                    outcome["analysed"] = True
                except MedVisionError as exc:
                    failures += 1
                    outcome["error"] = exc.to_dict()
                    print(str(exc), file=sys.stderr)
                    continue
                results.append(result)
                print(format_summary(result))
        finally:
            if session_id is not None and not results:  # nothing analysed (or interrupted): keep nothing
                engine.delete_session(session_id)
                for outcome in outcomes:
                    outcome["stored"], outcome["image_id"] = False, None
                session_id = None
    if len(outcomes) > 1 or failures:
        print("Files:" + (f" (session {session_id})" if session_id else " (no session kept)"))
        for outcome in outcomes:
            print(_outcome_line(outcome))
    _write_json(args.json, {"session_id": session_id, "results": results, "files": outcomes})
    return EXIT_BAD_INPUT if failures else 0


def _load(engine, path: str, image_type: str | None):  # noqa: ANN001, ANN202
    engine.check_image_file(path)  # a file that cannot be read makes no session
    session = engine.create_study_session(f"cli {Path(path).name}")["session_id"]
    try:
        image = engine.add_image_to_session(session, path, image_type=image_type, auto_analyze=False)
    except BaseException:  # a coded refusal, an unexpected error or Ctrl-C: no empty session left behind
        engine.delete_session(session)
        raise
    return session, image["image_id"]


def _region_from_args(args: argparse.Namespace) -> dict:
    given = [r for r in (args.bbox, args.point, args.polygon) if r]
    if len(given) != 1:
        raise MedVisionError(ErrorCode.INVALID_REGION, "give exactly one of --bbox, --point, --polygon")
    if args.bbox:
        return {"type": "bbox", "coordinates": args.bbox}
    if args.point:
        return {"type": "point", "coordinates": args.point}
    try:
        points = [[float(v) for v in pair.split(",")] for pair in args.polygon.split()]
    except ValueError as exc:
        raise MedVisionError(ErrorCode.INVALID_REGION, "--polygon takes 'x,y x,y x,y ...'") from exc
    return {"type": "polygon", "coordinates": points}


def cmd_region(args: argparse.Namespace) -> int:
    """Analyse a region of an image file."""
    region = _region_from_args(args)
    with _engine(args) as engine:
        session, image_id = _load(engine, args.file, args.type)
        try:
            result = engine.analyze_selected_region(session, region, question=args.question,
                                                    actions=args.actions.split(","), image_id=image_id)
        except MedVisionError:
            engine.delete_session(session)
            raise
    print(f"MedVision - {_disclaimer()}")
    info = result["region_info"]
    print(f"Region {info['region']['type']} bbox {info['bbox']}  area {info['area']['value']} {info['area']['unit']}")
    print(f"  anatomy: {info['anatomy']['primary']} ({info['anatomy']['method']})")
    if result.get("description"):
        print(f"  {result['description']}")
    if result.get("answer"):
        print(f"  answer: {result['answer']['text']}")
        for source in result["answer"]["sources"]:
            print(f"    [{source['id']}] {source['text']} ({source['tool_id']}: {source['ref']})")
    if result.get("measurements"):
        m = result["measurements"]
        print(f"  long axis {m['long_axis']['value']} {m['long_axis']['unit']}, "
              f"short axis {m['short_axis']['value']} {m['short_axis']['unit']}")
    if result.get("banner"):
        print(f"  !! {result['banner']}")
    print(f"  annotation {result['annotation_id']} in session {session}")
    _write_json(args.json, result)
    return 0


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None, so that any JSON parser reads it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json(payload: object) -> str:
    """Strict JSON text (RFC 8259: no NaN or Infinity) of a result."""
    return json.dumps(_finite(payload), indent=2, allow_nan=False)


def _write_json(target: str | None, payload: object) -> None:
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(_json(payload) + "\n")
        print(f"JSON written to {target}")


def cmd_segment(args: argparse.Namespace) -> int:
    """Click-to-segment on an image file: foreground/background points and/or a box."""
    points = [list(p) for p in (args.point or [])] + [list(p) for p in (args.bg or [])]
    labels = [1] * len(args.point or []) + [0] * len(args.bg or [])
    with _engine(args) as engine:
        session, image_id = _load(engine, args.file, args.type)
        try:
            result = engine.segment_interactive(session, image_id, points=points or None,
                                                labels=labels or None, box=args.box)
        except MedVisionError:
            engine.delete_session(session)
            raise
    print(f"backend {result['backend']}" + ("" if result["model_trained"] in (None, True) else "  (untrained model)"))
    for index, mask in enumerate(result["masks"]):
        best = "*" if index == result["best"] else " "
        print(f" {best} mask {index}: score {mask['score']:.3f}  {mask['area']['value']} {mask['area']['unit']}"
              f"  bbox {mask['bbox']}")
    print(f"  stored as mask {result['mask_id']} in session {session}; timings {result['timings_ms']}")
    _write_json(args.json, result)
    return 0


def cmd_rag_build(args: argparse.Namespace) -> int:
    """Build or extend the reference library."""
    def progress(done: int, total: int, message: str) -> None:
        print(f"  [{done}/{total}] {message}", flush=True)

    with _engine(args) as engine:
        result = engine.build_rag_index(data_path=args.data, reports_csv=args.reports, rebuild=args.rebuild,
                                        progress=progress)
    print(f"added {result['added']}, duplicates {result['skipped_duplicates']}, failed {len(result['failed'])}, "
          f"library size {result['index_size']} ({result['index_type']})")
    for failure in result["failed"]:
        print(f"  failed {failure['file']}: {failure['code']}: {failure['message']}", file=sys.stderr)
    return 0


def cmd_rag_search(args: argparse.Namespace) -> int:
    """Find the reference cases most similar to an image file."""
    with _engine(args) as engine:
        session, image_id = _load(engine, args.file, args.type)
        result = engine.search_similar_cases(session, image_id, top_k=args.top_k)
    meta = result["search_metadata"]
    print(f"library of {meta['index_size']} cases ({meta['index_type']}), search {meta['search_time_ms']:.2f} ms")
    for case in result["results"]:
        labels = ", ".join(f"{k}={v}" for k, v in case["labels"].items())
        print(f"  {case['case_id']}  similarity {case['similarity']:.3f}  {case.get('source_name', '')}  {labels}")
    for label, vote in result["aggregated_labels"].items():
        score = "-" if vote["score"] is None else f"{vote['score']:.2f}"
        print(f"  vote {label}: {score} ({vote['supporting_cases']} cases)")
    if meta.get("note"):
        print(f"  {meta['note']}")
    _write_json(args.json, result)
    return 0


def cmd_annotations(args: argparse.Namespace) -> int:
    """List a session's annotations."""
    with _engine(args) as engine:
        result = engine.get_annotations(args.session_id, args.image, args.source)
    if args.json:
        print(_json(result))
        return 0
    for a in result["annotations"]:
        print(f"{a['annotation_id']}  {a['type']:<11} {a['source']:<6} {a['label'] or ''}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a stored session (PDF, DICOM SR/SEG/SC, JSON, PNG, HTML)."""
    with _engine(args) as engine:
        result = engine.export_study(args.session_id, args.format, include_images=args.image or None,
                                     template=args.template, output_path=args.out,
                                     include_identifiers=args.identifiers, institution=args.institution,
                                     overwrite=args.overwrite, show_untrained_overlays=args.show_untrained_overlays)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for entry in result["files"]:
        print(f"{entry['path']}  {entry['size']} bytes  sha256 {entry['sha256'][:16]}")
    for item in result["missing"]:
        print(f"not included: {item}")
    print(result["disclaimer"])
    return 0


def _disclaimer() -> str:
    from engine.vocabulary import DISCLAIMER

    return DISCLAIMER


def cmd_models_build(args: argparse.Namespace) -> int:
    """Build a model pack (needs the ``build`` extra)."""
    from engine.config import Settings

    out = Path(args.out) if args.out else Settings.from_env(args.home, args.pack).model_pack
    try:
        from models.pack import build_pack, is_fresh
    except ImportError as exc:
        raise MedVisionError(
            ErrorCode.MODEL_LOAD_ERROR,
            f"building model packs needs the build extra (pip install 'medvision[build]'): {exc.name} is missing",
        ) from exc
    if args.if_stale and is_fresh(out, dev=args.dev):
        print(f"model pack up to date: {out}")
        return 0
    weights = Path(args.weights_dir) if args.weights_dir else None
    if weights is not None and not weights.is_dir():
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"weights directory {weights.name} does not exist")
    calibration = Path(args.calibration) if args.calibration else None
    print(f"building {'dev' if args.dev else 'site'} model pack into {out} ...")
    manifest = build_pack(out, dev=args.dev, weights_dir=weights, calibration_dir=calibration, threads=args.threads)
    _print_models(manifest)
    return 0


def _print_models(manifest: dict) -> None:
    print(f"pack {manifest['name']} (builder {manifest['builder_version']}, trained: {str(manifest.get('trained')).lower()})")
    for model in manifest["models"]:
        extra = ""
        quant = model.get("quantization") or {}
        if "parity_max_abs_dp" in quant:
            extra = f"  parity max|dp| {quant['parity_max_abs_dp']:.4f}"
        bench = model.get("benchmark") or {}
        if "median_ms" in bench:
            extra += f"  {bench['median_ms']:.1f} ms"
        default = "*" if model.get("default") else " "
        print(f" {default} {model['id']:<34} {model['task']:<10} {model['precision']:<5} "
              f"{model['size_bytes'] / 1e6:7.1f} MB  trained={str(model['trained']).lower()}{extra}")


def cmd_models_list(args: argparse.Namespace) -> int:
    """List the models of the configured pack."""
    from engine.config import Settings
    from engine.inference.modelpack import ModelPack

    pack = ModelPack.load(Settings.from_env(args.home, args.pack).model_pack)
    _print_models(pack.manifest)
    return 0


def cmd_models_export_pack(args: argparse.Namespace) -> int:
    """Write the configured pack as a tar (manifest, SHA256SUMS, optional ed25519 signature)."""
    from engine.config import Settings
    from engine.inference.packtransfer import export_pack

    result = export_pack(Settings.from_env(args.home, args.pack).model_pack, args.out, signing_key=args.sign)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_models_import_pack(args: argparse.Namespace) -> int:
    """Verify a pack tar (checksums, signature against the site's trusted keys) and install it atomically."""
    from engine.config import Settings
    from engine.inference.packtransfer import import_pack

    dest = args.dest or Settings.from_env(args.home, args.pack).model_pack
    result = import_pack(args.tar, dest, trusted_keys=args.trusted_key or None)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_models_keygen(args: argparse.Namespace) -> int:
    """Create an ed25519 key pair for signing packs (private PEM 0600, base64 public key)."""
    from engine.inference.packtransfer import generate_keypair

    print(json.dumps(generate_keypair(Path(args.private), Path(args.public) if args.public else None), indent=2))
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    """Check every file of the pack against its sha256."""
    from engine.config import Settings
    from engine.inference.modelpack import ModelPack

    pack = ModelPack.load(Settings.from_env(args.home, args.pack).model_pack)
    rows = pack.verify()
    for row in rows:
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['file']}" + (f"  {row['error']}" if row["error"] else ""))
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise MedVisionError(ErrorCode.MODEL_INTEGRITY_ERROR, f"{len(bad)} model file(s) failed verification: "
                             + ", ".join(r["file"] for r in bad))
    print(f"all {len(rows)} model files verified")
    return 0


def cmd_sessions_list(args: argparse.Namespace) -> int:
    """List sessions, newest first."""
    with _engine(args) as engine:
        sessions = engine.list_sessions(args.limit)
    if args.json:
        print(_json(sessions))
        return 0
    for s in sessions:
        print(f"{s['session_id']}  {s['created_at']}  images={s['images']:<3} {s['name'] or ''}")
    return 0


def cmd_sessions_show(args: argparse.Namespace) -> int:
    """Show one session with its analysis summary."""
    with _engine(args) as engine:
        status = engine.get_session_status(args.session_id)
        summary = engine.get_analysis_summary(args.session_id)
    if args.json:
        print(_json({"status": status, "summary": summary}))
        return 0
    print(f"Session {status['session_id']}  {status['name'] or ''}  created {status['created_at']}")
    by_image = {i["image_id"]: i for i in summary["images"]}
    for image in status["images"]:
        marker = "*" if image["image_id"] == status["current_image"] else " "
        print(f" {marker} {image['image_id']}  {image['type']:<5} {image['source_name']}")
        info = by_image.get(image["image_id"], {})
        if info.get("analyzed"):
            tops = ", ".join(f"{f['label']} {f['probability']:.2f}" for f in info["top_findings"][:3])
            trained = "" if info.get("model_trained") else "  [untrained models]"
            print(f"      top: {tops}{trained}")
    return 0


#: The option prefix of the sub-parsers that pass every word on (``desktop``, ``dicom-node``): NUL,
#: which no command-line word can hold, so every word is passed on, in order.
_PASS_ON = "\0"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="medvision", description="MedVision offline radiology workstation")
    parser.add_argument("--home", help="data directory (default: MEDVISION_HOME or the user data dir)")
    parser.add_argument("--pack", help="model pack directory (default: MEDVISION_MODEL_PACK or HOME/models/default)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    analyze = sub.add_parser("analyze", help="analyse image files (DICOM, PNG, JPEG)")
    analyze.add_argument("files", nargs="+", metavar="FILE")
    analyze.add_argument("--json", metavar="OUT", help="write the full result as JSON")
    analyze.add_argument("--type", choices=["CXR", "KUB", "CT", "MRI", "US", "EKG", "Other"],
                         help="override the detected image type")
    analyze.add_argument("--force", action="store_true", help="run the chest classifier on any image type")
    analyze.add_argument("--threshold", type=float, default=0.5, help="positive threshold (default 0.5)")
    analyze.add_argument("--session-name", help="name of the new session")
    analyze.add_argument("--segment", action="store_true", help="also segment the chest organs (areas, CTR)")
    analyze.add_argument("--rag", action="store_true", help="also search similar reference cases and merge")
    analyze.set_defaults(func=cmd_analyze)

    region = sub.add_parser("region", help="analyse a region of an image file")
    region.add_argument("file")
    region.add_argument("--bbox", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"))
    region.add_argument("--point", type=float, nargs=2, metavar=("X", "Y"))
    region.add_argument("--polygon", help="'x,y x,y x,y ...' in pixels")
    region.add_argument("--actions", default="describe,measure,compare",
                        help="comma list of describe,segment,measure,classify,rag_search,compare")
    region.add_argument("--question")
    region.add_argument("--type", choices=["CXR", "KUB", "CT", "MRI", "US", "EKG", "Other"])
    region.add_argument("--json", metavar="OUT")
    region.set_defaults(func=cmd_region)

    segment = sub.add_parser("segment", help="click-to-segment on an image file")
    segment.add_argument("file")
    segment.add_argument("--point", type=float, nargs=2, action="append", metavar=("X", "Y"), help="foreground click")
    segment.add_argument("--bg", type=float, nargs=2, action="append", metavar=("X", "Y"), help="background click")
    segment.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"))
    segment.add_argument("--type", choices=["CXR", "KUB", "CT", "MRI", "US", "EKG", "Other"])
    segment.add_argument("--json", metavar="OUT")
    segment.set_defaults(func=cmd_segment)

    rag = sub.add_parser("rag", help="reference-case library (visual RAG)").add_subparsers(dest="rag_command",
                                                                                          required=True)
    rag_build = rag.add_parser("build", help="add cases from a CSV, or a folder of images with --reports")
    rag_build.add_argument("data", help="CSV (image_path, report/findings/impression, label columns) or folder")
    rag_build.add_argument("--reports", help="reports CSV when DATA is a folder")
    rag_build.add_argument("--rebuild", action="store_true", help="start the library over")
    rag_build.set_defaults(func=cmd_rag_build)
    rag_search = rag.add_parser("search", help="similar cases for an image file")
    rag_search.add_argument("file")
    rag_search.add_argument("--top-k", type=int, default=5)
    rag_search.add_argument("--type", choices=["CXR", "KUB", "CT", "MRI", "US", "EKG", "Other"])
    rag_search.add_argument("--json", metavar="OUT")
    rag_search.set_defaults(func=cmd_rag_search)

    annotations = sub.add_parser("annotations", help="a session's annotations")
    annotations.add_argument("session_id")
    annotations.add_argument("--image")
    annotations.add_argument("--source", default="all", choices=["all", "ai", "user", "system"])
    annotations.add_argument("--json", action="store_true")
    annotations.set_defaults(func=cmd_annotations)

    export = sub.add_parser("export", help="export a session (pdf, dicom_sr, dicom_seg, dicom_sc, dicom_pdf, dicom, "
                                           "json, png_annotated, html)")
    export.add_argument("session_id")
    export.add_argument("--format", default="pdf", choices=["pdf", "dicom_sr", "dicom_seg", "dicom_sc", "dicom_pdf",
                                                           "dicom", "json", "png_annotated", "html"])
    export.add_argument("--image", action="append", help="an image id to export (repeatable; default: all)")
    export.add_argument("--template", choices=["default", "clinical", "research"])
    export.add_argument("--out", metavar="PATH", help="file or folder (default: the export folder)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace files that already exist at --out (never an imported image)")
    export.add_argument("--identifiers", action="store_true", help="print patient identifiers (PDF/HTML/JSON)")
    export.add_argument("--show-untrained-overlays", action="store_true",
                        help="draw masks and AI boxes of untrained models (hidden by default: not meaningful)")
    export.add_argument("--institution", default="")
    export.add_argument("--json", action="store_true")
    export.set_defaults(func=cmd_export)

    models = sub.add_parser("models", help="model packs").add_subparsers(dest="models_command", required=True)
    build = models.add_parser("build", help="build a model pack (needs the build extra)")
    kind = build.add_mutually_exclusive_group(required=True)
    kind.add_argument("--dev", action="store_true", help="real architectures, no pretrained weights")
    kind.add_argument("--weights-dir", metavar="DIR", help="folder holding the upstream weight files")
    build.add_argument("--out", metavar="DIR", help="pack directory (default: the configured pack)")
    build.add_argument("--calibration", metavar="DIR", help="folder of real chest radiographs for int8 calibration")
    build.add_argument("--threads", type=int, default=2, help="threads for the build-time benchmark")
    build.add_argument("--if-stale", action="store_true", help="do nothing when the pack is current")
    build.set_defaults(func=cmd_models_build)
    models.add_parser("list", help="list the pack's models").set_defaults(func=cmd_models_list)
    models.add_parser("verify", help="check every model file's sha256").set_defaults(func=cmd_models_verify)
    export_pack = models.add_parser("export-pack", help="write the pack as a tar for an air-gapped machine")
    export_pack.add_argument("out", metavar="OUT.tar")
    export_pack.add_argument("--sign", metavar="KEY.pem", help="ed25519 private key to sign the pack with")
    export_pack.set_defaults(func=cmd_models_export_pack)
    import_pack = models.add_parser("import-pack", help="verify and install a pack tar (atomic)")
    import_pack.add_argument("tar", metavar="PACK.tar")
    import_pack.add_argument("--dest", metavar="DIR", help="pack directory (default: the configured pack)")
    import_pack.add_argument("--trusted-key", action="append", metavar="KEY",
                             help="trusted public key (base64 or file; default: MEDVISION_TRUSTED_PACK_KEYS or the "
                                  "site file)")
    import_pack.set_defaults(func=cmd_models_import_pack)
    keygen = models.add_parser("keygen", help="create an ed25519 key pair for signing packs")
    keygen.add_argument("private", metavar="PRIVATE.pem")
    keygen.add_argument("--public", metavar="FILE")
    keygen.set_defaults(func=cmd_models_keygen)

    sessions = sub.add_parser("sessions", help="stored sessions").add_subparsers(dest="sessions_command", required=True)
    listing = sessions.add_parser("list", help="list sessions")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_sessions_list)
    show = sessions.add_parser("show", help="show one session")
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_sessions_show)
    add_agent_parser(sub)
    add_mcp_parser(sub)
    # The desktop and the node parse their own arguments: these two take everything after their name
    # verbatim and in order. With no option prefix of their own (_PASS_ON), a leading "--port 1"
    # is not an unknown option (argparse would set it aside and hand the rest over without it) but the
    # first of the passed-on words, so `medvision dicom-node --port 1` is `dicom-node serve --port 1`.
    desktop = sub.add_parser("desktop", help="open the desktop workstation (PySide6)", add_help=False,
                             prefix_chars=_PASS_ON)
    desktop.add_argument("desktop_args", nargs=argparse.REMAINDER, help="files or folders to open")
    desktop.set_defaults(func=cmd_desktop)
    node = sub.add_parser("dicom-node", help="the DICOM C-STORE node: serve (default) or status", add_help=False,
                          prefix_chars=_PASS_ON)
    node.add_argument("desktop_args", nargs=argparse.REMAINDER, help="serve|status and their options (--help)")
    node.set_defaults(func=cmd_dicom_node)
    return parser


# -- medvision agent ---------------------------------------------------------------------------
def format_agent_result(result: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> str:
    """The run's status, report summary and trace steps, for people."""
    lines = [f"Run {result['run_id']}  status {result['status']}  pipeline {result['pipeline']['id']} "
             f"{result['pipeline']['version']}"]
    report = result["result"].get("report")
    if report is not None:
        image = report["images"][0]
        lines.append(f"  Image {image['type']} view {image['view'] or '?'}  patient age {report['patient']['age']} "
                     f"sex {report['patient']['sex']}")
        for diagnosis in report["diagnoses"]:
            finding = next((f for f in report["findings"] if f["label"] == diagnosis["disease"]), {})
            where = " ".join(filter(None, [finding.get("side"), f"{finding['zone']} zone" if finding.get("zone")
                                           else None]))
            lines.append(f"    {diagnosis['disease']:<28} {diagnosis['confidence']:.3f}  {where}")
        for measurement in report["measurements"]:
            lines.append(f"    {measurement['name']:<28} {measurement['value']} {measurement['unit']}")
        management = report["management"]
        lines.append(f"  Follow-up: {management['suggestion']}")
        lines.append(f"    source: {management['source']}")
        narrative = report.get("narrative") or {}
        if narrative:
            lines.append(f"  Narrative ({narrative['source']}, guard {narrative['guard']['status']}):")
            lines.append(f"    Findings: {narrative['findings']}")
            lines.append(f"    Impression: {narrative['impression']}")
    else:
        lines.append(f"  {result['result']['summary']}")
    for flag in result.get("flags", []):
        lines.append(f"  !! {flag['message']} ({flag['code']}, {flag['action']})")
    if result.get("request"):
        request = result["request"]
        options = ", ".join(str(o.get("value")) for o in request["options"])
        lines.append(f"  Needs input ({request['input_type']}): {request['prompt']}  [{options}]")
    if result.get("error"):
        lines.append(f"  Error: {result['error']['type']}: {result['error']['message']}")
    lines.append("  Trace steps:")
    for step in steps if steps is not None else result["trace_summary"]["steps"]:
        latency = "-" if step["latency_ms"] is None else f"{step['latency_ms']:.0f} ms"
        lines.append(f"    {step['step_id']:<16} {step['agent'] or '':<20} {step['status'] or '':<15} {latency:>9}"
                     f"  {', '.join(step['tools'])}")
    total = result["trace_summary"]
    lines.append(f"  {total['tool_calls']} tool calls, {total['failed']} failed, {total['low_confidence']} low "
                 f"confidence, {total['total_ms']:.0f} ms")
    return "\n".join(lines)


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the medical agent on an image file and print its report and trace steps."""
    context: dict[str, Any] = {}
    if args.history:
        context["clinical_history"] = args.history
    if args.pipeline:
        context["pipeline"] = args.pipeline
    if args.no_llm:
        context["use_llm"] = False
    with _engine(args) as engine:
        session, image_id = _load(engine, args.file, args.type)
        context["image_id"] = image_id
        print(f"MedVision agent - {_disclaimer()}")
        print(f"Session {session}")
        result = engine.invoke_medical_agent(session, args.task, context=context, mode=args.mode)
        while result["status"] == "in_progress":
            print(format_agent_result(result))
            result = engine.invoke_medical_agent(session, args.task, context={"run_id": result["run_id"]},
                                                 mode=args.mode)
        print(format_agent_result(result))
        trace = engine.export_trace(result["run_id"], args.trace) if args.trace else None
        if trace is not None:
            print(f"Trace written to {args.trace}")
    _write_json(args.json, result)
    return 0 if result["status"] in ("completed", "need_input") else EXIT_BAD_INPUT


def add_agent_parser(sub: argparse._SubParsersAction) -> None:
    """``medvision agent FILE [--task ...] [--mode auto|step_by_step] [--json OUT] [--trace OUT]``."""
    agent = sub.add_parser("agent", help="run the medical agent on an image file (report + trace)")
    agent.add_argument("file")
    agent.add_argument("--task", default="Analyse this image and write a report")
    agent.add_argument("--mode", choices=["auto", "step_by_step"], default="auto",
                       help="auto: the whole pipeline; step_by_step: print each step as it finishes")
    agent.add_argument("--history", help="clinical history (free text; names and ids are scrubbed)")
    agent.add_argument("--pipeline", help="pipeline id (default: by image type)")
    agent.add_argument("--type", choices=["CXR", "KUB", "CT", "MRI", "US", "EKG", "Other"])
    agent.add_argument("--no-llm", action="store_true",
                       help="do not use the language model (pipeline order, template narrative)")
    agent.add_argument("--json", metavar="OUT", help="write the full result as JSON")
    agent.add_argument("--trace", metavar="OUT", help="write the run's trace as JSON")
    agent.set_defaults(func=cmd_agent)


def cmd_desktop(args: argparse.Namespace) -> int:
    """Open the desktop app as its own program (``python -m desktop``): the engine never imports Qt."""
    import os
    import subprocess

    env = dict(os.environ)
    if args.home:
        env["MEDVISION_HOME"] = args.home
    if args.pack:
        env["MEDVISION_MODEL_PACK"] = args.pack
    return subprocess.call([sys.executable, "-m", "desktop", *args.desktop_args], env=env)


def cmd_dicom_node(args: argparse.Namespace) -> int:
    """``medvision dicom-node [serve|status] ...`` (dicom_node.scp.main parses the rest)."""
    from dicom_node.scp import main as node_main

    argv = list(args.desktop_args)
    if not argv or argv[0] not in ("serve", "status", "-h", "--help"):
        argv = ["serve", *argv]
    argv += [f"--home={args.home}"] * bool(args.home) + [f"--model-pack={args.pack}"] * bool(args.pack)
    if argv[0] in ("serve", "status"):
        argv += ["-v"] * args.verbose  # `medvision -v dicom-node ...`: the node sets its own logging
    return node_main(argv)


# -- medvision mcp ---------------------------------------------------------------------------
def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve MCP over stdio (engine.mcp.server.main does the work)."""
    from engine.mcp.server import main as mcp_main

    argv = [f"--root={root}" for root in args.root] + [f"--timeout={args.timeout}"]
    argv += [f"--home={args.home}"] * bool(args.home) + [f"--model-pack={args.pack}"] * bool(args.pack)
    return mcp_main(argv)


def add_mcp_parser(sub: argparse._SubParsersAction) -> None:
    """``medvision mcp [--root DIR]... [--timeout S]``: the local stdio MCP server."""
    mcp = sub.add_parser("mcp", help="serve the local MCP server over stdio (for Claude Desktop and other hosts)")
    mcp.add_argument("--root", action="append", default=[], metavar="DIR",
                     help="a folder whose images MCP clients may add (repeatable; also MEDVISION_MCP_ROOTS)")
    mcp.add_argument("--timeout", type=float, default=300.0, help="seconds one tool call may take (default 300)")
    mcp.set_defaults(func=cmd_mcp)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medvision`` console script."""
    args, extra = build_parser().parse_known_args(argv)
    if extra and getattr(args, "func", None) not in (cmd_desktop, cmd_dicom_node):
        build_parser().parse_args(argv)  # the usual error for unknown arguments
    if extra:
        args.desktop_args = [*args.desktop_args, *extra]
    if args.func is not cmd_dicom_node:  # the node sets its own (--log-level, or -v passed on)
        level = {0: logging.ERROR, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        logging.captureWarnings(True)  # library RuntimeWarnings are log records (shown with -v), not stray stderr lines
    try:
        return args.func(args)
    except MedVisionError as exc:
        print(f"{exc.code.value}: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
