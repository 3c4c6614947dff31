"""The MedVision workstation: main window, actions, live sync and ``main(argv)``.

Every engine call runs through :class:`desktop.worker.Op`; the window only wires
panels to the canvas and to the store's events (see :mod:`desktop.sync`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from desktop import platform_check
from desktop.canvas.view import TOOLS, CanvasView
from desktop.panels.analysis import AnalysisPanel
from desktop.panels.chat import ChatPanel
from desktop.panels.layers import LayersPanel
from desktop.panels.mpr import MprPanel
from desktop.panels.strip import ImageStrip
from desktop.panels.trace import TracePanel
from desktop.panels.worklist import WorklistPanel
from desktop.qt import (
    QAction,
    QApplication,
    QDockWidget,
    QFileDialog,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProcess,
    QProgressBar,
    QPushButton,
    QSettings,
    Qt,
    QTimer,
    QToolBar,
    Signal,
)
from desktop.sync import EventFollower
from desktop.worker import Op, tracker
from engine.config import Settings
from engine.events import JOB_KINDS, WORKLIST_KINDS, EventKind
from engine.vocabulary import UNTRAINED_OVERLAYS_HIDDEN, qualified

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ""}
EXPORT_FORMATS = {"pdf": "PDF report (*.pdf)", "html": "HTML report (*.html)", "json": "JSON report + trace (*.json)",
                  "png_annotated": "Annotated PNG (*.png)", "dicom_sr": "DICOM SR (*.dcm)",
                  "dicom_seg": "DICOM SEG (*.dcm)", "dicom_sc": "DICOM secondary capture (*.dcm)",
                  "dicom_pdf": "DICOM encapsulated PDF (*.dcm)", "dicom": "All DICOM objects (folder)"}
PRESETS = ("quick", "full", "segment_only", "report_only")


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders walked for DICOM/PNG/JPEG files (sorted)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(path)
    return out


class MainWindow(QMainWindow):
    """Worklist, image strip, canvas, analysis, chat, trace and layers around one engine."""

    first_paint = Signal()
    engine_ready = Signal()

    def __init__(self, engine=None, settings: QSettings | None = None, open_paths: list[str] | None = None) -> None:  # noqa: ANN001
        super().__init__()
        self.setWindowTitle("MedVision — for research and education, not for diagnostic use")
        self.resize(1400, 900)
        self.setAcceptDrops(True)
        self.engine = None
        self.owns_engine = False
        self.session_id: str | None = None
        self.follower: EventFollower | None = None
        self.settings = settings or QSettings(str(Settings.from_env().home / "desktop.ini"), QSettings.Format.IniFormat)
        self.own_sessions: set[str] = set()
        self.last_run_id: str | None = None
        self.dicom_node: QProcess | None = None
        self._painted = False
        self._timers: dict[str, QTimer] = {}
        self._pending_open = list(open_paths or [])

        self.canvas = CanvasView(self)
        self.canvas.deidentify = self.settings.value("deidentify", True, type=bool)
        self.setCentralWidget(self.canvas)
        self.worklist, self.strip = WorklistPanel(), ImageStrip()
        self.analysis, self.chat, self.trace = AnalysisPanel(), ChatPanel(), TracePanel()
        self.layers = LayersPanel(self.canvas)
        self.mpr = MprPanel()
        self.docks = {}
        for name, title, widget, area in (
            ("worklist", "Worklist", self.worklist, Qt.DockWidgetArea.LeftDockWidgetArea),
            ("layers", "Layers", self.layers, Qt.DockWidgetArea.LeftDockWidgetArea),
            ("strip", "Images", self.strip, Qt.DockWidgetArea.BottomDockWidgetArea),
            ("volume", "Volume (axial, coronal, sagittal)", self.mpr, Qt.DockWidgetArea.BottomDockWidgetArea),
            ("analysis", "Analysis", self.analysis, Qt.DockWidgetArea.RightDockWidgetArea),
            ("chat", "Agent chat", self.chat, Qt.DockWidgetArea.RightDockWidgetArea),
            ("trace", "Trace", self.trace, Qt.DockWidgetArea.RightDockWidgetArea),
        ):
            dock = QDockWidget(title, self)
            dock.setObjectName(f"dock:{name}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[name] = dock
        self.tabifyDockWidget(self.docks["chat"], self.docks["trace"])
        self.splitDockWidget(self.docks["strip"], self.docks["volume"], Qt.Orientation.Vertical)  # room to grow
        self.docks["volume"].hide()  # shown when the image on screen is a slice of a volume stack
        self.docks["chat"].raise_()
        self._build_status_bar()
        self._build_actions()
        self.worklist.session_chosen.connect(self.open_session)
        self.worklist.image_chosen.connect(self.show_image)
        self.worklist.pin_requested.connect(self.pin_session)
        self.worklist.delete_requested.connect(self.delete_study)
        self.strip.image_chosen.connect(lambda image_id: self.show_image(self.session_id, image_id))
        self.chat.question_asked.connect(self.ask)
        self.chat.request_answered.connect(self.answer_request)
        self.canvas.cursor_moved.connect(self.cursor_label.setText)
        self.canvas.image_shown.connect(lambda row: self.strip.select_image(row["id"]))
        self.canvas.image_shown.connect(self.follow_volume)
        self.canvas.slice_step.connect(self.step_slice)
        self.mpr.volume_shown.connect(lambda _info: self.update_stack_text())
        self.stack_ids: list[str] = []  # the image ids of the stack on the canvas, by z
        self.mpr.cursor_moved.connect(self.cursor_label.setText)
        self.canvas.region_drawn.connect(lambda region: self.statusBar().showMessage(
            f"{region['type']} drawn: type a question in the chat to analyse it", 4000))
        tracker.changed.connect(self._ops_changed)
        geometry, state = self.settings.value("geometry"), self.settings.value("state")
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)
        if engine is not None:
            self.set_engine(engine)
        else:
            self.owns_engine = True
            Op(self, _open_engine).progress("Opening the data store").success(self.set_engine).run()

    # -- setup ---------------------------------------------------------------------------
    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.pack_label, self.banner_label = QLabel("Model pack: …"), QLabel("")
        self.banner_label.setStyleSheet("background:#7a1f1f;color:white;padding:0 4px")
        self.banner_label.hide()
        self.node_label, self.device_label, self.cursor_label = QLabel("DICOM node: not running"), QLabel(""), QLabel("")
        self.progress = QProgressBar(maximumWidth=140, minimum=0, maximum=0)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(tracker.cancel_all)
        for widget in (self.cursor_label,):
            bar.addWidget(widget, 1)
        for widget in (self.progress, self.cancel_button, self.pack_label, self.banner_label, self.node_label,
                       self.device_label):
            bar.addPermanentWidget(widget)
        self.progress.hide()
        self.cancel_button.hide()

    def _build_actions(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        self._action(file_menu, "Open files…", self.open_files_dialog, "Ctrl+O")
        self._action(file_menu, "Open folder…", self.open_folder_dialog, "Ctrl+Shift+O")
        export_menu = file_menu.addMenu("Export")
        for fmt, title in EXPORT_FORMATS.items():
            self._action(export_menu, title, lambda _=False, f=fmt: self.export_dialog(f))
        file_menu.addSeparator()
        self._action(file_menu, "Quit", self.close, "Ctrl+Q")
        view_menu = menu.addMenu("&View")
        for name in ("fit", "one_to_one", "zoom_in", "zoom_out", "wl_reset", "wl_auto"):
            view_menu.addAction(self.canvas.actions_by_name[name])
        self.preset_menu = view_menu.addMenu("Window presets")
        self.preset_menu.aboutToShow.connect(self._fill_presets)
        for dock in self.docks.values():
            view_menu.addAction(dock.toggleViewAction())
        edit_menu = menu.addMenu("&Edit")
        for name in ("undo", "redo", "delete", "accept_mask"):
            edit_menu.addAction(self.canvas.actions_by_name[name])
        analysis_menu = menu.addMenu("&Analysis")
        for preset in PRESETS:
            self._action(analysis_menu, f"Run {preset.replace('_', ' ')}", lambda _=False, p=preset: self.run_preset(p))
        self._action(analysis_menu, "Similar cases (RAG)", self.run_rag)
        self._action(analysis_menu, "Compare with prior", self.compare_with_prior)
        self._action(analysis_menu, "Run the medical agent", lambda: self.run_agent("Analyse this image"), "Ctrl+R")
        node_menu = menu.addMenu("&DICOM node")
        self._action(node_menu, "Start", self.start_dicom_node)
        self._action(node_menu, "Stop", self.stop_dicom_node)
        self._action(node_menu, "Configure…", self.configure_dicom_node)
        self._action(node_menu, "Status", self.dicom_node_status)
        models_menu = menu.addMenu("&Models")
        self._action(models_menu, "Model pack info", self.model_info)
        self._action(models_menu, "Import model pack…", self.import_model_pack)
        settings_menu = menu.addMenu("&Settings")
        deidentify = self._action(settings_menu, "De-identify overlay", self.set_deidentify)
        deidentify.setCheckable(True)
        deidentify.setChecked(self.canvas.deidentify)
        tools = QToolBar("Tools", self)
        tools.setObjectName("toolbar:tools")
        for name in TOOLS:
            tools.addAction(self.canvas.actions_by_name[f"tool:{name}"])
        tools.addSeparator()
        for name in ("undo", "redo", "fit", "one_to_one", "wl_auto"):
            tools.addAction(self.canvas.actions_by_name[name])
        self.addToolBar(tools)

    def _action(self, menu, title: str, slot, shortcut: str | None = None) -> QAction:  # noqa: ANN001
        action = QAction(title, self)
        if shortcut:
            action.setShortcut(shortcut)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _fill_presets(self) -> None:
        self.preset_menu.clear()
        for name in self.canvas.presets():
            self._action(self.preset_menu, name, lambda _=False, n=name: self.canvas.apply_preset(n))

    def set_engine(self, engine) -> None:  # noqa: ANN001
        """Attach the engine (opened off the GUI thread at start-up) and start following events."""
        self.engine = engine
        self.canvas.engine = self.worklist.engine = self.strip.engine = self.mpr.engine = engine
        self.follower = EventFollower(engine, parent=self)
        self.follower.event.connect(self.on_store_event)
        self.worklist.refresh()
        self._start_retention_cleanup(engine)
        Op(self, engine.model_status).success(self._show_model_status).failure(
            lambda exc: self.pack_label.setText(f"Model pack: unavailable ({exc})")).run()
        self.engine_ready.emit()
        if self._pending_open:
            self.open_paths(self._pending_open)
            self._pending_open = []

    def _show_model_status(self, status: dict) -> None:
        pack = status["pack"]
        self.pack_label.setText(f"Model pack: {pack.get('name')} ({len(pack.get('models', []))} models)")
        trained = pack.get("trained")
        self.banner_label.setVisible(trained is False)
        self.banner_label.setText("UNTRAINED development models: output not meaningful")
        self.canvas.layers.set_models_untrained(
            trained is False, f"{UNTRAINED_OVERLAYS_HIDDEN} Tick a layer to show it anyway (it stays labelled).")
        gpu = "CUDAExecutionProvider" in status.get("available_providers", [])
        self.device_label.setText("GPU (CUDA)" if gpu else f"CPU ({status.get('threads')} threads)")
        if importlib.util.find_spec("dicom_node.__main__") is None:
            self.node_label.setText("DICOM node: not available")

    def _start_retention_cleanup(self, engine) -> None:  # noqa: ANN001
        """Purge expired sessions now and every ``cleanup_interval_s`` (the retention policy)."""
        timer = self._timers.get("retention")
        if timer is None:
            timer = self._timers["retention"] = QTimer(self)
            timer.timeout.connect(self.purge_expired)
        timer.start(int(engine.settings.retention.cleanup_interval_s * 1000))
        self.purge_expired()

    def purge_expired(self) -> Op | None:
        """One run of the retention cleanup, off the GUI thread; the worklist follows its events."""
        if self.engine is None:
            return None
        return Op(self, self.engine.purge_expired_sessions).failure(
            lambda exc: self.statusBar().showMessage(f"Retention cleanup failed: {exc}", 10000)).run()

    # -- sessions and images ----------------------------------------------------------------
    def pin_session(self, session_id: str, pinned: bool) -> Op | None:
        """Pin a session (kept past the retention policy) or unpin it."""
        if self.engine is None:
            return None
        return Op(self, lambda: self.engine.pin_session(session_id, pinned)).run()

    def close_session(self, expired: bool = False) -> None:
        """The session on screen was erased (here, by another process or by the retention cleanup)."""
        self.session_id = None
        self.canvas.close_image()
        self.strip.clear()
        self.statusBar().showMessage("The study on screen expired and was erased by the retention policy" if expired
                                     else "The study on screen was deleted", 10000)

    def delete_study(self, session_id: str, confirm: bool = True) -> Op | None:
        """Erase a study and everything derived from it, after asking."""
        if self.engine is None:
            return None
        if confirm and QMessageBox.question(
                self, "Delete study", "Erase this study: its images, analyses, annotations, masks and kept "
                "exports? This cannot be undone.") != QMessageBox.StandardButton.Yes:
            return None
        return Op(self, lambda: self.engine.delete_session(session_id)).progress("Deleting the study").success(
            lambda _r: self.worklist.refresh()).run()

    def follow_volume(self, row: dict) -> Op | None:
        """When the image shown is a slice of a volume stack, scroll the canvas through that stack and
        show its planes at the slice; else the canvas scrolls nothing."""
        engine, session_id, image_id = self.engine, self.canvas.session_id, row["id"]
        if engine is None or session_id is None:
            return None

        def work() -> tuple[dict, list[str]]:
            images = engine.get_session_status(session_id)["images"]
            image = next((i for i in images if i["image_id"] == image_id), {})
            if image.get("stack") is None:
                return image, []
            members = [i for i in images if (i.get("series_uid"), i.get("stack")) == (image.get("series_uid"),
                                                                                     image["stack"])]
            return image, [i["image_id"] for i in sorted(members, key=lambda i: i["z"])]

        def show(result: tuple[dict, list[str]]) -> None:
            image, self.stack_ids = result
            self.canvas.scrolls_stack = bool(self.stack_ids)
            if self.stack_ids:
                if not self.docks["volume"].isVisible():
                    self.docks["volume"].show()
                    self.resizeDocks([self.docks["volume"]], [max(280, self.height() // 3)], Qt.Orientation.Vertical)
                self.mpr.follow_image(session_id, image)
            self.update_stack_text()

        return Op(self, work, lane="read").success(show).run()

    def update_stack_text(self) -> None:
        """The canvas's corner lines for a stack slice: its index, and once the volume is assembled its
        position along the normal, thickness and spacing (the axial plane's own lines at that slice)."""
        image_id = self.canvas.image_id
        if image_id not in self.stack_ids:
            self.canvas.stack_text = []
        else:
            z, axial = self.stack_ids.index(image_id), self.mpr.views["axial"]
            self.canvas.stack_text = [f"slice {z + 1}/{len(self.stack_ids)}"]
            if self.mpr.volume is not None and axial.index == z and len(self.stack_ids) == axial.size:
                corners = axial.corner_text()
                self.canvas.stack_text += [corners["top_left"][2], corners["bottom_left"][0]]
        self.canvas.viewport().update()

    def step_slice(self, step: int) -> None:
        """Show the slice ``step`` away in the stack on the canvas (clamped at its ends)."""
        if self.canvas.image_id not in self.stack_ids:
            return
        index = self.stack_ids.index(self.canvas.image_id)
        target = min(max(index + step, 0), len(self.stack_ids) - 1)
        if target != index:
            self.show_image(self.session_id, self.stack_ids[target])

    def open_files_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Open images", "",
                                                "Images (*.dcm *.dicom *.png *.jpg *.jpeg);;All files (*)")
        if files:
            self.open_paths(files)

    def open_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open folder")
        if folder:
            self.open_paths([folder])

    def open_paths(self, paths: list[str | Path], analyze: bool = True) -> Op:
        """Add files (or folders) to the current session, or to a new one; show the last image."""
        engine, session_id, own = self.engine, self.session_id, self.own_sessions
        files = expand_paths(paths)

        def work() -> tuple[str, list[dict]]:
            target = session_id or engine.create_study_session(files[0].stem if files else None)["session_id"]
            own.add(target)  # a plain set, not a widget: marks the session as ours before its event arrives
            return target, [engine.add_image_to_session(target, f, auto_analyze=False) for f in files]

        def done(result: tuple[str, list[dict]]) -> None:
            target, added = result
            self.open_session(target, added[-1]["image_id"] if added else None)
            if analyze:
                for entry in added:
                    if entry["type"] == "CXR":
                        self.run_preset("quick", entry["image_id"])

        return Op(self, work).progress(f"Opening {len(files)} file(s)").success(done).run()

    def open_session(self, session_id: str, image_id: str | None = None) -> None:
        self.session_id = session_id
        self.strip.set_session(session_id)
        if image_id is not None:
            self.show_image(session_id, image_id)
            return
        engine = self.engine

        def work() -> str | None:
            status = engine.get_session_status(session_id)
            return status["current_image"] or (status["images"][0]["image_id"] if status["images"] else None)

        Op(self, work, lane="read").success(lambda chosen: chosen and self.show_image(session_id, chosen)).run()

    def show_image(self, session_id: str, image_id: str) -> None:
        if session_id != self.session_id:
            self.session_id = session_id
            self.strip.set_session(session_id)
        self.canvas.load_image(session_id, image_id)
        engine = self.engine

        def latest() -> dict:
            return engine.latest_analysis(session_id, image_id, ("analyze_image", "rag")) or {}

        Op(self, latest, lane="read").success(self.show_analysis).run()
        Op(self, lambda: engine.switch_image(session_id, image_id)).run()

    # -- analysis, questions, the agent -------------------------------------------------------
    def run_preset(self, preset: str, image_id: str | None = None) -> Op | None:
        if self.session_id is None:
            return None
        engine, session_id = self.engine, self.session_id
        image_id = image_id or self.canvas.image_id
        self.worklist.job_status[session_id] = f"running {preset}"
        return Op(self, lambda: engine.analyze_image(session_id, image_id, preset=preset)).progress(
            f"Analysis ({preset})").success(self._analysis_done).run()

    def _analysis_done(self, result: dict) -> None:
        self.worklist.job_status.pop(result["session_id"], None)
        if result["image_id"] == self.canvas.image_id:
            self.show_analysis(result)
        positive = (result.get("classification") or {}).get("positive") or []
        text = (f"Analysis ({result.get('preset') or 'custom'}) done: "
                + (", ".join(positive) if positive else "no finding above threshold"))
        self.chat.add_message("system", qualified(text, result.get("model_trained"))
                              + (f"\n{result['banner']}" if result.get("banner") else ""))
        self.worklist.refresh()

    def compare_with_prior(self) -> Op | None:
        """The most recent relevant prior in the store beside the current image (none: a message)."""
        if self.session_id is None:
            return None
        engine, session_id, image_id = self.engine, self.session_id, self.canvas.image_id

        def work() -> tuple[dict, dict] | None:
            priors = engine.list_priors(session_id)["priors"]
            if not priors:
                return None
            prior = priors[0]["session_id"]
            result = engine.compare_with_prior(session_id, prior, image_id=image_id, register=False)
            return engine.compare_images(session_id, prior, image_id=image_id), result

        return Op(self, work).progress("Compare with prior").success(self._show_comparison).run()

    def _show_comparison(self, found: tuple[dict, dict] | None) -> None:
        from desktop.panels.compare import CompareDialog

        if found is None:
            self.statusBar().showMessage("no earlier study of this patient (same ID and issuer) in the store", 5000)
            return
        self.compare_dialog = CompareDialog(self, *found)
        self.compare_dialog.show()

    def run_rag(self) -> Op | None:
        if self.session_id is None:
            return None
        engine, session_id, image_id = self.engine, self.session_id, self.canvas.image_id
        return Op(self, lambda: engine.analyze_with_rag(session_id, image_id)).progress("Similar cases").success(
            self.show_analysis).run()

    def show_analysis(self, result: dict) -> Op | None:
        """Show a result in the analysis panel, then fetch the previews of its similar cases."""
        self.analysis.show_result(result)
        missing = [c for c in self.analysis.similar_case_ids() if c not in self.analysis.thumbnails]
        if not missing or self.engine is None:
            return None
        engine, shown = self.engine, result
        return Op(self, lambda: engine.similar_case_thumbnails(missing), lane="read").success(
            lambda previews: self.analysis.set_thumbnails(previews) if self.analysis.result is shown else None).run()

    def ask(self, text: str, mode: str = "Ask") -> Op | None:
        """Chat question: the agent, the selected region, or the image as a whole."""
        if self.session_id is None:
            self.chat.add_message("system", "Open an image first.")
            return None
        if mode == "Agent":
            return self.run_agent(text)
        engine, session_id, image_id = self.engine, self.session_id, self.canvas.image_id
        region = self.canvas.selected_region()
        if region is not None:
            actions = ["describe", "measure"]
            return Op(self, lambda: engine.analyze_selected_region(session_id, region, text, actions, image_id)
                      ).progress("Analysing the region").success(self._region_done).run()
        return Op(self, lambda: engine.ask_about_image(session_id, text, image_id)).progress("Answering").success(
            lambda answer: self.chat.add_message("agent", _answer_text(answer))).run()

    def _region_done(self, result: dict) -> None:
        lines = [str(result.get("description") or "Region analysed.")]
        if result.get("answer"):  # the question asked, answered first
            lines.insert(0, result["answer"]["text"])
        measured = result.get("measurements") or {}
        if measured.get("area"):
            area = measured["area"]
            lines.append(f"Area: {area.get('value', '')} {area.get('unit', '')}")
        if result.get("banner"):
            lines.append(result["banner"])
        self.chat.add_message("agent", "\n".join(lines))
        self.canvas.selection = None
        self.canvas.refresh_annotations()

    def run_agent(self, task: str) -> Op | None:
        if self.session_id is None:
            return None
        engine, session_id = self.engine, self.session_id
        context = {"image_id": self.canvas.image_id}
        if self.canvas.selected_region() is not None:
            context["user_selection"] = self.canvas.selected_region()

        def work() -> tuple[dict, dict]:
            run = engine.invoke_medical_agent(session_id, task, context, "auto")
            return run, engine.export_trace(run["run_id"]) if run.get("run_id") else {}

        return Op(self, work).progress("Running the medical agent").success(self._agent_done).run()

    def _agent_done(self, result: tuple[dict, dict]) -> None:
        run, trace = result
        self.last_run_id = run.get("run_id")
        self.chat.add_message("agent", _answer_text(run))
        self.trace.show_trace(trace.get("trace", trace))
        self.canvas.refresh_annotations()

    def answer_request(self, request_id: str, answer: Any) -> Op:
        engine = self.engine
        return Op(self, lambda: engine.answer_user_input(request_id, answer)).success(
            lambda _r: self.chat.close_request(request_id)).run()

    # -- live sync ------------------------------------------------------------------------------
    def on_store_event(self, event: dict) -> None:
        """Route one store event (this process's or another's) to the panels and canvas."""
        kind, payload, session_id = EventKind(event["kind"]), event.get("payload") or {}, event.get("session_id")
        self.canvas.on_store_event(event)
        if kind is EventKind.SESSION_CREATED and session_id not in self.own_sessions:
            self.worklist.received.add(session_id)
        if kind in JOB_KINDS:
            self.worklist.job_status[session_id] = kind.split(".", 1)[1]
        if kind is EventKind.DICOM_DUPLICATE:
            self.statusBar().showMessage(_duplicate_text(payload), 15000)
        if kind in WORKLIST_KINDS:
            self._schedule("worklist", self.worklist.refresh)
            if kind is EventKind.IMAGE_ADDED and session_id == self.session_id:
                self._schedule("strip", lambda: self.strip.set_session(self.session_id))
        if session_id != self.session_id:
            return
        if kind is EventKind.SESSION_DELETED:
            self.close_session(payload.get("reason") == "expired")
        elif kind is EventKind.CANVAS_MESSAGE:
            self.chat.add_message("agent", str(payload.get("message") or payload.get("text") or payload))
        elif kind is EventKind.AGENT_INPUT_REQUESTED:
            request = self.engine.get_user_input(payload["request_id"])  # one indexed row
            self.chat.show_request(request, self.canvas.selected_region)
            self.docks["chat"].raise_()
        elif kind in (EventKind.AGENT_INPUT_ANSWERED, EventKind.AGENT_INPUT_CANCELLED):
            self.chat.close_request(payload.get("request_id"))

    def _schedule(self, name: str, fn) -> None:  # noqa: ANN001
        """Coalesce bursts of events into one refresh per 300 ms (timers die with the window)."""
        timer = self._timers.get(name)
        if timer is None:
            timer = self._timers[name] = QTimer(self, singleShot=True, interval=300)
            timer.timeout.connect(fn)
        if not timer.isActive() and self.isVisible():
            timer.start()

    # -- export, DICOM node, models, settings ------------------------------------------------------
    def export_dialog(self, fmt: str) -> None:
        if self.session_id is None:
            return
        if fmt == "dicom":
            target = QFileDialog.getExistingDirectory(self, "Export DICOM objects to")
        else:
            target, _ = QFileDialog.getSaveFileName(self, "Export", f"medvision-{self.session_id}", EXPORT_FORMATS[fmt])
        if target:  # the save dialog has asked before replacing a file; a folder's files were not asked about
            self.export(fmt, target, overwrite=fmt != "dicom")

    def export(self, fmt: str, target: str | Path, overwrite: bool = False) -> Op:
        engine, session_id = self.engine, self.session_id
        return Op(self, lambda: engine.export_study(session_id, fmt, output_path=target, overwrite=overwrite)).progress(
            f"Exporting {fmt}").success(lambda r: self.statusBar().showMessage(f"Exported {r['export_path']}", 8000)).run()

    def start_dicom_node(self) -> None:
        if importlib.util.find_spec("dicom_node.__main__") is None:
            self.node_label.setText("DICOM node: not available")
            return
        self.stop_dicom_node()
        self.dicom_node = QProcess(self)
        self.dicom_node.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        args = _node_args("serve")
        if self.engine is not None:  # this window's store and models, whatever the environment says
            args += ["--home", str(self.engine.settings.home), "--model-pack", str(self.engine.settings.model_pack)]
        if self.settings.value("dicom/port"):
            args += ["--port", str(self.settings.value("dicom/port"))]
        if self.settings.value("dicom/ae_title"):
            args += ["--ae-title", str(self.settings.value("dicom/ae_title"))]
        self.dicom_node.stateChanged.connect(lambda state: self.node_label.setText(
            f"DICOM node: {'running' if state == QProcess.ProcessState.Running else 'stopped'}"))
        self.dicom_node.start(sys.executable, args)

    def stop_dicom_node(self) -> None:
        if self.dicom_node is not None:
            self.dicom_node.terminate()
            if not self.dicom_node.waitForFinished(3000):
                self.dicom_node.kill()
            self.dicom_node = None
            self.node_label.setText("DICOM node: stopped")

    def configure_dicom_node(self) -> None:
        port, ok = QInputDialog.getInt(self, "DICOM node", "Port:", int(self.settings.value("dicom/port", 11112)), 1, 65535)
        if ok:
            self.settings.setValue("dicom/port", port)
        title, ok = QInputDialog.getText(self, "DICOM node", "AE title:", text=str(self.settings.value("dicom/ae_title", "MEDVISION")))
        if ok and title:
            self.settings.setValue("dicom/ae_title", title[:16])

    def dicom_node_status(self) -> Op | None:
        """Ask ``python -m dicom_node status`` (off the GUI thread) and show its first line."""
        if importlib.util.find_spec("dicom_node.__main__") is None:
            self.node_label.setText("DICOM node: not available")
            return None

        home = [] if self.engine is None else ["--home", str(self.engine.settings.home)]

        def work() -> str:
            run = subprocess.run([sys.executable, *_node_args("status", *home)], capture_output=True, text=True,
                                 timeout=20, check=False)
            lines = (run.stdout or run.stderr).strip().splitlines()
            return lines[0][:60] if lines else ("running" if run.returncode == 0 else "not running")

        return Op(self, work, lane="read").success(lambda text: self.node_label.setText(f"DICOM node: {text}")).run()

    def model_info(self) -> None:
        if self.engine is not None:
            Op(self, self.engine.model_status).success(lambda status: QMessageBox(
                QMessageBox.Icon.Information, "Model pack", json.dumps(status["pack"], indent=1)[:3000],
                QMessageBox.StandardButton.Ok, self).open()).run()

    def import_model_pack(self) -> None:
        """Menu: pick a pack archive (``medvision models export-pack`` output) and, unless the
        site already trusts pack keys (``MEDVISION_TRUSTED_PACK_KEYS`` or the site file, as for
        ``medvision models import-pack``), the public key of its signer (``--trusted-key``)."""
        from desktop.errors import show_error
        from engine.errors import MedVisionError
        from engine.inference.packtransfer import trusted_keys_from_config

        if self.engine is None:  # still opening: there is no configured pack to replace yet
            return
        source, _ = QFileDialog.getOpenFileName(self, "Model pack archive (signed .tar)", "",
                                                "Model packs (*.tar *.tar.gz *.tgz);;All files (*)")
        if not source:
            return
        try:
            site_keys = trusted_keys_from_config()
        except MedVisionError as exc:  # a malformed site key file: nothing can be verified
            show_error(self, exc, "Importing the model pack")
            return
        keys: list[str] | None = None  # None: the site's trusted keys
        if not site_keys:
            key, _ = QFileDialog.getOpenFileName(self, "Trusted public key of the pack's signer", "",
                                                 "Public keys (*.pub *.pem);;All files (*)")
            keys = [key] if key else []  # no key: refused with the reason (a pack is never taken unsigned)
        self.import_pack(Path(source), keys)

    def import_pack(self, source: Path, trusted_keys: list | None = None) -> Op:
        """Install a pack tar as this window's configured pack, as ``medvision models import-pack``.

        :func:`engine.inference.packtransfer.import_signed_pack` checks every sha256 and the
        Ed25519 signature against ``trusted_keys`` (None: the site's keys; a signature is
        always required) and renames the pack into place only when all of it verified. A
        refused pack changes nothing: the current pack keeps serving and the reason is shown
        in the error dialog. On success the engine is reopened over the new pack.
        """
        old, settings = self.engine, self.engine.settings

        def work() -> tuple[dict, Any]:
            from engine.api import Engine
            from engine.inference.packtransfer import import_signed_pack

            if os.name == "nt":  # Windows cannot rename a folder whose files are open (llama.cpp maps the GGUF)
                old.models.unload()
            result = import_signed_pack(source, settings.model_pack, trusted_keys=trusted_keys)
            return result, Engine(settings, front_end="desktop")

        def done(outcome: tuple[dict, Any]) -> None:
            result, engine = outcome
            self._use_reopened_engine(engine)
            self.statusBar().showMessage(
                f"Model pack {result['name']} imported (signed by key {result['key_id']}) and in use", 10000)

        return Op(self, work).progress("Importing the model pack").success(done).run()

    def _use_reopened_engine(self, engine) -> None:  # noqa: ANN001
        """Switch the window to ``engine``; an old engine the window owned closes once its queued ops ran."""
        from desktop.worker import pool

        old, owned = self.engine, self.owns_engine
        if self.follower is not None:
            self.follower.stop()
            self.follower.deleteLater()
        self.owns_engine = True
        self.set_engine(engine)
        if owned and old is not None:
            def retire() -> None:  # on the engine lane, after the ops queued with the old engine
                pool("read").waitForDone(60000)
                old.close()

            Op(self, retire).run()

    def set_deidentify(self, on: bool) -> None:
        self.canvas.deidentify = bool(on)
        self.settings.setValue("deidentify", bool(on))
        self.canvas.viewport().update()

    # -- window events --------------------------------------------------------------------------
    def _ops_changed(self) -> None:
        busy = tracker.running
        labels = [op.label for op in busy if op.label]
        self.progress.setVisible(bool(labels))
        self.cancel_button.setVisible(bool(labels))
        status = self.statusBar()
        if labels:
            self.progress.setFormat(labels[-1])
            status.showMessage(labels[-1] + "…")
        elif status.currentMessage().endswith("…"):
            status.clearMessage()  # only a progress line: an op's result message ("Exported …") stays

    def paintEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        super().paintEvent(event)
        if not self._painted:
            self._painted = True
            QTimer.singleShot(0, self.first_paint.emit)

    def dragEnterEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths and self.engine is not None:
            self.open_paths(paths)

    def closeEvent(self, event) -> None:  # noqa: ANN001, N802 - Qt override
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("state", self.saveState())
        self.settings.sync()
        if self.follower is not None:
            self.follower.stop()
        for timer in self._timers.values():
            timer.stop()
        self.stop_dicom_node()
        super().closeEvent(event)


