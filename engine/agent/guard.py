"""The narrative guard: everything a narrative says must be in the structured report.

:func:`check_narrative` reads a narrative (``{"findings", "impression"}`` or plain text)
against the structured report the agent built from tool outputs and lists violations.
An empty list means the narrative passed. The words it knows (label synonyms, organs,
sides, zones, negation cues, number words) are package data:
``engine/agent/vocabulary.json``.

Rules
-----
Text is read lower-cased, sentence by sentence (``.`` not followed by a digit, ``!``,
``?``, ``;``, new line). Before anything else, list markers (``1.``, ``2)``, ``-`` at a
line start), dates (``2024-05-01``, ``01/05/2024``) and clock times are blanked.

Findings
    A phrase from the vocabulary (longest match wins) names one of the 18
    torchxrayvision labels, a group of labels ("opacity", "lesion"), or another
    finding ("tuberculosis", "pacemaker"...).

    - Affirmed: supported only if one of its labels is present in the report (a
      finding with ``present: true``, a lesion, or a diagnosis naming it), else
      ``unsupported_finding`` (the report has it absent, or does not have it).
    - Negated (in the scope of a negation cue): ``contradicted_negation`` when one of
      its labels is present (unless a side given with the negation excludes the side
      it is present on: "no right pneumothorax" with a left one is true); when the report
      does not assess the label at all, ``unsupported_finding``.
    - Phrases asserting normality ("heart size is normal", "lungs are clear", "no acute
      cardiopulmonary abnormality") negate their labels; they are checked for
      contradictions, and need the report to assess at least one of their labels (a
      report of organ volumes alone assesses no finding, so "no abnormality" is
      ``unsupported_finding`` there).
    - Other findings (outside the 18 labels) are supported only if the report's text
      (labels, diagnoses, suggestion, evidence, locations, warnings) uses one of their
      terms; negating one that a diagnosis or lesion names is a contradiction.

Negation
    NegEx-style. A pre-cue ("no", "without", "negative for", "absence of"...) covers the
    words after it up to the end of the sentence or a terminator ("but", "however",
    "is present", "there is", "consistent with"...); commas and "or"/"and" do not end
    it, so "no effusion, pneumothorax or edema" negates all three. A post-cue ("is
    absent", "not seen", "has resolved"...) covers the words before it back to the
    sentence start, a terminator or another cue. Pseudo-negations ("no change in",
    "cannot be excluded") are not negations.

Sides and zones
    Each side (left / right / bilateral, "bibasal"...) and zone (upper / middle / lower,
    "apical", "basal", "lower lobe"...) outside a negation scope is attached to the
    nearest affirmed finding of its clause (clauses split at commas, "and", "with",
    "but"...), else of its sentence, else (for a sentence without findings, "It is
    left-sided.") to the last affirmed finding of the previous sentence, and must be one
    the report gives that finding (its side/zone, a lesion's side/zone or the words of
    the lesion's location). Left or right is supported by bilateral, and bilateral by
    left plus right. A side that belongs to an organ ("the left lung is clear") and has
    no finding in its sentence is free. A bare "upper"/"middle"/"lower" is a zone only
    right after a side word or before a finding/organ word ("lower probability" is not).
    Otherwise ``unsupported_side`` / ``unsupported_zone``.

Unknown words
    A phrase list cannot name every finding a language model can invent ("cardiac
    perforation"). With ``strict_vocabulary`` (the default) every word must be a
    vocabulary term, one of the ordinary report words of the vocabulary
    (``report_words``: "the", "probability", "zone", "follow"...) or a word of the
    report's own text (labels, locations, measurement names, diagnoses, suggestion);
    any other word is an ``unsupported_finding``.

Numbers
    Every number (and number word "two".."twelve") must match a number of the report.
    A minus sign right before a number that follows a space, a bracket or the start keeps
    its sign ("-850 HU" matches a mean attenuation of -850.2, never 850); a hyphen after a
    letter or digit ("T4-5", "3-5 mm") is not a sign.
    The tolerance is half a unit of the last digit the narrative writes ("12.3" matches
    12.34, "12" matches 12.3), and a whole number never matches a value below 1.

    - Percentages ("61%", "61.0 percent") match probabilities, thresholds and
      confidences times 100 (0.61) and values in %; a bare "61" does not match 0.61.
    - Lengths and areas with a unit ("1.2 cm", "12 mm", "150 mm2") match measurement
      values of that kind, mm and cm converted.
    - Durations ("6 months") match the follow-up months, or a number written with the
      same unit in the report's text.
    - Counts (a number just before a finding, "two nodules", or before "findings")
      match the number of lesions of that label, one for a present label (two when
      bilateral), or the number of present labels.
    - Other numbers match any number of the report: probabilities (0.61 as "0.61" or
      "0.6"), thresholds, confidences, measurement values, follow-up months and numbers
      written in the report's own text (suggestion, evidence, locations).

    Ignored: list markers ("1." at a line or sentence start, "2)"), dates
    ("2024-05-01", "01/05/2024"), clock times, ordinals and tokens glued to letters
    ("2nd", "T4", "3D"), and numbers inside vocabulary terms ("COVID-19"). Otherwise
    ``unsupported_number``.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

SIDES = ("left", "right", "bilateral")
ZONES = ("upper", "middle", "lower")
_BARE_ZONES = {"upper", "middle", "mid", "lower"}
_CLAUSE_SPLIT = re.compile(r",|\b(?:and|with|but|however|although|though|whereas|while|yet|plus)\b")
_SENTENCE_END = re.compile(r"\.(?!\d)|[!?;\n]")
_LIST_MARKER = re.compile(
    r"(?m)^[ \t]*(?:\d{1,2}[.)]|[-*\u2022])[ \t]+|(?<![\w.])\d{1,2}\)[ \t]|(?<=[.:;] )\d{1,2}\.[ \t]"
)
_DATE_TIME = re.compile(
    r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}[/.]\d{1,2}[/.]\d{2,4}\b|\b\d{1,2}:\d{2}(?::\d{2})?\b"
)
_NUMBER = re.compile(
    r"(?<![\w.])(-?\d+(?:\.\d+)?)(?:\s*(%|percent|per cent|mm2|mm\u00b2|cm2|cm\u00b2|mm|cm|months?|weeks?|"
    r"years?|days?|degrees?|\u00b0|deg|px))?(?![\w\u00b2])(?![/:.]\d)"
)
#: A word for the unknown-word rule; tokens with digits ("t4", "2nd", "12mm") are not words.
_WORD = re.compile(r"[a-z0-9]*[a-z][a-z0-9]*")
_LENGTH_MM = {"mm": 1.0, "cm": 10.0}
_AREA_MM2 = {"mm2": 1.0, "mm\u00b2": 1.0, "cm2": 100.0, "cm\u00b2": 100.0}
_TRANSLATE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u2013": "-", "\u2014": "-", "\u2212": "-",
                            "\u00a0": " "})


@lru_cache(maxsize=1)
def vocabulary() -> dict[str, Any]:
    """The guard's vocabulary (package data ``engine/agent/vocabulary.json``)."""
    text = (importlib.resources.files("engine.agent") / "vocabulary.json").read_text(encoding="utf-8")
    return json.loads(text)


