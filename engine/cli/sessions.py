"""``medvision sessions | annotations | export``: what is stored, and exporting it."""

from __future__ import annotations

import argparse
import json

from engine.cli.common import json_text, open_engine


def cmd_annotations(args: argparse.Namespace) -> int:
    """List a session's annotations."""
    with open_engine(args) as engine:
        result = engine.get_annotations(args.session_id, args.image, args.source)
    if args.json:
        print(json_text(result))
        return 0
    for a in result["annotations"]:
        print(f"{a['annotation_id']}  {a['type']:<11} {a['source']:<6} {a['label'] or ''}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a stored session (PDF, DICOM SR/SEG/SC, JSON, PNG, HTML)."""
    with open_engine(args) as engine:
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


def cmd_sessions_list(args: argparse.Namespace) -> int:
    """List sessions, newest first."""
    with open_engine(args) as engine:
        sessions = engine.list_sessions(args.limit)
    if args.json:
        print(json_text(sessions))
        return 0
    for s in sessions:
        pin = " pinned" if s["pinned"] else ""
        print(f"{s['session_id']}  {s['created_at']}  {s['source']:<5}{pin:<7} images={s['images']:<3} {s['name'] or ''}")
    return 0


def cmd_sessions_delete(args: argparse.Namespace) -> int:
    """Erase one session and everything derived from it."""
    with open_engine(args) as engine:
        result = engine.delete_session(args.session_id)
    if args.json:
        print(json_text(result))
        return 0
    print(f"erased session {result['session_id']}: {result['images']} image(s), {result['files']} file(s)")
    return 0


def cmd_sessions_pin(args: argparse.Namespace) -> int:
    """Pin (keep past the retention policy) or unpin a session."""
    with open_engine(args) as engine:
        result = engine.pin_session(args.session_id, args.sessions_command == "pin")
    print(f"session {result['session_id']} {'pinned' if result['pinned'] else 'unpinned'}")
    return 0


def cmd_sessions_purge(args: argparse.Namespace) -> int:
    """Erase the sessions the retention policy has expired (``--dry-run``: list them only)."""
    with open_engine(args) as engine:
        result = engine.purge_expired_sessions(dry_run=args.dry_run)
    if args.json:
        print(json_text(result))
        return 0
    verb = "would erase" if result["dry_run"] else "erased"
    for s in result["sessions"]:
        print(f"{verb} {s['session_id']}  {s['source']:<5} last active {s['last_active_at']}")
    print(f"{verb} {len(result['sessions'])} expired session(s)")
    return 0


def cmd_sessions_show(args: argparse.Namespace) -> int:
    """Show one session with its analysis summary."""
    with open_engine(args) as engine:
        status = engine.get_session_status(args.session_id)
        summary = engine.get_analysis_summary(args.session_id)
    if args.json:
        print(json_text({"status": status, "summary": summary}))
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


def register(sub: argparse._SubParsersAction) -> None:
    """``annotations``, ``export`` and ``sessions list | show | delete | pin | unpin | purge``."""
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
    sessions = sub.add_parser("sessions", help="stored sessions").add_subparsers(dest="sessions_command", required=True)
    listing = sessions.add_parser("list", help="list sessions")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_sessions_list)
    show = sessions.add_parser("show", help="show one session")
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_sessions_show)
    delete = sessions.add_parser("delete", help="erase a session and everything derived from it")
    delete.add_argument("session_id")
    delete.add_argument("--json", action="store_true")
    delete.set_defaults(func=cmd_sessions_delete)
    for verb, text in (("pin", "keep a session past the retention policy"), ("unpin", "let the policy apply again")):
        pin = sessions.add_parser(verb, help=text)
        pin.add_argument("session_id")
        pin.set_defaults(func=cmd_sessions_pin)
    purge = sessions.add_parser("purge", help="erase sessions past their retention period")
    purge.add_argument("--dry-run", action="store_true", help="list what would be erased, change nothing")
    purge.add_argument("--json", action="store_true")
    purge.set_defaults(func=cmd_sessions_purge)
