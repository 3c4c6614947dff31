"""``medvision analyze | region | segment``: image files into a new session, analysed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli.common import (
    EXIT_BAD_INPUT,
    IMAGE_TYPES,
    disclaimer,
    load_image,
    open_engine,
    write_json,
)
from engine.errors import ErrorCode, MedVisionError


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
    with open_engine(args) as engine:
        print(f"MedVision - {disclaimer()}")
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
    write_json(args.json, {"session_id": session_id, "results": results, "files": outcomes})
    return EXIT_BAD_INPUT if failures else 0


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
    with open_engine(args) as engine:
        session, image_id = load_image(engine, args.file, args.type)
        try:
            result = engine.analyze_selected_region(session, region, question=args.question,
                                                    actions=args.actions.split(","), image_id=image_id)
        except MedVisionError:
            engine.delete_session(session)
            raise
    print(f"MedVision - {disclaimer()}")
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
    write_json(args.json, result)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """Click-to-segment on an image file: foreground/background points and/or a box."""
    points = [list(p) for p in (args.point or [])] + [list(p) for p in (args.bg or [])]
    labels = [1] * len(args.point or []) + [0] * len(args.bg or [])
    with open_engine(args) as engine:
        session, image_id = load_image(engine, args.file, args.type)
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
    write_json(args.json, result)
    return 0



def register(sub: argparse._SubParsersAction) -> None:
    """``analyze``, ``region`` and ``segment``."""
    analyze = sub.add_parser("analyze", help="analyse image files (DICOM, PNG, JPEG)")
    analyze.add_argument("files", nargs="+", metavar="FILE")
    analyze.add_argument("--json", metavar="OUT", help="write the full result as JSON")
    analyze.add_argument("--type", choices=IMAGE_TYPES,
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
    region.add_argument("--type", choices=IMAGE_TYPES)
    region.add_argument("--json", metavar="OUT")
    region.set_defaults(func=cmd_region)

    segment = sub.add_parser("segment", help="click-to-segment on an image file")
    segment.add_argument("file")
    segment.add_argument("--point", type=float, nargs=2, action="append", metavar=("X", "Y"), help="foreground click")
    segment.add_argument("--bg", type=float, nargs=2, action="append", metavar=("X", "Y"), help="background click")
    segment.add_argument("--box", type=float, nargs=4, metavar=("X1", "Y1", "X2", "Y2"))
    segment.add_argument("--type", choices=IMAGE_TYPES)
    segment.add_argument("--json", metavar="OUT")
    segment.set_defaults(func=cmd_segment)