def _phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    """One regex over ``phrases``: whole words, longest first, spaces matching spaces/hyphens."""
    parts = []
    for phrase in sorted(set(phrases), key=len, reverse=True):
        words = [re.escape(w) for w in re.split(r"[\s-]+", phrase.strip()) if w]
        parts.append(r"[\s-]+".join(words))
    return re.compile(r"(?<![\w])(?:" + "|".join(parts) + r")(?![\w])")


def _norm(text: str) -> str:
    return re.sub(r"[\s-]+", " ", text.strip().lower())


@dataclass(frozen=True)
class _Term:
    kind: str  # "finding" (labels), "other" (canonical name), "normal" (labels it negates)
    labels: frozenset[str]
    name: str


@dataclass(frozen=True)
class _Lexicon:
    terms: dict[str, _Term]
    term_pattern: re.Pattern[str]
    label_names: dict[str, str]  # lower-case label (and "_" -> " ") -> canonical label
    display: dict[str, str]
    sides: dict[str, str]
    side_pattern: re.Pattern[str]
    zones: dict[str, str]
    zone_pattern: re.Pattern[str]
    organ_pattern: re.Pattern[str]
    pre_pattern: re.Pattern[str]
    post_pattern: re.Pattern[str]
    pseudo_pattern: re.Pattern[str]
    terminator_pattern: re.Pattern[str]
    number_words: dict[str, int]
    number_word_pattern: re.Pattern[str]
    report_words: frozenset[str]

    @property
    def labels(self) -> list[str]:  # noqa: D102
        return list(self.display)


