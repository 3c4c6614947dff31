"""``medvision pacs echo | find | get | move | priors | store``: query/retrieve against a remote archive.

The network side lives in :mod:`dicom_node.pacs` (imported when a command runs). ``--pacs``
is ``AE@HOST:PORT`` or the name of an archive in the PACS settings file (``--config``,
``MEDVISION_PACS_CONFIG`` or ``HOME/pacs.toml``). Retrieved instances go through the DICOM
node's ingest into the data directory (encrypted, durable, duplicates settled by the
node's policy). ``pacs move`` sends the study to ``--dest AE`` (a node the archive knows,
e.g. ``medvision dicom-node`` on the same data directory), or with ``--listen PORT`` to a
node this command runs itself for the duration of the move.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.cli.common import json_text, open_engine
from engine.errors import ErrorCode, MedVisionError


def _settings(args: argparse.Namespace) -> tuple[Any, Any]:
    """(client settings, the archive ``--pacs`` names); pynetdicom's own lines only with -v
    (a failure is this command's one coded line)."""
    import logging
    from pathlib import Path

    from dicom_node.pacs.config import load
    from engine.config import Settings

    if not args.verbose:
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    home = Settings.from_env(args.home, args.pack).home
    settings = load(Path(args.config) if args.config else None, home=home, calling_ae=args.calling_ae,
                    acse_timeout_s=args.timeout, dimse_timeout_s=args.timeout)
    archive = settings.archive(args.pacs)
    if getattr(args, "web", False) and not archive.dicomweb_url:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"archive {archive.label} has no DICOMweb URL"
                             " (set dicomweb_url in the PACS settings file)")
    return settings, archive


def cmd_pacs_echo(args: argparse.Namespace) -> int:
    from dicom_node.pacs.connection import echo
    from dicom_node.pacs.query import qido_ping

    settings, archive = _settings(args)
    answer = echo(archive, settings)
    print(f"C-ECHO {archive.label}: {answer['status']} in {answer['ms']} ms")
    if archive.dicomweb_url:
        ping = qido_ping(archive)
        print(f"QIDO-RS {ping['dicomweb_url']}: answered in {ping['ms']} ms")
    return 0


def cmd_pacs_find(args: argparse.Namespace) -> int:
    from dicom_node.pacs.query import Query, find, qido

    settings, archive = _settings(args)
    query = Query(patient_id=args.patient_id, issuer=args.issuer, patient_name=args.name, study_date=args.date,
                  modality=args.modality, accession_number=args.accession, study_uid=args.study)
    level = "series" if args.series else "study"
    pages = qido(archive, query, level=level, limit=args.limit) if args.web else \
        find(archive, settings, query, level=level, limit=args.limit)
    count, truncated = 0, False
    for page in pages:
        for row in page:
            count += 1
            print(json.dumps(row) if args.json else _line(row))
        truncated = truncated or getattr(page, "truncated", False)
    print(f"{count} {'series' if args.series else 'study' if count == 1 else 'studies'}"
          f"{f' (stopped at --limit {args.limit})' if truncated else ''}", file=sys.stderr)
    return 0


def _line(row: dict) -> str:
    """One study (or series) per line: its UID and date first."""
    patient = row["patient_id"] + (f" (issuer {row['issuer']})" if row["issuer"] else "")
    if row["level"] == "series":
        return (f"{row['series_uid']}  {row['study_date'] or '-'}  {row['modality'] or '-'}  series"
                f" {row['series_number'] or '-'}  {row['instances'] or 0} instances  {row['series_description']}")
    return (f"{row['study_uid']}  {row['study_date'] or '-'}  {patient}  {row['modalities'] or '-'}"
            f"  {row['instances'] if row['instances'] is not None else '?'} instances  {row['study_description']}")


def _progress(step: Any) -> None:
    """Per instance, on stderr when it is a terminal."""
    if sys.stderr.isatty():
        left = "" if step.remaining is None else f", {step.remaining} left"
        print(f"\r{step.done} instance(s){left}   ", end="", file=sys.stderr, flush=True)


