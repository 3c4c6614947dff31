"""Merge classifier probabilities, similar-case labels and segmentation into one view.

``combined`` per label = (p_classifier + w * score_rag) / (1 + w), with the RAG weight
``w = supporting_cases / top_k`` (0..1): a vote backed by few similar cases moves the
classifier's probability little; a label only one side knows keeps that side's value.
The suggested prompt hands an LLM the facts, never a conclusion the facts lack.
"""

from __future__ import annotations

from typing import Any


def merge_labels(classification: dict | None, similar: dict | None, top_k: int) -> list[dict[str, Any]]:
    """One row per label: classifier probability, RAG score and support, combined score."""
    rows: dict[str, dict[str, Any]] = {}
    for finding in (classification or {}).get("findings", []):
        rows[finding["label"]] = {"label": finding["label"], "classifier": finding["probability"],
                                  "rag": None, "supporting_cases": 0}
    for label, vote in ((similar or {}).get("aggregated_labels") or {}).items():
        row = rows.setdefault(label, {"label": label, "classifier": None, "rag": None, "supporting_cases": 0})
        row["rag"] = vote.get("score")
        row["supporting_cases"] = int(vote.get("supporting_cases") or 0)
    for row in rows.values():
        p, r = row["classifier"], row["rag"]
        weight = min(1.0, row["supporting_cases"] / max(1, top_k))
        if p is not None and r is not None:
            row["combined"] = round((p + weight * r) / (1.0 + weight), 6)
        else:
            row["combined"] = p if p is not None else r
        row["rag_weight"] = round(weight, 3)
    return sorted(rows.values(), key=lambda r: -1.0 if r["combined"] is None else -r["combined"])


def suggested_prompt(merged: list[dict], segmentation: dict | None, similar: dict | None,
                     image: dict, model_trained: bool | None) -> str:
    """A compact, factual prompt for a language model to draft a report from."""
    lines = [f"Image: {image.get('type')} ({image.get('modality') or 'unknown modality'}), "
             f"{image.get('columns')}x{image.get('rows')} px."]
    if model_trained is False:
        lines.append("WARNING: results come from untrained development models and are not meaningful.")
    top = [r for r in merged if r["combined"] is not None][:5]
    if top:
        lines.append("Highest combined label scores (classifier / similar cases / combined): " + "; ".join(
            f"{r['label']} {_fmt(r['classifier'])} / {_fmt(r['rag'])} (n={r['supporting_cases']}) / {_fmt(r['combined'])}"
            for r in top))
    if segmentation and segmentation.get("status") == "ok":
        ctr = segmentation.get("ctr") or {}
        if ctr.get("status") == "ok":
            lines.append(f"Cardiothoracic ratio {ctr['ratio']:.2f}" + (f" ({ctr['finding']})" if ctr.get("finding") else "") + ".")
    results = (similar or {}).get("results") or []
    for case in results[:3]:
        impression = ((case.get("report") or {}).get("impression") or case.get("findings") or "")[:200]
        lines.append(f"Similar case {case['case_id']} (similarity {case['similarity']:.2f}): {impression}")
    lines.append("Write findings and an impression using only these facts; say when evidence is weak.")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
