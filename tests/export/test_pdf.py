"""The PDF report, read back with poppler (pdftoppm, pdftotext, pdfinfo) as a reader would."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.export.bundle import ExportOptions, gather
from engine.export.pdf import pdf_report
from engine.vocabulary import DISCLAIMER


def _poppler(tool: str, *args: str) -> str:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: install poppler-utils to test the PDF export")
    return subprocess.run([tool, *args], check=True, capture_output=True, text=True, timeout=120).stdout


def _write(tmp_path: Path, data: bytes, name: str = "report.pdf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _text(path: Path) -> str:
    return " ".join(_poppler("pdftotext", str(path), "-").split())


def _pages(path: Path) -> int:
    return int(next(line.split()[-1] for line in _poppler("pdfinfo", str(path)).splitlines()
                    if line.startswith("Pages:")))


def _red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] > 150) & (rgb[..., 1] < 40) & (rgb[..., 2] < 40)


@pytest.fixture(scope="module")
def default_pdf(worked, tmp_path_factory):
    bundle = gather(worked.engine.services, worked.session_id, ExportOptions(institution="St Elsewhere Hospital"))
    pdf_report(bundle)  # warm-up: reportlab's first build loads its fonts and caches
    start = time.perf_counter()
    (artifact,) = pdf_report(bundle)
    seconds = time.perf_counter() - start
    return bundle, artifact, _write(tmp_path_factory.mktemp("pdf"), artifact.data), seconds


def test_pdf_renders_pages_with_the_image_and_a_red_banner_on_each(default_pdf, tmp_path, request) -> None:
    bundle, artifact, path, seconds = default_pdf
    request.node.user_properties.append(("pdf_default_s", round(seconds, 3)))
    assert artifact.media_type == "application/pdf" and artifact.name == f"{bundle.session_id}_report.pdf"
    assert artifact.data.startswith(b"%PDF")
    _poppler("pdftoppm", "-r", "50", "-png", str(path), str(tmp_path / "page"))
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == _pages(path) >= 3
    for page in pages:
        rgb = np.asarray(Image.open(page).convert("RGB")).astype(int)
        assert _red(rgb[: rgb.shape[0] // 12]).mean() > 0.3, page.name  # the banner across the top
    first = np.asarray(Image.open(pages[0]).convert("RGB")).astype(int)
    assert first.std() > 30  # not blank: the radiograph and its overlays are on page 1
    coloured = (first.max(axis=-1) - first.min(axis=-1)) > 60
    # Overlay colours below the banner: the drawings and the click-to-segment mask alone give about
    # 0.06; the untrained organ masks add a machine-dependent share on top (0.07 on one machine).
    assert coloured[first.shape[0] // 12:].mean() > 0.04


def test_pdf_text_has_findings_guard_models_and_disclaimer(default_pdf) -> None:
    bundle, _, path, _ = default_pdf
    text = _text(path)
    for finding in bundle.report["findings"]:
        assert finding["label"] in text
    assert "not for diagnostic use" in text and bundle.banner in text
    assert f"guard {bundle.report['narrative']['guard']['status']}" in text
    for model in bundle.models:
        assert model["id"] in text and model["version"] in text
    assert "St Elsewhere Hospital" in text and "template default" in text
    assert "Agent trace" in text and "OrchestratorAgent" in text
    assert "700.29 px" in text and "pixel spacing unknown" in text
    # Only when the untrained organ masks gave one (an empty heart or lung mask gives none).
    ctr = ((bundle.images[0].segmentation or {}).get("ctr") or {}).get("ratio")
    assert ("Cardiothoracic ratio" in text) == (ctr is not None)
    assert "Findings of RG1_J2KI.dcm" in text  # a similar case's report excerpt
    assert "Left Lung" in text and "User drawings" in text  # the legend
    info = _poppler("pdfinfo", str(path))
    assert "Author: MedVision" in " ".join(info.split()) and DISCLAIMER in info


def test_templates_differ_in_length_and_detail(worked, tmp_path) -> None:
    texts, pages = {}, {}
    for template in ("clinical", "research"):
        bundle = gather(worked.engine.services, worked.session_id, ExportOptions(template=template))
        path = _write(tmp_path, pdf_report(bundle)[0].data, f"{template}.pdf")
        texts[template], pages[template] = _text(path), _pages(path)
    assert pages["clinical"] < pages["research"]
    assert "Agent trace" not in texts["clinical"] and "Agent trace" in texts["research"]
    assert "Findings of RG1_J2KI.dcm" not in texts["clinical"] and "Findings of RG1_J2KI.dcm" in texts["research"]
    prefix = bundle.models[0]["sha256"][:16]
    assert prefix in texts["research"] and prefix not in texts["clinical"]


def test_identifiers_and_sections_follow_the_options(worked, tmp_path) -> None:
    name = worked.engine.store.get_image(worked.image_id)["patient"]["PatientName"]
    hidden = _text(_write(tmp_path, pdf_report(gather(worked.engine.services, worked.session_id, ExportOptions()))[0].data))
    shown = _text(_write(tmp_path, pdf_report(gather(
        worked.engine.services, worked.session_id,
        ExportOptions(include_identifiers=True, include_report=False, include_measurements=False)))[0].data))
    assert name not in hidden and "(de-identified)" in hidden
    assert name in shown and "(de-identified)" not in shown
    assert "Agent trace" not in shown and "Narrative:" not in shown and "Measurements," not in shown
    assert "Findings" in shown  # without the agent report the classifier's findings remain


def test_missing_parts_are_listed(engine, rg1_path, tmp_path) -> None:
    session = engine.create_study_session("bare")["session_id"]
    image = engine.add_image_to_session(session, rg1_path, auto_analyze=False)["image_id"]
    bundle = gather(engine.services, session, ExportOptions())
    text = _text(_write(tmp_path, pdf_report(bundle)[0].data))
    assert "Not included" in text and f"image {image} has not been analysed" in text
    assert "not for diagnostic use" in text and "Development models" not in text


# -- words: with untrained models no paragraph passes for a reading -------------------------------
def _finding_words() -> re.Pattern[str]:
    """Words that state a finding: report words and every classifier label, in the table's wording too."""
    from engine.analysis.questions import display_name, labels

    names = {"impression", "shows", "consistent with"} | {label.replace("_", " ").lower() for label in labels()}
    names |= {display_name(label).lower() for label in labels()}
    return re.compile(r"\b(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b", re.I)


