"""The analysis panel's similar-case list names where each case came from."""

from __future__ import annotations


def test_similar_cases_show_their_source_name_or_source_unknown() -> None:
    from desktop.panels.analysis import AnalysisPanel

    result = {"similar_cases": {"results": [
        {"case_id": "custom-1", "similarity": 0.91, "findings": "Cardiomegaly.",
         "source_name": "chest/2024/<a>.dcm (folder studies)"},
        {"case_id": "custom-0123456789abcdef", "similarity": 0.5, "findings": None},  # stored before origins
    ]}}
    html = AnalysisPanel._details_html(result)
    assert "chest/2024/&lt;a&gt;.dcm (folder studies)" in html  # escaped
    assert html.count("source unknown") == 1
