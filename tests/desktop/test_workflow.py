"""The diagnosis loop, live sync from another process, agent prompts, screenshots."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from pydicom.data import get_testdata_file

from desktop.canvas.overlays import regions_in
from desktop.qt import QPointF, Qt
from tests.desktop.conftest import idle, open_image

PUSH = textwrap.dedent("""
    import sys
    from engine.api import Engine
    with Engine(home=sys.argv[1], model_pack=sys.argv[2]) as engine:
        engine.push_to_canvas(sys.argv[3], "add_annotations", {
            "annotations": [{"type": "bbox", "coordinates": [300, 300, 700, 800], "label": "agent finding"}],
            "related_suggestions": [{"region": {"type": "bbox", "coordinates": [1100, 300, 1500, 800]},
                                     "label": "compare the other side"}],
            "message": "Look at the right upper zone."})
        engine.push_to_canvas(sys.argv[3], "add_layer", {"type": "bbox", "name": "boxes",
                                                          "data": [[900, 1200, 1000, 1300]]})
""")


def test_bbox_question_runs_region_analysis(qtbot, window, rg1_path, engine, artefacts) -> None:
    open_image(qtbot, window, rg1_path, analyze=True)
    artefacts(window, "main-window-opened")
    view = window.canvas
    view.set_tool("bbox")
    a, b = view.mapFromScene(QPointF(450, 450)), view.mapFromScene(QPointF(750, 750))
    qtbot.mousePress(view.viewport(), Qt.MouseButton.LeftButton, pos=a)
    qtbot.mouseMove(view.viewport(), b)
    qtbot.mouseRelease(view.viewport(), Qt.MouseButton.LeftButton, pos=b)
    assert view.selected_region()["type"] == "bbox"
    window.chat.input.setText("What is in this region?")
    qtbot.keyClick(window.chat.input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: any(role == "agent" for role, _ in window.chat.messages), timeout=60000)
    idle(qtbot)
    stored = engine.get_annotations(window.session_id, view.image_id)["annotations"]
    ai = [a for a in stored if a["source"] == "ai"]
    assert len(ai) == 1 and ai[0]["label"] == "What is in this region?"
    qtbot.waitUntil(lambda: ai[0]["annotation_id"] in window.layers.annotation_ids(), timeout=5000)
    assert ai[0]["annotation_id"] in view.items
    assert window.analysis.bars.findings, "the quick analysis fills the classifier bars"
    artefacts(window, "main-window-region-answered")


def test_click_to_segment_and_accept(qtbot, window, rg1_path, engine) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    view.set_tool("segment")
    with qtbot.waitSignal(view.mask_updated, timeout=30000) as first:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=view.mapFromScene(QPointF(600, 600)))
    with qtbot.waitSignal(view.mask_updated, timeout=30000) as second:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.RightButton, pos=view.mapFromScene(QPointF(925, 900)))
    assert view.segment_state["labels"] == [1, 0]
    assert first.args[0]["mask_id"] != second.args[0]["mask_id"]
    view.accept_segmentation("left lung")
    idle(qtbot)
    (mask,) = engine.get_annotations(window.session_id, view.image_id)["annotations"]
    assert mask["type"] == "mask" and mask["label"] == "left lung"
    qtbot.waitUntil(lambda: mask["annotation_id"] in view.items)


def test_push_from_another_process_appears_live(qtbot, window, rg1_path, engine, home, model_pack, artefacts) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    run = subprocess.run([sys.executable, "-c", PUSH, str(home), str(model_pack), window.session_id],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # Live: the follower polls every 150 ms (its latency is measured in benchmarks/bench_desktop.py).
    assert window.follower.timer.interval() <= 250
    qtbot.waitUntil(lambda: len(view.items) == 2 and any(view.overlays.pushed.values()), timeout=5000)
    qtbot.waitUntil(lambda: any("right upper zone" in text for _, text in window.chat.messages), timeout=1000)
    dashed = [i for i in view.items.values() if i.pen().style() == Qt.PenStyle.DashLine]
    assert len(dashed) == 1 and dashed[0].annotation["label"] == "compare the other side"
    artefacts(window, "main-window-agent-push")


def test_agent_prompt_is_answered_without_blocking(qtbot, window, rg1_path, engine) -> None:
    open_image(qtbot, window, rg1_path)
    request = engine.request_user_input(window.session_id, "choose", "Which side?",
                                        [{"value": "left", "label": "Left"}, {"value": "right", "label": "Right"}])
    qtbot.waitUntil(lambda: request["request_id"] in window.chat.open_prompts, timeout=2000)
    prompt = window.chat.open_prompts[request["request_id"]]
    prompt.findChild(type(window.chat.send), "answer:Right").click()
    qtbot.waitUntil(lambda: engine.get_user_input(request["request_id"]).get("status") == "answered", timeout=5000)
    assert engine.get_user_input(request["request_id"])["user_input"] == "right"
    qtbot.waitUntil(lambda: request["request_id"] not in window.chat.open_prompts, timeout=2000)


def test_regions_in_reads_pushed_payloads() -> None:
    assert regions_in({"data": {"boxes": [{"coordinates": [1, 2, 3, 4]}]}}) == [
        {"type": "bbox", "coordinates": [1, 2, 3, 4]}]
    assert regions_in({"region": {"type": "point", "coordinates": [5, 6]}})[0]["type"] == "point"


def test_received_session_appears_with_a_badge(qtbot, window, rg1_path, engine) -> None:
    received = engine.create_study_session("received study")["session_id"]  # as the DICOM node would
    engine.add_image_to_session(received, rg1_path, auto_analyze=False)

    def badged() -> bool:
        tree = window.worklist.tree
        return any(tree.topLevelItem(i).text(0) == "● received study" for i in range(tree.topLevelItemCount()))

    qtbot.waitUntil(badged, timeout=3000)
    window.worklist.search.setText("nothing like it")
    assert window.worklist.tree.topLevelItem(0).isHidden()


def test_an_agents_animate_glides_the_viewport(qtbot, window, rg1_path, engine) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    view.fit()
    before = view.scale_factor()
    engine.push_to_canvas(window.session_id, "animate", {
        "to": {"zoom": before * 3, "pan": {"x": 500, "y": 700}, "window": {"center": 12000, "width": 8000}},
        "duration": 300})
    qtbot.waitUntil(lambda: abs(view.scale_factor() - before * 3) < 1e-6, timeout=5000)
    state = view.viewport_state()
    assert abs(state["pan"]["x"] - 500) < 2 and abs(state["pan"]["y"] - 700) < 2
    qtbot.waitUntil(lambda: view.image_item.effective_window() == (12000, 8000), timeout=5000)


def test_the_engine_learns_the_canvas_viewport_and_tool(qtbot, window, rg1_path, engine) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    view.set_tool("distance")
    view.zoom_by(1.25)

    def synced() -> dict:
        return engine.get_canvas_state(window.session_id)["state"] or {}

    qtbot.waitUntil(lambda: synced().get("active_tool") == "measure", timeout=5000)
    state = synced()
    assert state["current_image_id"] == view.image_id
    assert abs(state["viewport"]["zoom"] - view.scale_factor()) < 1e-6


def test_a_pushed_heatmap_is_drawn_over_its_region(qtbot, window, rg1_path, engine) -> None:
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    pushed = engine.push_to_canvas(window.session_id, "add_layer", {
        "type": "heatmap", "name": "attention",
        "data": {"values": [[0.0, 1.0], [0.5, 0.25]], "region": {"type": "bbox", "coordinates": [100, 200, 900, 1000]}}})
    layer_id = pushed["layer_id"]
    qtbot.waitUntil(lambda: bool(view.overlays.pushed.get(layer_id)), timeout=5000)
    (item,) = view.overlays.pushed[layer_id]
    box = item.sceneBoundingRect()
    assert (round(box.left()), round(box.top()), round(box.right()), round(box.bottom())) == (100, 200, 900, 1000)
    image = item.pixmap().toImage()
    assert image.pixelColor(1, 0).red() == 255 and image.pixelColor(0, 0).blue() == 255  # max red, min blue


def test_similar_cases_show_their_previews(qtbot, window, rg1_path, engine, tmp_path, artefacts) -> None:
    from desktop.panels.analysis import _thumbnail_url
    from desktop.qt import QTextDocument, QUrl

    cases = tmp_path / "cases"
    cases.mkdir()
    rows = ["image_path,findings,Cardiomegaly"]
    for name, label in (("RG1_J2KI.dcm", "1"), ("RG3_UNCR.dcm", "0")):
        shutil.copy(get_testdata_file(name), cases / name)
        rows.append(f"{name},findings of {name},{label}")
    (cases / "cases.csv").write_text("\n".join(rows) + "\n")
    assert engine.build_rag_index(data_path=cases / "cases.csv")["added"] == 2
    open_image(qtbot, window, rg1_path)
    window.run_rag()
    qtbot.waitUntil(lambda: len(window.analysis.thumbnails) == 2, timeout=60000)
    idle(qtbot)
    shown = window.analysis.similar_case_ids()
    assert set(window.analysis.thumbnails) == set(shown) and len(shown) == 2
    assert window.analysis.details.toHtml().count("<img") == 2
    text = window.analysis.details.toPlainText()  # each case names the CSV row and file it came from
    assert "cases.csv row 2: RG1_J2KI.dcm" in text and "cases.csv row 3: RG3_UNCR.dcm" in text
    for case_id in shown:
        image = window.analysis.details.document().resource(QTextDocument.ResourceType.ImageResource,
                                                            QUrl(_thumbnail_url(case_id)))
        assert image.height() == 160 or image.width() == 160  # the stored preview, longest side 160
    artefacts(window, "main-window-similar-cases")


def test_a_session_with_priors_shows_them_in_the_worklist(qtbot, window, rg1_path, engine) -> None:
    current = engine.create_study_session("with priors")["session_id"]
    engine.add_image_to_session(current, rg1_path, auto_analyze=False)
    engine.record_priors(current, [{"session_id": None, "study_uid": "1.2.3", "study_date": "20030115",
                                    "modality": "CR", "body_part": "CHEST"}])  # as the node's fetcher does

    def shown() -> bool:
        tree = window.worklist.tree
        return any(tree.topLevelItem(i).text(2).endswith("· 1 prior") and "20030115" in tree.topLevelItem(i).toolTip(2)
                   for i in range(tree.topLevelItemCount()))

    qtbot.waitUntil(shown, timeout=5000)