#: The sections of the PDF, each opening with its heading on a line of its own.
_PDF_HEADING = re.compile(r"^(Findings|Report|Agent trace|Models|Not included|Issues|"
                          r"(Measurements|Organs|Similar cases), image \w+|Image \w+: .*)$")


def _pdf_sections(path: Path) -> list[tuple[str, str]]:
    """``(heading, text after it)`` for every section of the PDF (pdftotext keeps the reading order)."""
    sections: list[tuple[str, list[str]]] = [("(top)", [])]
    for line in _poppler("pdftotext", str(path), "-").splitlines():
        if _PDF_HEADING.match(line.strip()):
            sections.append((line.strip(), []))
        else:
            sections[-1][1].append(line)
    return [(heading, " ".join(" ".join(lines).split())) for heading, lines in sections]


def test_untrained_report_texts_qualify_every_statement(worked, default_pdf) -> None:
    """Narrative, reasoning, the run's summary, chat answers, PDF, HTML and SR of the untrained run."""
    from html.parser import HTMLParser

    import pydicom

    from engine.agent.memory import ConversationMemory
    from engine.export.dicom_sr import dicom_sr
    from engine.export.html import html_report
    from engine.vocabulary import UNTRAINED_OUTPUTS

    finding = _finding_words()
    engine, session = worked.engine, worked.session_id
    report = engine.get_agent_run(session, worked.run_id)["report"]
    assert report["model_trained"] is False and any(f["present"] for f in report["findings"])
    paragraphs = [report["narrative"]["findings"], report["narrative"]["impression"], report["reasoning"]]
    paragraphs += [t["content"] for t in ConversationMemory(engine.store).context(session)["turns"]
                   if t["role"] == "agent"]  # the run's summary
    for question in ("Is there a mass?", "Is there a nodule in this region?"):  # the facts/LLM and table paths
        paragraphs.append(engine.ask_about_image(session, question)["answer"])
    region = engine.analyze_selected_region(session, {"type": "bbox", "coordinates": [0.12, 0.25, 0.42, 0.55],
                                                      "format": "relative"}, question="is there an effusion here?",
                                            actions=["describe", "classify"])
    paragraphs += [region["description"], region["answer"]["text"]]
    assert any(finding.search(p) for p in paragraphs)  # they do name findings: the check bites
    for text in paragraphs:
        assert text.startswith(UNTRAINED_OUTPUTS), text

    bundle, _, path, _ = default_pdf
    checked = 0
    for heading, text in _pdf_sections(path):
        if heading.startswith(("Image ", "Models", "Not included", "Issues", "(top)")):
            continue  # pictures with their legend, model ids, the export's own notes, trace issues
        if finding.search(text):
            checked += 1
            assert text.startswith(UNTRAINED_OUTPUTS), (heading, text[:200])
    assert checked >= 3  # findings, report, trace at least
    assert "Impression. " not in _text(path) and "Findings. " not in _text(path)

    class Sections(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.sections: list[list[str]] = []
            self.inside = False

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "section":
                self.sections.append([])
                self.inside = True

        def handle_endtag(self, tag: str) -> None:
            if tag == "section":
                self.inside = False

        def handle_data(self, data: str) -> None:
            if self.inside and data.strip():
                self.sections[-1].append(data.strip())

    page = Sections()
    page.feed(html_report(bundle)[0].data.decode("utf-8"))
    checked = 0
    for heading, *body in page.sections:
        text = " ".join(body)
        if heading.startswith(("Image ", "Models", "Patient", "Not included")) or not finding.search(text):
            continue
        checked += 1
        assert text.startswith(UNTRAINED_OUTPUTS), (heading, text[:200])
    assert checked >= 3

    sr = pydicom.dcmread(io.BytesIO(dicom_sr(bundle)[0].data))
    comments = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence]
    assert comments[0] == UNTRAINED_OUTPUTS
