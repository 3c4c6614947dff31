"""``medvision audit``: read the audit trail, verify its hash chain, export it as ATNA JSON lines."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from engine.cli.common import json_text, open_engine
from engine.errors import ErrorCode, MedVisionError

#: Exit code of ``--verify`` when the chain is broken (bad input stays 2).
EXIT_CHAIN_BROKEN = 1


def since_iso(text: str | None) -> str | None:
    """``--since`` as the log's UTC ISO form (a time without a zone is UTC); INVALID_ARGUMENT otherwise."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"--since must be an ISO 8601 date or time, not {text[:40]!r}",
                             argument="since") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def cmd_audit(args: argparse.Namespace) -> int:
    """List audit records, or verify the chain (exit 1 naming each break), or export them as ATNA."""
    from engine.store.audit import AuditEvent
    from engine.store.audit.atna import to_atna

    since = since_iso(args.since)
    with open_engine(args) as engine:
        log = engine.audit.log
        if args.verify:
            verification = log.verify()
            engine.audit.record(AuditEvent.AUDIT_LOG_USED, "R", "audit --verify",
                                outcome=0 if verification.ok else 8,
                                outcome_detail=None if verification.ok else "chain broken")
            if args.json:
                print(json_text(verification.as_dict()))
            else:
                _print_verification(verification)
            return 0 if verification.ok else EXIT_CHAIN_BROKEN
        records = log.records(since=since, session_id=args.session)
        if args.atna:
            count = _write_lines(Path(args.atna), (json.dumps(to_atna(r), ensure_ascii=False) for r in records))
            print(f"{count} audit record(s) written to {args.atna} (RFC 3881 / DICOM PS3.15 A.5 JSON lines)")
        elif args.json:
            count = 0
            for record in records:
                print(json.dumps(record, ensure_ascii=False))
                count += 1
        else:
            count = 0
            for r in records:
                print(_line(r))
                count += 1
        engine.audit.record(AuditEvent.AUDIT_LOG_USED, "R", "audit --atna" if args.atna else "audit",
                            session_id=args.session, records=count)
    return 0


def _line(r: dict) -> str:
    objects = " ".join(f"{k}={r[k]}" for k in ("session_id", "image_id", "study_uid", "sop_uid", "patient_id")
                       if r.get(k))
    who = r["os_user"] + (f" via {r['client']}" if r["client"] else "")
    return (f"{r['seq']:>6} {r['time']} {r['front_end']:<7} {who} {r['action']} ({r['action_code']})"
            f" {r['operation']} outcome={r['outcome']}{' ' + r['outcome_detail'] if r['outcome_detail'] else ''}"
            f"{' ' + objects if objects else ''}")


def _print_verification(verification) -> None:  # noqa: ANN001 - engine.store.audit.Verification
    if verification.ok:
        print(f"audit chain intact: {verification.records} record(s), head seq {verification.head_seq}"
              f" sha256 {verification.head_hash}")
        return
    for item in verification.breaks:
        print(f"seq {item.seq}: {item.kind}: {item.detail}")
    first = verification.breaks[0]
    print(f"audit chain BROKEN: first at seq {first.seq} ({first.kind}); {len(verification.breaks)} break(s) in"
          f" {verification.records} record(s)")


def _write_lines(target: Path, lines) -> int:  # noqa: ANN001 - an iterable of str
    """Write lines through a temporary file, fsync and rename; how many."""
    target.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
                count += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="read and verify the audit trail; export it as ATNA JSON lines")
    p.add_argument("--since", help="records from this ISO 8601 time on (UTC unless a zone is given)")
    p.add_argument("--session", help="records of one session")
    p.add_argument("--verify", action="store_true", help="check the whole hash chain (filters aside); exit 1 naming each break")
    p.add_argument("--json", action="store_true", help="JSON: one record per line, or the verification")
    p.add_argument("--atna", metavar="OUT.jsonl", help="write the records as RFC 3881 / DICOM audit JSON lines")
    p.set_defaults(func=cmd_audit)