def _report(result: Any, args: argparse.Namespace) -> int:
    if sys.stderr.isatty():
        print(file=sys.stderr)
    data = result.to_dict()
    if args.json:
        print(json_text(data))
    else:
        print(f"{result.method} {result.study_uid} from {result.archive}: status {result.status or 'none'},"
              f" {result.stored} stored, {result.already_held} already held, {result.duplicates} identical resends,"
              f" {len(result.missing)} missing, {len(result.failed_uids)} failed")
    if not result.complete:
        why = "cancelled" if result.cancelled else result.reason or "instances missing"
        raise MedVisionError(ErrorCode.RETRIEVE_INCOMPLETE,
                             f"{result.method} of {result.study_uid} incomplete ({why}): {len(result.missing)}"
                             f" instance(s) missing, {len(result.failed_uids)} failed; run it again to resume",
                             **{k: data[k] for k in ("status", "missing", "failed_uids")})
    return 0


def cmd_pacs_get(args: argparse.Namespace) -> int:
    from dicom_node.ingest import Ingestor
    from dicom_node.pacs.retrieve import Retriever, wado

    settings, archive = _settings(args)
    with open_engine(args) as engine:
        ingestor = Ingestor(engine.store, limits=engine.settings.limits)
        try:
            if args.web:
                result = wado(archive, ingestor, args.study, progress=_progress)
            else:
                result = Retriever(archive, settings, ingestor).get(args.study, args.series_uid, progress=_progress)
        finally:
            ingestor.close()
        return _report(result, args)


