"""With the untrained dev pack, model output never hides the radiograph on the canvas.

After a full analysis of RG1 (14 organ masks) and a region question (an AI box), the
grabbed canvas equals the plain rendering everywhere outside the user's drawing; the
AI layers start unchecked, titled untrained, with the banner saying why, and the user
can still tick one on.
"""

from __future__ import annotations

import numpy as np

from desktop.canvas.layers import MODEL_OUTPUT_LAYERS, UNTRAINED_SUFFIX
from desktop.qt import QPointF, Qt
from engine.vocabulary import UNTRAINED_OUTPUTS, UNTRAINED_OVERLAYS_HIDDEN
from tests.desktop.conftest import idle, open_image

USER_BOX = [300, 1300, 600, 1600]  # the user's own drawing: the only overlay allowed on the film


def _grab(view) -> np.ndarray:
    """The viewport as an (h, w, 4) array."""
    image = view.viewport().grab().toImage().convertToFormat(view.viewport().grab().toImage().Format.Format_RGBA8888)
    array = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    return array[:, : image.width()].copy()


def _outside_user_drawing(view, shape: tuple[int, ...], margin: int = 12) -> np.ndarray:
    """Viewport pixels away from the user's box (its outline, handles and label)."""
    ratio = view.viewport().devicePixelRatio()
    a = view.mapFromScene(QPointF(USER_BOX[0], USER_BOX[1]))
    b = view.mapFromScene(QPointF(USER_BOX[2], USER_BOX[3]))
    keep = np.ones(shape[:2], bool)
    x1, y1 = int(a.x() * ratio) - margin, int(a.y() * ratio) - 4 * margin  # the label sits above the box
    x2, y2 = int(b.x() * ratio) + margin, int(b.y() * ratio) + margin
    keep[max(0, y1):y2, max(0, x1):x2] = False
    return keep


def test_untrained_layers_start_hidden_and_leave_the_image_plain(qtbot, window, rg1_path, engine, artefacts) -> None:
    qtbot.waitUntil(lambda: all(window.canvas.layers[k].untrained for k in MODEL_OUTPUT_LAYERS), timeout=30000)
    open_image(qtbot, window, rg1_path)
    view = window.canvas
    session, image_id = window.session_id, view.image_id
    window.run_preset("full")
    qtbot.waitUntil(lambda: len(view.layers["ai_masks"].group.childItems()) >= 10, timeout=120000)
    engine.analyze_selected_region(session, {"type": "bbox", "coordinates": [0.12, 0.25, 0.42, 0.55],
                                             "format": "relative"}, question="what is here?")
    engine.add_annotation(session, image_id, "bbox", USER_BOX, label="mine")
    view.refresh_annotations()
    qtbot.waitUntil(lambda: len(view.items) == 2, timeout=10000)
    idle(qtbot)
    view.scene().clearSelection()
    qtbot.wait(50)

    for key in MODEL_OUTPUT_LAYERS:  # unchecked, named, the banner says why
        item = window.layers.layer_items[key]
        assert item.checkState(0) == Qt.CheckState.Unchecked and item.text(0).endswith(UNTRAINED_SUFFIX)
        assert not view.layers[key].visible
    assert window.layers.untrained_banner.isVisible()
    assert window.layers.untrained_banner.text().startswith(UNTRAINED_OVERLAYS_HIDDEN)
    assert [a["source"] for a in engine.get_annotations(session, image_id)["annotations"]] == ["ai", "user"]
    done = [text for role, text in window.chat.messages if role == "system" and "Analysis (full) done" in text]
    assert done and all(text.startswith(UNTRAINED_OUTPUTS) for text in done)  # the chat calls them outputs
    artefacts(window, "untrained-layers-hidden")

    shown = _grab(view)
    for layer in view.layers.layers[1:]:  # every overlay off: the plain rendering
        layer.visible = False
    qtbot.wait(50)
    plain = _grab(view)
    keep = _outside_user_drawing(view, shown.shape)
    assert keep.mean() > 0.9
    assert np.array_equal(shown[keep], plain[keep]), "model output is drawn over the radiograph"
    for layer in view.layers.layers:  # back as the user had them: model output still off
        layer.visible = layer.key not in MODEL_OUTPUT_LAYERS
    qtbot.wait(50)
    assert not np.array_equal(_grab(view), plain), "the user's drawing is drawn"

    window.layers.layer_items["ai_masks"].setCheckState(0, Qt.CheckState.Checked)  # the user asks for them
    assert view.layers["ai_masks"].visible
    qtbot.wait(50)
    assert (np.abs(_grab(view)[keep].astype(int) - plain[keep]).sum(axis=-1) > 30).mean() > 0.2
    artefacts(window, "untrained-layers-shown")
