"""The similarity mapping and the similarity-weighted label vote, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from engine.rag import aggregate_labels, similarity_from_cosine


def test_similarity_is_the_cosine_clamped_to_zero_one() -> None:
    cosines = np.array([-1.0, -0.2, 0.0, 0.35, 0.9, 1.0000002])
    assert similarity_from_cosine(cosines).tolist() == pytest.approx([0.0, 0.0, 0.0, 0.35, 0.9, 1.0])


def test_weighted_vote_by_hand() -> None:
    results = [
        {"similarity": 0.9, "labels": {"Effusion": 1, "Cardiomegaly": 1}},
        {"similarity": 0.6, "labels": {"Effusion": 0, "Cardiomegaly": -1}},
        {"similarity": 0.5, "labels": {"Effusion": -1}},
        {"similarity": 0.3, "labels": {"Effusion": 1, "Nodule": 0}},
        {"similarity": 0.2, "labels": {}},
    ]
    aggregated = aggregate_labels(results)
    # Effusion: positives 0.9 + 0.3, negatives 0.6, uncertain 0.5 left out of the score.
    assert aggregated["Effusion"] == {
        "score": pytest.approx((0.9 + 0.3) / (0.9 + 0.6 + 0.3)),  # 0.666667
        "positive_cases": 2, "negative_cases": 1, "uncertain_cases": 1, "supporting_cases": 3,
    }
    assert aggregated["Effusion"]["score"] == pytest.approx(0.666667, abs=1e-6)
    # Cardiomegaly: one positive (0.9), one uncertain: 0.9 / 0.9.
    assert aggregated["Cardiomegaly"] == {
        "score": 1.0, "positive_cases": 1, "negative_cases": 0, "uncertain_cases": 1, "supporting_cases": 1,
    }
    # Nodule: only a negative.
    assert aggregated["Nodule"]["score"] == 0.0
    assert aggregated["Nodule"]["supporting_cases"] == 1
    # Highest score first, then by name.
    assert list(aggregated) == ["Cardiomegaly", "Effusion", "Nodule"]


def test_similarity_weights_change_the_vote() -> None:
    """Two positives far away lose against one negative very close (weights, not counts)."""
    results = [
        {"similarity": 0.95, "labels": {"Pneumothorax": 0}},
        {"similarity": 0.2, "labels": {"Pneumothorax": 1}},
        {"similarity": 0.1, "labels": {"Pneumothorax": 1}},
    ]
    vote = aggregate_labels(results)["Pneumothorax"]
    assert vote["score"] == pytest.approx(0.3 / 1.25)  # 0.24, although 2 of 3 cases are positive
    assert (vote["positive_cases"], vote["negative_cases"]) == (2, 1)


def test_only_uncertain_or_zero_similarity_gives_no_score() -> None:
    aggregated = aggregate_labels([
        {"similarity": 0.8, "labels": {"Edema": -1}},
        {"similarity": 0.0, "labels": {"Mass": 1}},
    ])
    assert aggregated["Edema"] == {
        "score": None, "positive_cases": 0, "negative_cases": 0, "uncertain_cases": 1, "supporting_cases": 0,
    }
    assert aggregated["Mass"]["score"] is None
    assert aggregated["Mass"]["positive_cases"] == 1
    assert aggregate_labels([]) == {}
