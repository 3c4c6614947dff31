"""Agent chat: the conversation, a question box, and non-blocking prompts from agents."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from desktop.qt import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
    Signal,
)

MODES = ("Ask", "Agent")


class InputPrompt(QFrame):
    """An agent's request_user_input, answered inline (select_region, confirm, choose, draw)."""

    answered = Signal(str, object)

    def __init__(self, request: dict, region: Callable[[], dict | None], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.request = request
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet("InputPrompt{border:1px solid #d08a00}")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"<b>Agent asks:</b> {html.escape(request['prompt'])}", wordWrap=True))
        buttons = QHBoxLayout()
        layout.addLayout(buttons)
        kind = request["input_type"]
        if kind == "confirm":
            choices: list[tuple[str, Any]] = [("Yes", True), ("No", False)]
        elif kind == "choose":
            choices = [(str(o.get("label", o.get("value"))), o.get("value")) for o in request.get("options") or []]
        else:  # select_region / draw: answer with the region drawn or selected on the canvas
            choices = [("Use selected region", region)]
        for title, value in choices:
            button = QPushButton(title)
            button.setObjectName(f"answer:{title}")
            button.clicked.connect(lambda _=False, v=value: self._answer(v))
            buttons.addWidget(button)
        self.status = QLabel("")
        layout.addWidget(self.status)

    def _answer(self, value: Any) -> None:
        if callable(value):
            value = value()
            if value is None:
                self.status.setText("Draw or select a region on the canvas first.")
                return
        self.answered.emit(self.request["request_id"], value)


class ChatPanel(QWidget):
    """The transcript plus a question box; ``question_asked(text, mode)`` goes to the main window."""

    question_asked = Signal(str, str)
    request_answered = Signal(str, object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.transcript = QTextBrowser()
        self.transcript.setOpenExternalLinks(False)
        self.prompts = QVBoxLayout()
        self.input = QLineEdit(placeholderText="Ask about the image or the selected region…")
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.send = QPushButton("Send")
        row = QHBoxLayout()
        row.addWidget(self.mode)
        row.addWidget(self.input, 1)
        row.addWidget(self.send)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.transcript, 1)
        layout.addLayout(self.prompts)
        layout.addLayout(row)
        self.messages: list[tuple[str, str]] = []
        self.open_prompts: dict[str, InputPrompt] = {}
        self.send.clicked.connect(self._send)
        self.input.returnPressed.connect(self._send)

    def _send(self) -> None:
        text = self.input.text().strip()
        if text:
            self.input.clear()
            self.add_message("user", text)
            self.question_asked.emit(text, self.mode.currentText())

    def add_message(self, role: str, text: str) -> None:
        self.messages.append((role, text))
        who = {"user": "You", "agent": "Agent", "system": "MedVision"}.get(role, role)
        color = {"user": "#9cf", "agent": "#fc6"}.get(role, "#aaa")
        body = html.escape(text).replace("\n", "<br>")
        self.transcript.append(f"<p><b style='color:{color}'>{who}:</b> {body}</p>")

    def show_request(self, request: dict, region: Callable[[], dict | None]) -> InputPrompt:
        if request["request_id"] in self.open_prompts:
            return self.open_prompts[request["request_id"]]
        prompt = InputPrompt(request, region, self)
        prompt.answered.connect(self.request_answered)
        self.prompts.addWidget(prompt)
        self.open_prompts[request["request_id"]] = prompt
        return prompt

    def close_request(self, request_id: str) -> None:
        prompt = self.open_prompts.pop(request_id, None)
        if prompt is not None:
            prompt.setParent(None)
            prompt.deleteLater()