@lru_cache(maxsize=1)
def lexicon() -> _Lexicon:
    """The vocabulary compiled into regexes (built once)."""
    vocab = vocabulary()
    terms: dict[str, _Term] = {}

    def add(phrase: str, term: _Term) -> None:
        key = _norm(phrase)
        if key in terms and (terms[key].kind, terms[key].labels) != (term.kind, term.labels):
            raise ValueError(f"vocabulary.json: {phrase!r} has two meanings")
        terms.setdefault(key, term)

    display = {label: spec["display"] for label, spec in vocab["findings"].items()}
    all_labels = frozenset(display)
    for label, spec in vocab["findings"].items():
        for phrase in [*spec["terms"], label.replace("_", " ")]:
            add(phrase, _Term("finding", frozenset({label}), label))
    for group in vocab["generic_terms"]:
        for phrase in group["terms"]:
            add(phrase, _Term("finding", frozenset(group["labels"]), phrase))
    for name, phrases in vocab["other_findings"].items():
        for phrase in phrases:
            add(phrase, _Term("other", frozenset(), name))
    for group in vocab["normal_phrases"]:
        labels = all_labels if group["labels"] == ["*"] else frozenset(group["labels"])
        for phrase in group["terms"]:
            add(phrase, _Term("normal", labels, phrase))
    sides = {_norm(p): side for side, phrases in vocab["sides"].items() for p in phrases}
    zones = {_norm(p): zone for zone, phrases in vocab["zones"].items() for p in phrases}
    organs = [p for phrases in vocab["organs"].values() for p in phrases]
    negation = vocab["negation"]
    label_names = {}
    for label in display:
        label_names[label.lower()] = label
        label_names[label.lower().replace("_", " ")] = label
    words = vocab["number_words"]
    return _Lexicon(
        terms=terms, term_pattern=_phrase_pattern(terms), label_names=label_names, display=display,
        sides=sides, side_pattern=_phrase_pattern(sides), zones=zones, zone_pattern=_phrase_pattern(zones),
        organ_pattern=_phrase_pattern(organs), pre_pattern=_phrase_pattern(negation["pre"]),
        post_pattern=_phrase_pattern(negation["post"]), pseudo_pattern=_phrase_pattern(negation["pseudo"]),
        terminator_pattern=_phrase_pattern(negation["terminators"]),
        number_words=dict(words), number_word_pattern=_phrase_pattern(words),
        report_words=frozenset(vocab["report_words"]),
    )


# -- the report side ---------------------------------------------------------------------------


