"""The ``medvision`` command line: analyze, models, sessions.

Bad input ends with exit code 2 and one line on stderr that starts with the error
code (``INVALID_IMAGE_TYPE: ...``). Output for people goes to stdout; ``--json``
writes the full machine-readable result.
"""

from __future__ import annotations

import argparse
import json
import logging
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
        timings = {"decode": result["timings_ms"]["decode"], "store": result["timings_ms"]["store"]}
        timings |= {k: v for k, v in analysis["timings_ms"].items() if k in ("preprocess", "inference", "persist")}
        lines.append("  Timings: " + ", ".join(f"{k} {v:.0f} ms" for k, v in timings.items()))
    elif analysis:
        lines.append(f"  Analysis {analysis.get('status')}: {analysis.get('reason')}")
    return "\n".join(lines)


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyse one or more image files in a new session."""
    failures = 0
    with _engine(args) as engine:
        session = engine.create_study_session(args.session_name or "cli analyze")
        results = []
        print(f"MedVision - {_disclaimer()}")
        print(f"Session {session['session_id']}")
        for name in args.files:
            try:
                result = engine.add_image_to_session(session["session_id"], name, image_type=args.type,
                                                     auto_analyze=False)
                result["auto_analysis"] = engine.analyze_image(
                    session["session_id"], result["image_id"], preset="quick",
                    classification_threshold=args.threshold, force=args.force,
                )
            except MedVisionError as exc:
                failures += 1
                print(str(exc), file=sys.stderr)
                continue
            results.append(result)
            print(format_summary(result))
        if not results:
            engine.delete_session(session["session_id"])
    if args.json:
        payload = {"session_id": session["session_id"], "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    return EXIT_BAD_INPUT if failures else 0


def _disclaimer() -> str:
    from engine.api import DISCLAIMER

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
        print(json.dumps(sessions, indent=2))
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
        print(json.dumps({"status": status, "summary": summary}, indent=2))
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
    analyze.set_defaults(func=cmd_analyze)

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

    sessions = sub.add_parser("sessions", help="stored sessions").add_subparsers(dest="sessions_command", required=True)
    listing = sessions.add_parser("list", help="list sessions")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_sessions_list)
    show = sessions.add_parser("show", help="show one session")
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_sessions_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medvision`` console script."""
    args = build_parser().parse_args(argv)
    level = {0: logging.ERROR, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except MedVisionError as exc:
        print(f"{exc.code.value}: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
