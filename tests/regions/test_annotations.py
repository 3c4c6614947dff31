"""Annotations in the real encrypted store: validation, events, ownership, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import ErrorCode, MedVisionError
from engine.imaging import decode_image
from engine.imaging.masks import encode_rle
from engine.services.annotations import AnnotationService
from engine.store import Store

ROWS, COLUMNS = 100, 200


def add_row(store: Store, *args, **kwargs) -> dict:  # noqa: ANN002, ANN003
    return AnnotationService(store).add_row(*args, **kwargs)


def update_row(store: Store, *args, **kwargs) -> dict:  # noqa: ANN002, ANN003
    return AnnotationService(store).update_row(*args, **kwargs)


@pytest.fixture
def store(home: Path):
    store = Store.open(home)
    yield store
    store.close()


@pytest.fixture
def session_image(store: Store) -> tuple[str, str]:
    """A session holding one 200 x 100 PNG-like image row with PixelSpacing 0.5 mm."""
    session_id = store.create_session("annotations")["id"]
    image = store.add_image(session_id, blob_data=b"pixels" * 10, record={
        "type": "CXR", "format": "png", "rows": ROWS, "columns": COLUMNS,
        "metadata": {"pixel_spacing": {"pixel_spacing_mm": [0.5, 0.5], "source": "PixelSpacing"}},
    })
    return session_id, image["id"]


def events(store: Store, session_id: str, since: int = 0) -> list[dict]:
    return [e for e in store.events_since(since, session_id=session_id) if e["kind"].startswith("annotation.")]


def test_create_get_update_list_delete_with_events(store: Store, session_image) -> None:
    session_id, image_id = session_image
    box = add_row(store, session_id, image_id, "bbox", [10, 10, 50, 40], label="nodule?")
    assert box["coordinates"] == [10.0, 10.0, 50.0, 40.0] and box["source"] == "user"
    assert box["style"] == {} and box["confidence"] is None and box["created_at"] == box["updated_at"]
    assert store.get_annotation(session_id, box["id"]) == box
    ai = add_row(store, session_id, image_id, "polygon", [[20, 20], [60, 20], [40, 60]], label="opacity",
                              confidence=0.8, source="ai", layer="ai_findings", style={"color": "#FF6B6B"},
                              notes="from the classifier", analysis_id="a1")
    assert ai["layer"] == "ai_findings" and ai["style"] == {"color": "#FF6B6B"} and ai["analysis_id"] == "a1"

    updated = update_row(store, session_id, box["id"], label="nodule", coordinates=[12, 10, 50, 40],
                                      notes=None)
    assert updated["label"] == "nodule" and updated["coordinates"] == [12.0, 10.0, 50.0, 40.0]
    assert updated["created_at"] == box["created_at"] and updated["updated_at"] >= box["updated_at"]

    assert [a["id"] for a in store.list_annotations(session_id)] == [box["id"], ai["id"]]
    assert [a["id"] for a in store.list_annotations(session_id, source="ai")] == [ai["id"]]
    assert [a["id"] for a in store.list_annotations(session_id, image_id, source="user")] == [box["id"]]
    assert store.count("annotations", session_id) == 2

    assert store.delete_annotation(session_id, box["id"]) == {"annotation_id": box["id"], "image_id": image_id,
                                                              "deleted": True}
    assert [a["id"] for a in store.list_annotations(session_id)] == [ai["id"]]
    log = events(store, session_id)
    assert [e["kind"] for e in log] == ["annotation.created", "annotation.created", "annotation.updated",
                                        "annotation.deleted"]
    assert log[0]["payload"] == {"annotation_id": box["id"], "image_id": image_id, "type": "bbox",
                                 "source": "user", "layer": None}
    assert log[2]["payload"]["fields"] == ["coordinates", "label"]
    assert log[3]["payload"] == {"annotation_id": box["id"], "image_id": image_id}


def test_every_type_is_stored_in_pixels(store: Store, session_image) -> None:
    session_id, image_id = session_image
    relative = add_row(store, session_id, image_id, "bbox",
                                    {"coordinates": [0.1, 0.1, 0.3, 0.5], "format": "relative"})
    assert relative["coordinates"] == [19.5, 9.5, 59.5, 49.5]  # pixel centres: columns 20..59
    point = add_row(store, session_id, image_id, "point", [5, 5])
    assert point["coordinates"] == [5.0, 5.0]
    freehand = add_row(store, session_id, image_id, "freehand", [[1, 1], [30, 2], [25, 20], [3, 18]])
    assert len(freehand["coordinates"]) == 4
    mask = np.zeros((ROWS, COLUMNS), bool)
    mask[40:60, 100:150] = True
    stored_mask = add_row(store, session_id, image_id, "mask", encode_rle(mask), source="ai")
    assert stored_mask["coordinates"] == encode_rle(mask)
    text = add_row(store, session_id, image_id, "text",
                                {"position": [0.5, 0.5], "text": "compare with prior", "format": "relative"},
                                source="system")
    assert text["coordinates"] == {"position": [99.5, 49.5], "text": "compare with prior"}


def test_measurements_carry_their_value_from_the_image_spacing(store: Store, session_image) -> None:
    session_id, image_id = session_image
    ruler = add_row(store, session_id, image_id, "measurement",
                                 {"kind": "distance", "points": [[0, 0], [30, 40]]})
    result = ruler["coordinates"]["result"]
    assert ruler["coordinates"]["kind"] == "distance" and ruler["coordinates"]["points"] == [[0.0, 0.0], [30.0, 40.0]]
    assert result["value"] == 25.0 and result["unit"] == "mm" and result["calibrated"] is True
    moved = update_row(store, session_id, ruler["id"],
                                    coordinates={"kind": "distance", "points": [[0, 0], [60, 80]]})
    assert moved["coordinates"]["result"]["value"] == 50.0  # recomputed, never trusted from the caller
    angle = add_row(store, session_id, image_id, "measurement",
                                 {"kind": "angle", "points": [[10, 0], [0, 0], [0, 10]], "result": {"value": 1}})
    assert angle["coordinates"]["result"]["value"] == 90.0
    area = add_row(store, session_id, image_id, "measurement",
                                {"kind": "area", "points": [[0, 0], [20, 0], [20, 20], [0, 20]]})
    assert area["coordinates"]["result"]["value"] == 100.0 and area["coordinates"]["result"]["unit"] == "mm2"


def test_measurement_without_spacing_is_in_pixels(store: Store) -> None:
    session_id = store.create_session("no spacing")["id"]
    image_id = store.add_image(session_id, blob_data=b"x" * 20, record={
        "type": "Other", "format": "png", "rows": 50, "columns": 50})["id"]
    ruler = add_row(store, session_id, image_id, "measurement", {"kind": "distance", "points": [[0, 0], [3, 4]]})
    assert ruler["coordinates"]["result"]["unit"] == "px" and ruler["coordinates"]["result"]["value"] == 5.0


@pytest.mark.parametrize(
    ("annotation_type", "coordinates", "options", "code"),
    [
        ("bbox", [10, 10, 500, 40], {}, ErrorCode.INVALID_REGION),
        ("bbox", [50, 10, 10, 40], {}, ErrorCode.INVALID_REGION),
        ("polygon", [[1, 1], [2, 2]], {}, ErrorCode.INVALID_REGION),
        ("point", [float("nan"), 3], {}, ErrorCode.INVALID_REGION),
        ("mask", encode_rle(np.ones((10, 10), bool)), {}, ErrorCode.INVALID_REGION),
        ("measurement", {"kind": "angle", "points": [[0, 0], [1, 1]]}, {}, ErrorCode.INVALID_REGION),
        ("text", {"position": [1, 1], "text": " "}, {}, ErrorCode.INVALID_REGION),
        ("ellipse", [1, 2, 3, 4], {}, ErrorCode.INVALID_ARGUMENT),
        ("point", [5, 5], {"source": "robot"}, ErrorCode.INVALID_ARGUMENT),
        ("point", [5, 5], {"confidence": 1.5}, ErrorCode.INVALID_ARGUMENT),
        ("point", [5, 5], {"confidence": True}, ErrorCode.INVALID_ARGUMENT),
        ("point", [5, 5], {"label": 7}, ErrorCode.INVALID_ARGUMENT),
        ("point", [5, 5], {"style": {"width": float("nan")}}, ErrorCode.INVALID_ARGUMENT),
        ("point", [5, 5], {"style": ["red"]}, ErrorCode.INVALID_ARGUMENT),
    ],
)
def test_invalid_annotations_write_nothing(store: Store, session_image, annotation_type, coordinates,
                                           options, code) -> None:
    session_id, image_id = session_image
    before = store.last_event_id()
    with pytest.raises(MedVisionError) as err:
        add_row(store, session_id, image_id, annotation_type, coordinates, **options)
    assert err.value.code is code
    assert store.list_annotations(session_id) == [] and store.events_since(before) == []


def test_failed_update_changes_nothing(store: Store, session_image) -> None:
    session_id, image_id = session_image
    box = add_row(store, session_id, image_id, "bbox", [10, 10, 50, 40], label="keep")
    before = store.last_event_id()
    for changes, code in [
        ({"label": "new", "coordinates": [10, 10, 900, 40]}, ErrorCode.INVALID_REGION),
        ({"label": "new", "source": "robot"}, ErrorCode.INVALID_ARGUMENT),
        ({"image_id": image_id}, ErrorCode.INVALID_ARGUMENT),
        ({"type": "measurement"}, ErrorCode.INVALID_REGION),  # bbox coordinates are no measurement
        ({"type": "ellipse"}, ErrorCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(MedVisionError) as err:
            update_row(store, session_id, box["id"], **changes)
        assert err.value.code is code, changes
    assert store.get_annotation(session_id, box["id"]) == box
    assert store.events_since(before) == []


def test_type_change_and_no_op_update(store: Store, session_image) -> None:
    session_id, image_id = session_image
    outline = add_row(store, session_id, image_id, "polygon", [[1, 1], [30, 2], [25, 20]])
    before = store.last_event_id()
    assert update_row(store, session_id, outline["id"], label=None, notes=None) == outline
    assert update_row(store, session_id, outline["id"], label="") == outline
    assert store.events_since(before) == []
    freehand = update_row(store, session_id, outline["id"], type="freehand")
    assert freehand["type"] == "freehand" and freehand["coordinates"] == outline["coordinates"]
    cleared = update_row(store, session_id, outline["id"], notes="x", layer="L")
    cleared = update_row(store, session_id, outline["id"], notes="", layer="", confidence=0.5)
    assert cleared["notes"] is None and cleared["layer"] is None and cleared["confidence"] == 0.5


def test_ids_and_ownership(store: Store, session_image) -> None:
    session_id, image_id = session_image
    other = store.create_session("other")["id"]
    mark = add_row(store, session_id, image_id, "point", [5, 5])
    for call in (lambda: store.get_annotation(other, mark["id"]),
                 lambda: update_row(store, other, mark["id"], label="mine"),
                 lambda: store.delete_annotation(other, mark["id"]),
                 lambda: store.get_annotation(session_id, "missing"),
                 lambda: store.delete_annotation(session_id, "missing"),
                 lambda: update_row(store, session_id, "missing", label="x")):
        with pytest.raises(MedVisionError) as err:
            call()
        assert err.value.code is ErrorCode.ANNOTATION_NOT_FOUND
    assert store.get_annotation(session_id, mark["id"])["label"] == ""
    with pytest.raises(MedVisionError) as err:
        add_row(store, other, image_id, "point", [5, 5])  # the image is not in that session
    assert err.value.code is ErrorCode.IMAGE_NOT_FOUND
    with pytest.raises(MedVisionError) as err:
        add_row(store, session_id, "missing", "point", [5, 5])
    assert err.value.code is ErrorCode.IMAGE_NOT_FOUND
    with pytest.raises(MedVisionError) as err:
        store.list_annotations(other, image_id)
    assert err.value.code is ErrorCode.IMAGE_NOT_FOUND
    for call in (lambda: store.list_annotations("nope"),
                 lambda: add_row(store, "nope", image_id, "point", [5, 5]),
                 lambda: store.get_annotation("nope", mark["id"]),
                 lambda: store.delete_annotation("nope", mark["id"])):
        with pytest.raises(MedVisionError) as err:
            call()
        assert err.value.code is ErrorCode.SESSION_NOT_FOUND
    with pytest.raises(MedVisionError) as err:
        store.list_annotations(session_id, source="robot")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_annotations_go_with_their_session(store: Store, session_image) -> None:
    session_id, image_id = session_image
    add_row(store, session_id, image_id, "point", [5, 5])
    store.delete_session(session_id)
    assert store.db.query("SELECT count(*) AS n FROM annotations")[0]["n"] == 0


def test_annotations_survive_a_reopen(home: Path, session_image, store: Store) -> None:
    session_id, image_id = session_image
    mark = add_row(store, session_id, image_id, "text", {"position": [3, 4], "text": "note"})
    store.close()
    reopened = Store.open(home)
    try:
        assert reopened.get_annotation(session_id, mark["id"]) == mark
    finally:
        reopened.close()


def test_a_joint_transaction_rolls_back_annotations_too(store: Store, session_image) -> None:
    """The engine writes an annotation and its analysis atomically: a failure undoes both."""
    session_id, image_id = session_image
    with pytest.raises(MedVisionError), store.db.transaction():
        add_row(store, session_id, image_id, "point", [5, 5], source="ai", analysis_id="pending")
        add_row(store, session_id, image_id, "point", [500, 5], source="ai")
    assert store.list_annotations(session_id) == []


def test_annotations_on_a_real_dicom_image(store: Store, rg1_path: Path) -> None:
    """RG1 stored as the engine stores it: its size bounds the annotations, its spacing is unknown."""
    decoded = decode_image(rg1_path)
    session_id = store.create_session("rg1")["id"]
    image_id = store.add_image(session_id, blob_data=rg1_path.read_bytes(), record={
        "type": decoded.image_type, "format": decoded.format, "rows": decoded.rows,
        "columns": decoded.columns, "metadata": decoded.metadata})["id"]
    box = add_row(store, session_id, image_id, "bbox", [1800, 1900, 1841, 1955])
    assert box["coordinates"] == [1800.0, 1900.0, 1841.0, 1955.0]
    with pytest.raises(MedVisionError) as err:
        add_row(store, session_id, image_id, "bbox", [1800, 1900, 1842, 1955])
    assert err.value.code is ErrorCode.INVALID_REGION
    ruler = add_row(store, session_id, image_id, "measurement",
                                 {"kind": "distance", "points": [[100, 100], [400, 500]]})
    assert ruler["coordinates"]["result"]["unit"] == "px"  # RG1's PixelSpacing is 0\0: unknown
    assert ruler["coordinates"]["result"]["value"] == 500.0