@dataclass
class _Support:
    """What the structured report supports: labels, their sides/zones, numbers, text."""

    present: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    absent: dict[str, float | None] = field(default_factory=dict)
    other_positive: set[str] = field(default_factory=set)
    other_mentioned: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    durations: dict[str, list[float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    count_options: dict[str, set[int]] = field(default_factory=dict)
    findings_count: int = 0
    plain: list[float] = field(default_factory=list)
    percent: list[float] = field(default_factory=list)
    length_mm: list[float] = field(default_factory=list)
    area_mm2: list[float] = field(default_factory=list)

    def add_present(self, labels: Iterable[str], side: str | None = None, zone: str | None = None,
                    where: str | None = None) -> None:
        sides, zones = set(), set()
        if side in SIDES:
            sides.add(side)
        if zone in ZONES:
            zones.add(zone)
        if where:
            sides |= set(_side_words(where))
            zones |= set(_zone_words(where))
        for label in labels:
            record = self.present.setdefault(label, {"sides": set(), "zones": set()})
            record["sides"] |= sides
            record["zones"] |= zones


def _labels_in(text: str) -> set[str]:
    """Labels a report string names (an exact label, else vocabulary phrases in it)."""
    lex = lexicon()
    exact = lex.label_names.get(text.strip().lower())
    if exact:
        return {exact}
    found: set[str] = set()
    for match in lex.term_pattern.finditer(text.lower()):
        term = lex.terms[_norm(match.group(0))]
        if term.kind == "finding" and len(term.labels) == 1:
            found |= term.labels
    return found


def _others_in(text: str) -> set[str]:
    lex = lexicon()
    return {lex.terms[_norm(m.group(0))].name for m in lex.term_pattern.finditer(text.lower())
            if lex.terms[_norm(m.group(0))].kind == "other"}


def _side_words(text: str) -> list[str]:
    lex = lexicon()
    return [lex.sides[_norm(m.group(0))] for m in lex.side_pattern.finditer(text.lower())]


def _zone_words(text: str) -> list[str]:
    lex = lexicon()
    return [lex.zones[_norm(m.group(0))] for m in lex.zone_pattern.finditer(text.lower())]


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _unit_key(unit: Any) -> str:
    return str(unit or "").strip().lower()


def support_of(report: dict[str, Any]) -> _Support:
    """The facts of a structured report the guard checks against."""
    support = _Support()
    for finding in report.get("findings") or []:
        labels = _labels_in(str(finding.get("label", "")))
        if finding.get("present"):
            support.add_present(labels, finding.get("side"), finding.get("zone"))
        else:
            for label in labels:
                support.absent.setdefault(label, finding.get("probability"))
        for key in ("probability", "threshold"):
            value = _number(finding.get(key))
            if value is not None:
                support.plain.append(value)
                support.percent.append(value * 100)
    for lesion in report.get("lesions") or []:
        text = str(lesion.get("label", ""))
        others = _others_in(text)
        support.add_present(_labels_in(text) | {f"other:{name}" for name in others}, lesion.get("side"),
                            lesion.get("zone"), lesion.get("location"))
        support.other_positive |= others
        for measurement in (lesion.get("measurements") or {}).values():
            _add_measurement(support, measurement)
    for diagnosis in report.get("diagnoses") or []:
        text = str(diagnosis.get("disease", ""))
        others = _others_in(text)
        support.add_present(_labels_in(text) | {f"other:{name}" for name in others})
        support.other_positive |= others
        value = _number(diagnosis.get("confidence"))
        if value is not None:
            support.plain.append(value)
            support.percent.append(value * 100)
    for measurement in report.get("measurements") or []:
        _add_measurement(support, measurement)
    management = report.get("management") or {}
    months = _number(management.get("follow_up_months"))
    if months is not None:
        support.plain.append(months)
        support.durations.setdefault("month", []).append(months)
    # Counts: of each present label (lesions of it, else one; two when bilateral), of findings.
    for lesion in report.get("lesions") or []:
        for key in _labels_in(str(lesion.get("label", ""))) | {f"other:{n}" for n in _others_in(str(lesion.get("label", "")))}:
            support.counts[key] = support.counts.get(key, 0) + 1
    for key, record in support.present.items():
        support.count_options.setdefault(key, set()).update({support.counts.get(key, 1)}
                                                            | ({2} if "bilateral" in record["sides"] else set()))
    support.findings_count = len([k for k in support.present if not k.startswith("other:")])
    # Words and numbers written in the report's own text.
    text_fields = {k: v for k, v in report.items() if k not in ("schema_version",)}
    for text in _strings(text_fields):
        support.other_mentioned |= _others_in(text)
        support.words |= set(_WORD.findall(text.lower().translate(_TRANSLATE)))
        for number in _numbers(text.lower().translate(_TRANSLATE), []):
            support.plain.append(number.value)
            if number.unit in ("%", "percent", "per cent"):
                support.percent.append(number.value)
            elif _time_unit(number.unit):
                support.durations.setdefault(_time_unit(number.unit), []).append(number.value)
    return support


def _add_measurement(support: _Support, measurement: Any) -> None:
    if not isinstance(measurement, dict):
        return
    value = _number(measurement.get("value"))
    if value is None:
        return
    unit = _unit_key(measurement.get("unit"))
    support.plain.append(value)
    if unit in _LENGTH_MM:
        support.length_mm.append(value * _LENGTH_MM[unit])
    elif unit in _AREA_MM2:
        support.area_mm2.append(value * _AREA_MM2[unit])
    elif unit == "%":
        support.percent.append(value)


# -- the narrative side ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Number:
    value: float
    decimals: int
    unit: str
    start: int
    end: int
    text: str


def _numbers(text: str, skip: list[tuple[int, int]], start: int = 0, end: int | None = None) -> list[_Number]:
    end = len(text) if end is None else end
    found = []
    for match in _NUMBER.finditer(text, start, end):
        if any(a <= match.start() < b for a, b in skip):
            continue
        digits = match.group(1)
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        found.append(_Number(float(digits), decimals, (match.group(2) or "").strip(), match.start(), match.end(),
                             match.group(0).strip()))
    words = lexicon().number_words
    for match in lexicon().number_word_pattern.finditer(text, start, end):
        if not any(a <= match.start() < b for a, b in skip):
            found.append(_Number(float(words[_norm(match.group(0))]), 0, "", match.start(), match.end(),
                                 match.group(0)))
    return found


def _close(value: float, target: float, decimals: int, scale: float = 1.0) -> bool:
    """``value`` (written with ``decimals``) is ``target`` rounded to that precision."""
    if decimals == 0 and abs(target) < 1 and target != value * scale:
        return False
    return abs(value * scale - target) <= 0.5 * 10.0 ** -decimals * scale + 1e-9


def _time_unit(unit: str) -> str | None:
    """``month`` / ``week`` / ``year`` / ``day`` for a time unit, else None."""
    for name in ("month", "week", "year", "day"):
        if unit.startswith(name):
            return name
    return None


def _number_supported(number: _Number, support: _Support) -> bool:
    unit = number.unit
    if _time_unit(unit):
        return any(_close(number.value, v, number.decimals) for v in support.durations.get(_time_unit(unit) or "", []))
    if unit in ("%", "percent", "per cent"):
        return any(_close(number.value, v, number.decimals) for v in support.percent)
    if unit in _LENGTH_MM and support.length_mm:
        return any(_close(number.value, v, number.decimals, _LENGTH_MM[unit]) for v in support.length_mm)
    if unit in _AREA_MM2 and support.area_mm2:
        return any(_close(number.value, v, number.decimals, _AREA_MM2[unit]) for v in support.area_mm2)
    return any(_close(number.value, v, number.decimals) for v in support.plain)


@dataclass
class _Mention:
    term: _Term
    start: int
    end: int
    text: str
    negated: bool = False
    scope: tuple[int, int] | None = None

    @property
    def keys(self) -> frozenset[str]:
        """The report entries this mention names (labels, or ``other:<name>``)."""
        return self.term.labels if self.term.kind != "other" else frozenset({f"other:{self.term.name}"})


def _spans(pattern: re.Pattern[str], text: str, start: int, end: int) -> list[re.Match[str]]:
    return list(pattern.finditer(text, start, end))


def _cues(pattern: re.Pattern[str], text: str, start: int, end: int,
          blocked: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans of ``pattern`` in ``text[start:end]`` outside vocabulary terms and pseudo-negations."""
    return [(m.start(), m.end()) for m in pattern.finditer(text, start, end) if not _inside(m.start(), blocked)]


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _inside(position: int, spans: Iterable[tuple[int, int]]) -> bool:
    return any(a <= position < b for a, b in spans)


def _blank(text: str, pattern: re.Pattern[str]) -> str:
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def _sentences(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if match.start() > start:
            spans.append((start, match.start()))
        start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def _clauses(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans, begin = [], start
    for match in _CLAUSE_SPLIT.finditer(text, start, end):
        spans.append((begin, match.start()))
        begin = match.end()
    spans.append((begin, end))
    return spans


def _violation(kind: str, text: str, detail: str, field_name: str) -> dict[str, str]:
    return {"kind": kind, "text": text.strip(), "detail": detail, "field": field_name}


def _label_list(labels: Iterable[str]) -> str:
    return ", ".join(sorted(labels))


def _check_text(original: str, field_name: str, support: _Support, *, strict: bool) -> list[dict[str, str]]:
    lex = lexicon()
    text = original.lower().translate(_TRANSLATE)
    text = _blank(_blank(text, _LIST_MARKER), _DATE_TIME)
    violations: list[dict[str, str]] = []
    previous_findings: list[_Mention] = []
    for s_start, s_end in _sentences(text):
        mentions = [_Mention(lex.terms[_norm(m.group(0))], m.start(), m.end(), original[m.start():m.end()])
                    for m in _spans(lex.term_pattern, text, s_start, s_end)]
        term_spans = [(m.start, m.end) for m in mentions]
        pseudo = [(m.start(), m.end()) for m in _spans(lex.pseudo_pattern, text, s_start, s_end)]
        blocked = term_spans + pseudo

        pre, post = (_cues(pattern, text, s_start, s_end, blocked) for pattern in (lex.pre_pattern, lex.post_pattern))
        # Overlapping cues: the longer wins ("not seen" is a post-cue, "negative for" a pre-cue).
        pre, post = ([c for c in mine if not any(_overlap(c, o) and o[1] - o[0] > c[1] - c[0] for o in other)]
                     for mine, other in ((pre, post), (post, pre)))
        terminators = _cues(lex.terminator_pattern, text, s_start, s_end, blocked)
        scopes: list[tuple[int, int]] = []
        for _, c_end in pre:
            stops = [t[0] for t in terminators if t[0] >= c_end]
            scopes.append((c_end, min(stops, default=s_end)))
        for c_start, _ in post:
            bounds = [b for _, b in terminators + pre + post if b <= c_start]
            scopes.append((max(bounds, default=s_start), c_start))
        for mention in mentions:
            for scope in scopes:
                if scope[0] <= mention.start < scope[1]:
                    mention.negated, mention.scope = True, scope
                    break

        findings = [m for m in mentions if m.term.kind in ("finding", "other")]
        affirmed = [m for m in findings if not m.negated]
        organs = [(m.start(), m.end()) for m in _spans(lex.organ_pattern, text, s_start, s_end)]
        side_hits = [(m, lex.sides[_norm(m.group(0))]) for m in _spans(lex.side_pattern, text, s_start, s_end)
                     if not _inside(m.start(), term_spans)]
        zone_hits = []
        for match in _spans(lex.zone_pattern, text, s_start, s_end):
            if _inside(match.start(), term_spans):
                continue
            word = _norm(match.group(0))
            if word in _BARE_ZONES and not _zone_in_context(text, match, side_hits, mentions, organs):
                continue
            zone_hits.append((match, lex.zones[word]))

        # Findings.
        for mention in mentions:
            violations += _finding_violations(mention, support, side_hits, field_name)

        # Sides and zones.
        clauses = _clauses(text, s_start, s_end)
        for hits, kind in ((side_hits, "side"), (zone_hits, "zone")):
            for match, value in hits:
                if _inside(match.start(), scopes):
                    continue  # qualifies a negated finding: checked with the negation
                target = _attach(match, affirmed, clauses, previous_findings if not findings else [],
                                 organ_bound=_organ_bound(text, match, organs))
                if target == "free":
                    continue
                phrase = original[match.start():match.end()]
                if target is None:
                    violations.append(_violation(f"unsupported_{kind}", phrase,
                                                 f"the {kind} '{value}' qualifies no finding of the report",
                                                 field_name))
                    continue
                if not _place_supported(kind, value, target.keys, support):
                    given = _places(kind, target.keys, support)
                    violations.append(_violation(
                        f"unsupported_{kind}", f"{phrase} ... {target.text}" if match.start() > target.end
                        else f"{phrase} {target.text}" if match.end() <= target.start else phrase,
                        f"the report gives {target.text.lower()} the {kind} "
                        f"{'/'.join(sorted(given)) if given else 'none'}, not '{value}'", field_name))

        # Unknown words: anything outside the vocabulary and the report's own text may be
        # an invented finding ("perforation") the phrase lists cannot know about.
        if strict:
            known = term_spans + pseudo + organs
            known += [(m.start(), m.end()) for m, _ in side_hits]
            for pattern in (lex.pre_pattern, lex.post_pattern, lex.terminator_pattern, lex.zone_pattern,
                            lex.side_pattern):
                known += [(m.start(), m.end()) for m in pattern.finditer(text, s_start, s_end)]
            known += [(n.start, n.end) for n in _numbers(text, [], s_start, s_end)]
            for match in _WORD.finditer(text, s_start, s_end):
                word = match.group(0)
                if any(ch.isdigit() for ch in word) or word in lex.report_words or word in support.words or _inside(match.start(), known):
                    continue
                violations.append(_violation("unsupported_finding", original[match.start():match.end()],
                                             f"'{word}' is neither in the structured report nor in the guard's "
                                             "vocabulary (a possible invented finding)", field_name))

        # Numbers.
        for number in _numbers(text, term_spans, s_start, s_end):
            counted = _counted(text, number, mentions, support)
            if counted is not None:
                options = counted[1]
                if not number.decimals and int(number.value) in options:
                    continue
                violations.append(_violation(
                    "unsupported_number", f"{original[number.start:number.end]} {counted[0]}".strip(),
                    f"the report has {'/'.join(str(o) for o in sorted(options)) or 'no'} "
                    f"{counted[0].lower()}, not {number.text}", field_name))
            elif not _number_supported(number, support):
                violations.append(_violation("unsupported_number", original[number.start:number.end],
                                             f"{number.text} matches no number of the structured report "
                                             "(probabilities, measurements, follow-up)", field_name))
        if findings:
            previous_findings = affirmed
    return violations


_COUNT_GAP = re.compile(r"\s+(?:[a-z]+\s+){0,2}")
_COUNTED_WORDS = re.compile(r"\s+(?:[a-z]+\s+){0,2}?(?:findings?|abnormalit(?:y|ies))\b")


def _counted(text: str, number: _Number, mentions: list[_Mention],
             support: _Support) -> tuple[str, set[int]] | None:
    """For a count ("two nodules", "3 findings"): what it counts and the counts the report allows."""
    if number.unit:
        return None
    gap = _COUNT_GAP.match(text, number.end)
    reach = gap.end() if gap else number.end
    for mention in mentions:
        if number.end < mention.start <= reach and mention.term.kind in ("finding", "other"):
            between = text[number.end:mention.start]
            if _COUNT_GAP.fullmatch(between) or not between.strip():
                options = set().union(*(support.count_options.get(k, set()) for k in mention.keys))
                return text[mention.start:mention.end], options
    if _COUNTED_WORDS.match(text, number.end):
        return "findings", {support.findings_count}
    return None


def _zone_in_context(text: str, match: re.Match[str], side_hits: list, mentions: list[_Mention],
                     organs: list[tuple[int, int]]) -> bool:
    before = text[:match.start()].rstrip(" -")
    if any(m.end() == len(before) for m, _ in side_hits):
        return True
    after_start = match.end() + (len(text[match.end():]) - len(text[match.end():].lstrip(" -")))
    return any(m.start == after_start for m in mentions) or any(a == after_start for a, _ in organs)


def _organ_bound(text: str, match: re.Match[str], organs: list[tuple[int, int]]) -> bool:
    """True when a side/zone word directly qualifies an organ word ("left lung", "lung base")."""
    after = match.end() + (len(text[match.end():]) - len(text[match.end():].lstrip(" -")))
    if any(a == after for a, _ in organs):
        return True
    before = len(text[:match.start()].rstrip(" -"))
    return any(b == before for _, b in organs) or any(a <= match.start() < b for a, b in organs)


def _attach(match: re.Match[str], affirmed: list[_Mention], clauses: list[tuple[int, int]],
            previous: list[_Mention], *, organ_bound: bool) -> _Mention | str | None:
    """The finding a side/zone word qualifies, ``"free"`` for an organ's own side, or None."""
    position = match.start()

    def nearest(candidates: list[_Mention]) -> _Mention | None:
        if not candidates:
            return None
        return min(candidates, key=lambda m: (min(abs(m.start - match.end()), abs(position - m.end)),
                                              m.start < position))

    clause = next(((a, b) for a, b in clauses if a <= position < b), None)
    if clause is not None:
        in_clause = [m for m in affirmed if clause[0] <= m.start < clause[1]]
        if in_clause:
            return nearest(in_clause)
    if organ_bound:
        return "free"
    if affirmed:
        return nearest(affirmed)
    if previous:
        return previous[-1]
    return None


def _places(kind: str, labels: Iterable[str], support: _Support) -> set[str]:
    key = "sides" if kind == "side" else "zones"
    return set().union(*(support.present[label][key] for label in labels if label in support.present))


def _place_supported(kind: str, value: str, labels: Iterable[str], support: _Support) -> bool:
    given = _places(kind, labels, support)
    if value in given:
        return True
    if kind == "side":
        if value in ("left", "right") and "bilateral" in given:
            return True
        if value == "bilateral" and {"left", "right"} <= given:
            return True
    return False


def _finding_violations(mention: _Mention, support: _Support, side_hits: list,
                        field_name: str) -> list[dict[str, str]]:
    term = mention.term
    if term.kind == "other":
        if mention.negated and term.name in support.other_positive:
            return [_violation("contradicted_negation", mention.text,
                               f"the report names {term.name} as present", field_name)]
        if term.name not in support.other_mentioned and term.name not in support.other_positive:
            return [_violation("unsupported_finding", mention.text,
                               f"'{term.name}' is not in the structured report", field_name)]
        return []
    present = [label for label in term.labels if label in support.present]
    if term.kind == "normal" or mention.negated:
        if present:
            qualifiers = {value for match, value in side_hits
                          if mention.scope and mention.scope[0] <= match.start() < mention.scope[1]}
            if qualifiers and term.kind != "normal":
                present = [label for label in present
                           if not support.present[label]["sides"]
                           or any(_place_supported("side", q, [label], support) for q in qualifiers)]
            if present:
                return [_violation("contradicted_negation", mention.text,
                                   f"the report has {_label_list(present)} present", field_name)]
            return []
        if not any(label in support.absent for label in term.labels):
            what = "negated" if term.kind == "finding" else "called normal"
            return [_violation("unsupported_finding", mention.text,
                               f"{what}, but the report does not assess {_label_list(term.labels)}", field_name)]
        return []
    if present:
        return []
    absent = [label for label in term.labels if label in support.absent]
    if absent:
        probability = support.absent[absent[0]]
        shown = f" (probability {probability:.2f})" if isinstance(probability, int | float) else ""
        detail = f"the report has {_label_list(absent)} absent{shown}"
    else:
        detail = f"{_label_list(term.labels)} is not in the structured report"
    return [_violation("unsupported_finding", mention.text, detail, field_name)]


def check_narrative(narrative: dict | str, report: dict, *, strict_vocabulary: bool = True) -> list[dict]:
    """Violations of the narrative against the structured report (empty: it passes).

    Parameters
    ----------
    narrative:
        ``{"findings": str, "impression": str}`` (every string value is checked) or plain text.
    report:
        The structured report (``findings``, ``diagnoses``, ``lesions``,
        ``measurements``, ``management``, ``quality``...).
    strict_vocabulary:
        Also reject words that are neither vocabulary terms, ordinary report words
        (``report_words``) nor words of the report's own text (default True).

    Returns
    -------
    list of dict
        ``{"kind", "text", "detail", "field"}``, ``kind`` one of ``unsupported_finding``,
        ``contradicted_negation``, ``unsupported_side``, ``unsupported_zone``,
        ``unsupported_number``; in reading order, without duplicates. The rules are in
        the module docstring.
    """
    if isinstance(narrative, str):
        fields = [("text", narrative)]
    elif isinstance(narrative, dict):
        fields = [(str(k), v) for k, v in narrative.items() if isinstance(v, str)]
    else:
        raise TypeError("narrative must be a dict of strings or a string")
    support = support_of(report)
    violations, seen = [], set()
    for field_name, text in fields:
        for violation in _check_text(text, field_name, support, strict=strict_vocabulary):
            key = (violation["kind"], violation["text"].lower(), violation["field"])
            if key not in seen:
                seen.add(key)
                violations.append(violation)
    return violations


def named_labels(text: str) -> set[str]:
    """Labels a text names with a single-label finding term, negated or not."""
    lex = lexicon()
    named: set[str] = set()
    for match in lex.term_pattern.finditer(text.lower().translate(_TRANSLATE)):
        term = lex.terms[_norm(match.group(0))]
        if term.kind == "finding":
            named |= term.labels
    return named


def display_name(label: str) -> str:
    """The narrative wording of a label ("Effusion" -> "pleural effusion")."""
    lex = lexicon()
    canonical = lex.label_names.get(label.strip().lower())
    return lex.display[canonical] if canonical else label.replace("_", " ").lower()
