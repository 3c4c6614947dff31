"""Lesions over time, pure: a tracking link's checks and the change of a lesion between two studies.

A lesion is what TID 1500 calls a tracked measurement group: a Tracking Identifier (DCM 112039,
free text up to 64 characters) and a Tracking Unique Identifier (DCM 112040, a UID). The same UID
in a prior study's report and in the current study's annotation means the same lesion, so
:func:`pair_lesions` pairs by UID only (never by label or place) and reports each pair's change in
the measurement's unit and in percent, and the days between the two study dates.

A lesion here is a plain dict: ``identifier``, ``uid``, ``name`` (length, area, angle...),
``value`` (None when not measured) and ``unit`` (``mm``, ``mm2``, ``px``, ``px2``, ``deg``),
plus whatever its source adds (``annotation_id``, ``image_id``, referenced UIDs, coordinates).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from typing import Any

from pydicom.uid import RE_VALID_UID, generate_uid

from engine.errors import ErrorCode, MedVisionError

#: Longest Tracking Identifier (a TEXT content item kept to one LO-sized line, as highdicom does).
TRACKING_IDENTIFIER_MAX_CHARS = 64
#: Annotation types that can be a lesion's outline or measurement.
TRACKABLE_TYPES = frozenset({"bbox", "polygon", "freehand", "point", "measurement", "mask", "volume_roi"})
#: Decimals of a change (the measurements' own precision).
CHANGE_DECIMALS = 2


def _bad(message: str) -> MedVisionError:
    return MedVisionError(ErrorCode.INVALID_ARGUMENT, message)


def check_uid(uid: Any) -> str:
    """A Tracking Unique Identifier: a valid DICOM UID of at most 64 characters (``INVALID_ARGUMENT``)."""
    if not isinstance(uid, str) or len(uid) > 64 or not re.fullmatch(RE_VALID_UID, uid):
        raise _bad("the tracking UID must be a valid DICOM UID (digits and dots, at most 64 characters)")
    return uid


def check_identifier(identifier: Any) -> str:
    """A Tracking Identifier: non-empty text of at most 64 characters, one line."""
    if not isinstance(identifier, str) or not identifier.strip() \
            or len(identifier) > TRACKING_IDENTIFIER_MAX_CHARS or any(c in identifier for c in "\r\n\\"):
        raise _bad(f"the tracking identifier must be one line of 1..{TRACKING_IDENTIFIER_MAX_CHARS} characters")
    return identifier.strip()


def new_link(identifier: str | None, uid: str | None, default_identifier: str) -> dict[str, str]:
    """The ``tracking`` value of an annotation: the given UID (a prior's lesion) or a new one."""
    return {"identifier": check_identifier(identifier if identifier is not None else default_identifier[:64]),
            "uid": check_uid(uid) if uid is not None else str(generate_uid())}


def study_date(text: Any) -> date | None:
    """A DICOM DA (YYYYMMDD) as a date; None when absent or malformed."""
    value = str(text or "").strip()
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def days_between(prior_date: Any, current_date: Any) -> int | None:
    """Days from the prior study to the current one (negative if the 'prior' is later); None if a date is missing."""
    then, now = study_date(prior_date), study_date(current_date)
    return None if then is None or now is None else (now - then).days


def change(prior: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The change of one lesion's value: absolute (in the unit) and percent of the prior value.

    No change when either value is missing or the units differ (a calibrated mm against pixels
    says nothing); no percent when the prior value is zero (a new lesion has no relative growth).
    """
    before, after = prior.get("value"), current.get("value")
    if before is None or after is None:
        return {"change": None, "change_percent": None, "unit": current.get("unit") or prior.get("unit"),
                "note": "not measured in both studies"}
    if prior.get("unit") != current.get("unit"):
        return {"change": None, "change_percent": None, "unit": None,
                "note": f"units differ ({prior.get('unit')} then, {current.get('unit')} now)"}
    delta = float(after) - float(before)
    percent = None if float(before) == 0.0 else round(100.0 * delta / abs(float(before)), CHANGE_DECIMALS)
    return {"change": round(delta, CHANGE_DECIMALS), "change_percent": percent, "unit": current.get("unit"),
            "note": "prior value is 0: no percent change" if percent is None else None}


def _by_uid(lesions: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Lesions keyed by UID, the first of each kept (a report may hold several groups of one lesion)."""
    found: dict[str, dict[str, Any]] = {}
    for lesion in lesions:
        if lesion.get("uid"):
            found.setdefault(lesion["uid"], lesion)
    return found


def pair_lesions(current: Iterable[dict[str, Any]], prior: Iterable[dict[str, Any]], *,
                 current_date: Any = None, prior_date: Any = None) -> dict[str, Any]:
    """Current and prior lesions paired by tracking UID, with each pair's change and the days between.

    ``lesions`` lists the pairs in the current study's order; ``new`` the current lesions with no
    prior (first seen now) and ``not_followed`` the prior lesions not measured now.
    """
    now, then = _by_uid(current), _by_uid(prior)
    days = days_between(prior_date, current_date)
    pairs = []
    for uid, lesion in now.items():
        if uid not in then:
            continue
        before = then[uid]
        pairs.append({"identifier": lesion.get("identifier") or before.get("identifier"), "uid": uid,
                      "name": lesion.get("name") or before.get("name"),
                      "prior": before.get("value"), "current": lesion.get("value"), "days": days,
                      **change(before, lesion),
                      "annotation_id": lesion.get("annotation_id"), "prior_source": before.get("source")})

    def brief(lesion: dict[str, Any]) -> dict[str, Any]:
        return {k: lesion.get(k) for k in ("identifier", "uid", "name", "value", "unit", "annotation_id", "source")}

    return {"lesions": pairs, "days": days, "current_date": str(current_date or "") or None,
            "prior_date": str(prior_date or "") or None,
            "new": [brief(v) for k, v in now.items() if k not in then],
            "not_followed": [brief(v) for k, v in then.items() if k not in now]}
