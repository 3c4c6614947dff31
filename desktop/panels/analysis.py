"""Analysis panel: classifier bars with thresholds, organ areas, CTR, quality, similar cases."""

from __future__ import annotations

import html
from urllib.parse import quote

from desktop.qt import (
    QColor,
    QImage,
    QLabel,
    QPainter,
    QTextBrowser,
    QTextDocument,
    QUrl,
    QVBoxLayout,
    QWidget,
)

THUMBNAIL_HEIGHT = 56  # px in the list; the stored previews are 160 px


class FindingBars(QWidget):
    """Horizontal probability bars; a tick marks each finding's threshold."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.findings: list[dict] = []
        self.setMinimumHeight(40)

    def set_findings(self, findings: list[dict]) -> None:
        self.findings = findings
        self.setMinimumHeight(16 * len(findings) + 4)
        self.update()

    def paintEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        painter = QPainter(self)
        label_w, bar_w = 130, max(40, self.width() - 180)
        text = self.palette().text().color()
        for row, finding in enumerate(self.findings):
            y = 2 + row * 16
            painter.setPen(text)
            painter.drawText(2, y + 12, finding["label"][:20])
            painter.fillRect(label_w, y + 2, bar_w, 11, QColor(60, 60, 60))
            color = QColor(230, 80, 60) if finding.get("positive") else QColor(70, 150, 230)
            painter.fillRect(label_w, y + 2, int(bar_w * finding["probability"]), 11, color)
            threshold = finding.get("threshold")
            if threshold is not None:
                x = label_w + int(bar_w * threshold)
                painter.setPen(QColor(40, 40, 40))
                painter.drawLine(x, y, x, y + 14)
            painter.setPen(text)
            painter.drawText(label_w + bar_w + 6, y + 12, f"{finding['probability']:.2f}")
        painter.end()


class AnalysisPanel(QWidget):
    """Shows the latest analysis result of the current image."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.banner = QLabel()
        self.banner.setStyleSheet("background:#7a1f1f;color:white;padding:3px")
        self.banner.setWordWrap(True)
        self.banner.hide()
        self.bars = FindingBars()
        self.details = QTextBrowser()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.banner)
        layout.addWidget(self.bars)
        layout.addWidget(self.details)
        self.result: dict = {}
        self.thumbnails: set[str] = set()  # case ids whose preview is loaded into the document

    def show_result(self, result: dict) -> None:
        """Render an analyze_image / analyze_with_rag result (sections it lacks are skipped)."""
        self.result = result
        self.banner.setVisible(bool(result.get("banner")))
        self.banner.setText(result.get("banner") or "")
        classification = result.get("classification") or {}
        self.bars.set_findings(classification.get("findings", []) if classification.get("status", "ok") == "ok" else [])
        self.details.setHtml(self._details_html(result, self.thumbnails))

    def similar_case_ids(self) -> list[str]:
        return [str(c["case_id"]) for c in ((self.result.get("similar_cases") or {}).get("results") or [])]

    def set_thumbnails(self, previews: dict[str, bytes]) -> None:
        """Put reference-case previews (PNG) beside the similar cases shown."""
        document = self.details.document()
        for case_id, png in previews.items():
            image = QImage.fromData(png)
            if not image.isNull():
                document.addResource(QTextDocument.ResourceType.ImageResource, QUrl(_thumbnail_url(case_id)), image)
                self.thumbnails.add(case_id)
        self.details.setHtml(self._details_html(self.result, self.thumbnails))

    @staticmethod
    def _details_html(result: dict, thumbnails: set[str] = frozenset()) -> str:
        parts: list[str] = []
        segmentation = result.get("segmentation") or {}
        if segmentation.get("status") == "ok":
            rows = "".join(
                f"<tr><td>{html.escape(o['label'])}</td><td>"
                + (f"{o['area_cm2']:.1f} cm²" if o.get("area_cm2") is not None else f"{o['area_px']} px")
                + "</td></tr>" for o in segmentation["organs"])
            parts.append(f"<b>Organ areas</b><table>{rows}</table>")
            ctr = segmentation.get("ctr") or {}
            if ctr.get("status") == "ok":
                parts.append(f"<b>Cardiothoracic ratio</b> {ctr['ratio']:.2f} {html.escape(ctr.get('finding') or '')}")
        elif segmentation:
            parts.append(f"<i>Segmentation: {html.escape(str(segmentation.get('reason', segmentation.get('status'))))}</i>")
        quality = (segmentation.get("quality") or result.get("quality") or {}).get("warnings") or result.get(
            "quality_warnings") or []
        if quality:
            parts.append("<b>Quality warnings</b><ul>" + "".join(
                f"<li>{html.escape(str(w.get('message', w) if isinstance(w, dict) else w))}</li>" for w in quality)
                + "</ul>")
        similar = result.get("similar_cases") or {}
        if similar.get("results"):
            items = "".join(
                "<tr><td>" + (f"<img src='{_thumbnail_url(str(c['case_id']))}' height={THUMBNAIL_HEIGHT}>"
                              if str(c["case_id"]) in thumbnails else "") + "</td>"
                f"<td><b>{html.escape(str(c['case_id']))}</b> ({c['similarity']:.2f}) "
                f"<i>{html.escape(str(c.get('source_name') or 'source unknown'))}</i> "
                f"{html.escape((c.get('findings') or '')[:160])}</td></tr>" for c in similar["results"])
            parts.append(f"<b>Similar cases</b><table cellspacing=3>{items}</table>")
        elif similar.get("search_metadata", {}).get("note"):
            parts.append(f"<i>Similar cases: {html.escape(similar['search_metadata']['note'])}</i>")
        if result.get("disclaimer"):
            parts.append(f"<p style='color:#999'>{html.escape(result['disclaimer'])}</p>")
        return "<br>".join(parts) or "<i>No analysis yet.</i>"


def _thumbnail_url(case_id: str) -> str:
    return "case-thumbnail:" + quote(case_id, safe="")