def _node_args(*args: str) -> list[str]:
    """Arguments to ``sys.executable`` that run the DICOM node: ``-m dicom_node`` from a
    Python install, the ``dicom-node`` subcommand of the frozen app (packaging/frozen_entry.py)."""
    return ["dicom-node", *args] if getattr(sys, "frozen", False) else ["-m", "dicom_node", *args]


def _duplicate_text(payload: dict) -> str:
    """The status-bar line for a ``dicom.duplicate`` event (the node's duplicate policy at work)."""
    done = {"kept_first": "the copy held was kept, the new one dropped",
            "stored_as_version": "the new one was stored as a new version of the image",
            "refused": "the new one was refused"}.get(payload.get("outcome"), payload.get("outcome"))
    return f"DICOM node: an instance was resent with different content; {done}."


def _answer_text(answer: dict) -> str:
    """The readable part of an ask/agent result."""
    for key in ("answer", "summary", "narrative", "message"):
        if isinstance(answer.get(key), str):
            return answer[key]
    result = answer.get("result") or {}
    if isinstance(result.get("summary"), str):
        return result["summary"] + (f"\n({answer.get('status')})" if answer.get("status") != "completed" else "")
    return json.dumps(answer, default=str)[:600]


def _open_engine():  # noqa: ANN202 - engine.api.Engine
    from engine.api import Engine

    pack = os.environ.get("MEDVISION_MODEL_PACK") or QSettings(
        str(Settings.from_env().home / "desktop.ini"), QSettings.Format.IniFormat).value("model_pack")
    return Engine(Settings.from_env(model_pack=pack), front_end="desktop")