def cmd_pacs_move(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dicom_node.config import NodeConfig
    from dicom_node.config import load as node_settings
    from dicom_node.ingest import Ingestor
    from dicom_node.pacs.retrieve import Retriever
    from dicom_node.scp import Node

    settings, archive = _settings(args)
    node_config = node_settings(path=args.node_config) if args.node_config else NodeConfig()
    destination = args.dest or node_config.ae_title
    with open_engine(args) as engine:
        node = None
        if args.listen is not None:
            node = Node(replace(node_config, ae_title=destination, port=args.listen,
                                bind_address=args.bind or node_config.bind_address), engine).start()
        address = (node.config.bind_address, node.port) if node else (node_config.bind_address, node_config.port)
        ingestor = node.ingestor if node else Ingestor(engine.store, limits=engine.settings.limits)
        try:
            result = Retriever(archive, settings, ingestor).move(args.study, destination, args.series_uid,
                                                                 destination_address=address, progress=_progress)
        finally:
            if node is not None:
                node.stop()
            else:
                ingestor.close()
        return _report(result, args)


def cmd_pacs_priors(args: argparse.Namespace) -> int:
    from dicom_node.ingest import Ingestor
    from dicom_node.pacs.priors import fetch_priors

    settings, archive = _settings(args)
    with open_engine(args) as engine:
        ingestor = Ingestor(engine.store, limits=engine.settings.limits)
        try:
            outcome = fetch_priors(engine, ingestor, settings, [archive], args.session, count=args.count)
        finally:
            ingestor.close()
    if args.json:
        print(json_text(outcome))
        return 0
    for prior in outcome["priors"]:
        state = "ready" if prior.get("complete") else f"incomplete ({prior.get('error') or 'instances missing'})"
        print(f"{prior['study_uid']}  {prior['study_date'] or '-'}  {prior['modality'] or '-'}"
              f"  {prior['body_part'] or '-'}  session {prior['session_id'] or '-'}  {state}")
    print(f"{len(outcome['priors'])} prior(s) in {outcome['timings_ms']['total']:.0f} ms", file=sys.stderr)
    return 0


def cmd_pacs_store(args: argparse.Namespace) -> int:
    from dicom_node.pacs.store import send_files

    settings, archive = _settings(args)
    outcome = send_files(archive, settings, args.files, web=args.web)
    for row in outcome["instances"]:
        print(f"{row['sop_instance_uid']}  {row['status']}  {row['file']}")
    if outcome["failed"]:
        raise MedVisionError(ErrorCode.PACS_REFUSED, f"archive {archive.label} refused {outcome['failed']} of"
                             f" {len(outcome['instances'])} instance(s)", failed=outcome["failed"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """``pacs echo | find | get | move | store`` against ``--pacs AE@HOST:PORT`` or a configured archive."""
    pacs = sub.add_parser("pacs", help="query and retrieve from a PACS (C-FIND, C-GET, C-MOVE, DICOMweb), send to it")
    actions = pacs.add_subparsers(dest="pacs_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pacs", required=True, metavar="AE@HOST:PORT|NAME",
                        help="the archive: AE@HOST:PORT, or the name of one in the PACS settings file")
    common.add_argument("--config", metavar="FILE", help="PACS settings file (default: MEDVISION_PACS_CONFIG or"
                                                         " HOME/pacs.toml)")
    common.add_argument("--calling-ae", help="our AE title (default: the settings file's, else MEDVISION)")
    common.add_argument("--timeout", type=float, help="seconds to wait for an answer (connect and each message)")
    echo = actions.add_parser("echo", parents=[common], help="C-ECHO (and a QIDO-RS ping when it has DICOMweb)")
    echo.set_defaults(func=cmd_pacs_echo)
    find = actions.add_parser("find", parents=[common], help="C-FIND (or QIDO-RS): one study per line")
    find.add_argument("--patient-id", help="Patient ID")
    find.add_argument("--issuer", help="Issuer of Patient ID: only that issuer's patient")
    find.add_argument("--name", help="Patient's Name (wildcards * ?)")
    find.add_argument("--date", help="Study Date YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    find.add_argument("--modality", help="a modality in the study (series: the series')")
    find.add_argument("--accession", help="Accession Number")
    find.add_argument("--study", help="Study Instance UID (with --series: the series of that study)")
    find.add_argument("--series", action="store_true", help="series level")
    find.add_argument("--limit", type=int, default=10_000, help="at most this many results (default 10000)")
    find.add_argument("--web", action="store_true", help="QIDO-RS instead of C-FIND")
    find.add_argument("--json", action="store_true", help="one JSON object per line")
    find.set_defaults(func=cmd_pacs_find)
    for name, func, what in (("get", cmd_pacs_get, "C-GET (or WADO-RS with --web)"),
                             ("move", cmd_pacs_move, "C-MOVE to our node")):
        action = actions.add_parser(name, parents=[common], help=f"retrieve a study by {what} into the data directory")
        action.add_argument("--study", required=True, help="Study Instance UID")
        action.add_argument("--series-uid", help="only this series")
        action.add_argument("--json", action="store_true", help="print the result as JSON")
        action.set_defaults(func=func, web=False)
    get = actions.choices["get"]
    get.add_argument("--web", action="store_true", help="WADO-RS instead of C-GET")
    move = actions.choices["move"]
    move.add_argument("--dest", metavar="AE", help="destination AE the archive knows (default: the node's AE title)")
    move.add_argument("--listen", type=int, metavar="PORT", help="run a node on PORT for the move (AE: --dest)")
    move.add_argument("--bind", help="with --listen: the address to listen on (default 127.0.0.1)")
    move.add_argument("--node-config", metavar="FILE", help="the node's TOML settings (its AE title, port)")
    priors = actions.add_parser("priors", parents=[common], help="find a session's relevant priors in the archive"
                                " (same Patient ID and issuer, modality, body part), retrieve and record them")
    priors.add_argument("session", metavar="SESSION_ID", help="the current study's session")
    priors.add_argument("--count", type=int, help="at most this many priors (default: MEDVISION_PRIOR_COUNT, 2)")
    priors.add_argument("--json", action="store_true", help="print the result as JSON")
    priors.set_defaults(func=cmd_pacs_priors)
    store = actions.add_parser("store", parents=[common], help="send DICOM files (exports: SR, SEG, SC) by C-STORE")
    store.add_argument("files", nargs="+", metavar="FILE")
    store.add_argument("--web", action="store_true", help="STOW-RS instead of C-STORE")
    store.set_defaults(func=cmd_pacs_store)
