"""Similarity of retrieved cases and the similarity-weighted label vote over them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
SCORE_DECIMALS = 6


def similarity_from_cosine(cosine: np.ndarray | float) -> np.ndarray:
    """Reported similarity: the cosine clamped to 0..1, ``max(0, min(1, cos))``.

    Chosen over ``(cos + 1) / 2`` so that a similarity reads as the cosine itself in
    the range that matters (0.9 means cosine 0.9, and ``min_similarity`` thresholds keep
    their usual meaning), and so that unrelated or anti-correlated cases (cos <= 0)
    weigh nothing in the label vote. The upper clamp removes float rounding above 1.
    """
    return np.clip(np.asarray(cosine, dtype=np.float64), 0.0, 1.0)


def aggregate_labels(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Similarity-weighted vote per label over retrieved cases.

    For a label ``L``, let ``P``, ``N`` and ``U`` be the results whose value for ``L``
    is 1 (positive), 0 (negative) and -1 (uncertain), and ``s_i`` their similarity
    (results that do not carry ``L`` are left out). Then::

        score(L) = sum(s_i * v_i for i in P | N) / sum(s_i for i in P | N)
                 = sum(s_i for i in P) / sum(s_i for i in P | N)

    with ``v_i = 1`` for positive and ``0`` for negative: the similarity-weighted
    fraction of positive cases, in 0..1. Uncertain cases are counted but do not enter
    the score. ``score`` is None when no case is positive or negative, or when their
    similarities sum to 0. ``supporting_cases`` = ``|P| + |N|``, the cases the score
    rests on.

    Example: similarities 0.9 (positive), 0.6 (negative), 0.5 (uncertain) give
    ``0.9 / (0.9 + 0.6) = 0.6`` with 2 supporting cases and 1 uncertain.

    Parameters
    ----------
    results:
        Mappings with ``"similarity"`` (0..1) and ``"labels"`` (``{name: -1|0|1}``).

    Returns
    -------
    dict
        ``{label: {"score", "positive_cases", "negative_cases", "uncertain_cases",
        "supporting_cases"}}``, ordered by score (highest first, None last), then name.
    """
    tallies: dict[str, dict[str, float]] = {}
    for result in results:
        similarity = float(result["similarity"])
        for label, value in (result.get("labels") or {}).items():
            tally = tallies.setdefault(
                label, {"positive": 0, "negative": 0, "uncertain": 0, "weight": 0.0, "positive_weight": 0.0}
            )
            if value == POSITIVE:
                tally["positive"] += 1
                tally["weight"] += similarity
                tally["positive_weight"] += similarity
            elif value == NEGATIVE:
                tally["negative"] += 1
                tally["weight"] += similarity
            elif value == UNCERTAIN:
                tally["uncertain"] += 1
    aggregated = {}
    for label, tally in tallies.items():
        score = (
            round(tally["positive_weight"] / tally["weight"], SCORE_DECIMALS)
            if tally["weight"] > 0 else None
        )
        aggregated[label] = {
            "score": score,
            "positive_cases": int(tally["positive"]),
            "negative_cases": int(tally["negative"]),
            "uncertain_cases": int(tally["uncertain"]),
            "supporting_cases": int(tally["positive"] + tally["negative"]),
        }
    order = sorted(aggregated, key=lambda name: (aggregated[name]["score"] is None,
                                                 -(aggregated[name]["score"] or 0.0), name))
    return {name: aggregated[name] for name in order}