def main(argv: list[str] | None = None) -> int:
    """``python -m desktop [FILES...]``; ``--exit-after-paint`` prints the start-up time and quits."""
    started = time.perf_counter()
    parser = argparse.ArgumentParser(prog="medvision desktop")
    parser.add_argument("files", nargs="*", help="DICOM, PNG or JPEG files or folders to open")
    parser.add_argument("--exit-after-paint", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--check-platform", action="store_true",
                        help="check that Qt can open a window here (exit 0), else say why (exit 2), then quit")
    args = parser.parse_args(argv)
    if args.check_platform:
        return platform_check.main()
    if QApplication.instance() is None:
        platform_check.ensure()  # exits 2 with one DISPLAY_UNAVAILABLE line rather than a Qt abort
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("MedVision")
    window = MainWindow(open_paths=args.files)
    if args.exit_after_paint:
        def report() -> None:
            sys.stdout.write(f"first_paint_ms={(time.perf_counter() - started) * 1000:.1f}\n")
            sys.stdout.flush()
            window.close()
            app.quit()
        window.first_paint.connect(report)
    window.show()
    code = app.exec()
    if window.engine is not None and window.owns_engine:
        from desktop.worker import wait_idle

        wait_idle(60000)
        window.engine.close()
    return code


__all__ = ["MainWindow", "expand_paths", "main"]
