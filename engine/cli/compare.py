"""``medvision compare CURRENT --prior PRIOR``: a study against a prior (findings, measurements, registration,
tracked lesions).

CURRENT is an image file (a new session is made for it) or a session id; PRIOR is an image
file, a session id or the Study Instance UID of a study already in the data directory
(received, or retrieved with ``medvision pacs get``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.common import disclaimer, load_image, open_engine, write_json


def _session(engine, spec: str, *, study_uid_ok: bool) -> str:  # noqa: ANN001
    """A session id for ``spec``: a file (loaded into a new session), else the id or Study UID as given."""
    if Path(spec).is_file():
        return load_image(engine, spec, None)[0]
    if not study_uid_ok:
        engine.get_session_status(spec)  # SESSION_NOT_FOUND for an unknown id
    return spec


def _line(row: dict) -> str:
    def p(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"
    delta = "-" if row["delta"] is None else f"{row['delta']:+.3f}"
    return f"  {row['label']:<28} {p(row['prior_probability'])} -> {p(row['current_probability'])}  {delta}  {row['change']}"


def _lesion_line(lesion: dict) -> str:
    """``lesion nodule: 10.0 -> 12.0 mm (+2.0 mm, +20.0 %) in 365 days``."""
    unit = lesion["unit"] or ""
    change = "no change computed" if lesion["change"] is None else f"{lesion['change']:+} {unit}".rstrip() + (
        "" if lesion["change_percent"] is None else f", {lesion['change_percent']:+} %")
    days = "" if lesion["days"] is None else f" in {lesion['days']} days"
    return f"lesion {lesion['identifier']}: {lesion['prior']} -> {lesion['current']} {unit} ({change}){days}"


def cmd_compare(args: argparse.Namespace) -> int:
    with open_engine(args) as engine:
        current = _session(engine, args.current, study_uid_ok=False)
        prior = _session(engine, args.prior, study_uid_ok=True)
        result = engine.compare_with_prior(current, prior, register=not args.no_register)
        findings = result["findings"]
        print(f"current {result['session_id']} ({result['current_study']['study_date'] or 'no date'}) against prior"
              f" {result['prior_session_id']} ({result['prior_study']['study_date'] or 'no date'})")
        for warning in result["warnings"]:
            print(f"warning: {warning}")
        print(f"models: current {findings['current_model']}, prior {findings['prior_model']}"
              f"{'' if not findings['note'] else ' (' + findings['note'] + ')'}")
        print("findings (prior -> current, change):")
        for row in findings["findings"][:args.top]:
            print(_line(row))
        ctr = result["measurements"]["ctr"]
        if ctr["current"] is not None or ctr["prior"] is not None:
            print(f"cardiothoracic ratio: {ctr['prior']} -> {ctr['current']}")
        registration = result.get("registration")
        if registration and registration["status"] == "ok":
            t, q = registration["transform"], registration["quality"]
            print(f"registration: rotation {t['rotation_deg']} deg, scale {t['scale']}, shift {t['translation_px']} px;"
                  f" correlation {q['ncc_before']} -> {q['ncc_after']}{'' if q['good'] else ' (doubtful)'}")
        elif registration:
            print(f"registration: {registration['reason']}")
        for lesion in result["lesions"]["lesions"]:
            print(_lesion_line(lesion))
        for lesion in result["lesions"]["new"]:
            print(f"lesion {lesion['identifier']}: new ({lesion['value']} {lesion['unit'] or ''})".rstrip())
        write_json(args.json, result)
        print(disclaimer())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """``compare CURRENT --prior PRIOR``."""
    compare = sub.add_parser("compare", help="compare a study with a prior (findings, measurements, registration)")
    compare.add_argument("current", metavar="CURRENT", help="an image file or a session id")
    compare.add_argument("--prior", required=True, metavar="PRIOR",
                         help="an image file, a session id or a Study Instance UID already in the data directory")
    compare.add_argument("--json", metavar="OUT", help="write the full result as JSON")
    compare.add_argument("--no-register", action="store_true", help="skip the image registration")
    compare.add_argument("--top", type=int, default=10, help="findings listed (default 10)")
    compare.set_defaults(func=cmd_compare)
