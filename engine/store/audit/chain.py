"""The audit hash chain: each record's hash, and the walk that finds where a chain was broken.

``hash = sha256(prev_hash + canonical JSON of the record)``, where the record is every
column but ``hash`` and ``prev_hash`` (its ``seq`` included, so a record moved to
another place no longer verifies there). The first record's ``prev_hash`` is
:data:`GENESIS`. The head (newest seq and hash, kept beside the table) makes the removal
of the newest records a gap too.

:func:`verify` walks the rows in seq order, holding one row at a time, and names each
break by its seq and kind:

``edited``     the record's content no longer gives its hash
``deleted``    a seq is missing (a gap, a missing first record, records missing below the
               head), or a record's predecessor is no longer anywhere in the table
``reordered``  the record verifies, but at another place: it is the record written as seq
               ``m`` (found by following its ``prev_hash`` to the record before it)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64

#: The columns a record's hash covers, besides ``prev_hash`` (the chain's order of fields
#: does not matter: canonical JSON sorts them).
HASHED = ("seq", "time", "front_end", "os_user", "host", "pid", "client", "event_id", "action", "action_code",
          "operation", "outcome", "outcome_detail", "session_id", "image_id", "study_uid", "sop_uid",
          "patient_id", "details")

#: ``find(hash, near_seq)``: the stored row holding a hash, or None.
Find = Callable[[str, int], dict[str, Any] | None]

#: How far back :func:`verify` follows ``prev_hash`` links to place a moved record.
MAX_PLACING_STEPS = 1000


def canonical(record: dict[str, Any]) -> str:
    """The canonical JSON text of a record's hashed fields (sorted keys, no spaces, UTF-8)."""
    return json.dumps({key: record.get(key) for key in HASHED}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def record_hash(prev_hash: str, record: dict[str, Any]) -> str:
    """``sha256(prev_hash + canonical(record))`` as hex."""
    return hashlib.sha256((prev_hash + canonical(record)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Break:
    """One place where the chain is broken."""

    seq: int
    kind: str  # edited | deleted | reordered
    detail: str

    def as_dict(self) -> dict:
        return {"seq": self.seq, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` found: the records checked, the head, and every break (first first)."""

    records: int
    head_seq: int
    head_hash: str
    breaks: tuple[Break, ...]

    @property
    def ok(self) -> bool:
        return not self.breaks

    def as_dict(self) -> dict:
        return {"ok": self.ok, "records": self.records, "head_seq": self.head_seq, "head_hash": self.head_hash,
                "breaks": [b.as_dict() for b in self.breaks]}


def verify(rows: Iterable[dict[str, Any]], head: tuple[int, str] | None, find: Find) -> Verification:
    """Walk ``rows`` (ascending seq) against ``head`` (``(seq, hash)`` or None for an empty log).

    ``find(hash, near_seq)`` returns the stored row with that hash (looking near ``near_seq``
    first), or None; it is used only at a break, to tell a moved record from an edited one.
    """
    breaks: list[Break] = []
    previous: dict[str, Any] | None = None
    previous_hashes: tuple[str, ...] = (GENESIS,)
    count = 0
    previous_broken = False
    for row in rows:
        count += 1
        expected_seq = previous["seq"] + 1 if previous else 1
        if row["seq"] > expected_seq:
            missing = row["seq"] - expected_seq
            breaks.append(Break(expected_seq, "deleted", f"{missing} record(s) missing: seq {expected_seq}"
                                + (f" to {row['seq'] - 1}" if missing > 1 else "")))
        own = record_hash(row["prev_hash"], row)
        broken = own != row["hash"]
        if broken:
            breaks.append(_misplaced_or_edited(row, find))
        elif row["seq"] == expected_seq and not previous_broken and row["prev_hash"] not in previous_hashes:
            if row["prev_hash"] != GENESIS and find(row["prev_hash"], row["seq"]) is None:
                breaks.append(Break(row["seq"], "deleted", "the record before it is no longer in the log"))
            else:
                breaks.append(Break(row["seq"], "reordered", "it does not follow the record stored before it"))
        previous, previous_broken = row, broken
        # The next record may link to this one's stored hash or, if only its hash was
        # changed, to the hash its content gives: either way that link is not a new break.
        previous_hashes = (row["hash"], own)
    last_seq = previous["seq"] if previous else 0
    head_seq, head_hash = head or (0, GENESIS)
    if head_seq > last_seq:
        breaks.append(Break(last_seq + 1, "deleted", f"the newest record(s) are missing: seq {last_seq + 1}"
                            f" to {head_seq} (the head says {head_seq})"))
    elif previous is not None and not previous_broken and (head_seq < last_seq or head_hash != previous["hash"]):
        breaks.append(Break(last_seq, "edited", f"the head (seq {head_seq}) does not match the newest record"))
    return Verification(count, head_seq, head_hash, tuple(breaks))


def _misplaced_or_edited(row: dict[str, Any], find: Find) -> Break:
    """A record whose hash fails where it is: moved here from ``m`` (it verifies as ``m``), or edited."""
    written_as = _original_seq(row, find)
    if written_as is not None and written_as != row["seq"] \
            and record_hash(row["prev_hash"], {**row, "seq": written_as}) == row["hash"]:
        return Break(row["seq"], "reordered", f"it holds the record written as seq {written_as}")
    return Break(row["seq"], "edited", "its content does not give its hash")


def _original_seq(row: dict[str, Any], find: Find) -> int | None:
    """Where a record was written: one after its predecessor's place, following ``prev_hash`` links
    back past records that are themselves out of place (a bounded number of steps)."""
    chain: list[dict[str, Any]] = [row]
    for _ in range(MAX_PLACING_STEPS):
        prev_hash = chain[-1]["prev_hash"]
        if prev_hash == GENESIS:
            return len(chain)
        before = find(prev_hash, chain[-1]["seq"])
        if before is None:
            return None
        if record_hash(before["prev_hash"], before) == before["hash"]:  # in its own place
            return before["seq"] + len(chain)
        chain.append(before)
    return None
