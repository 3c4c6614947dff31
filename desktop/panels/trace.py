"""Trace view: the steps and tool calls of the last agent run, expandable."""

from __future__ import annotations

import json

from desktop.qt import QTreeWidget, QTreeWidgetItem, QWidget


class TracePanel(QTreeWidget):
    """Steps as top-level rows, tool calls as children, arguments/output as leaves."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setHeaderLabels(["Step / tool", "Status", "ms", "Confidence"])
        self.setColumnWidth(0, 220)

    def show_trace(self, trace: dict) -> None:
        self.clear()
        for step in trace.get("steps", []):
            item = QTreeWidgetItem([f"{step['step_id']} ({step.get('agent') or step.get('role') or ''})",
                                    str(step.get("status")), _ms(step.get("latency_ms")), ""])
            if step.get("reasoning"):
                item.setToolTip(0, step["reasoning"])
            for call in step.get("tool_calls", []):
                child = QTreeWidgetItem([f"{call.get('tool_id')} {call.get('tool_version') or ''}",
                                         str(call.get("status")), _ms(call.get("latency_ms")),
                                         "" if call.get("confidence") is None else f"{call['confidence']:.2f}"])
                for key in ("arguments", "output", "error", "reasoning"):
                    if call.get(key):
                        text = json.dumps(call[key], default=str)
                        leaf = QTreeWidgetItem([f"{key}: {text[:200]}"])
                        leaf.setToolTip(0, text[:4000])
                        child.addChild(leaf)
                item.addChild(child)
            self.addTopLevelItem(item)
        if self.topLevelItemCount():
            self.topLevelItem(0).setExpanded(True)


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"
