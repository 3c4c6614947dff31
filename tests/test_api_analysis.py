"""Engine analysis tools on the real radiograph: segmentation, regions, annotations, RAG."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from engine.analysis.embedding import embed_image
from engine.api import Engine
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import decode_image
from engine.imaging.masks import decode_rle
from engine.vocabulary import UNTRAINED_OUTPUTS


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, model_pack: Path):
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, model_pack=model_pack, threads=2, use_keyring=False)
    with Engine(settings) as instance:
        yield instance


@pytest.fixture(scope="module")
def chest(engine: Engine) -> tuple[str, str]:
    session = engine.create_study_session("chest")["session_id"]
    image = engine.add_image_to_session(session, get_testdata_file("RG1_UNCR.dcm"), auto_analyze=False)
    return session, image["image_id"]


def test_ingest_runs_quality_checks(engine: Engine) -> None:
    session = engine.create_study_session()["session_id"]
    added = engine.add_image_to_session(session, get_testdata_file("RG1_UNCR.dcm"), auto_analyze=False)
    assert added["quality_warnings"] == []  # a well exposed PA chest film


def test_segmentation_persists_masks_at_image_size(engine: Engine, chest: tuple[str, str]) -> None:
    session, image_id = chest
    result = engine.analyze_image(session, image_id, classify=False, detect=False, segment=True,
                                  generate_report=False, segment_organs=["Heart", "Left Lung", "Right Lung"])
    segmentation = result["segmentation"]
    assert [o["label"] for o in segmentation["organs"]] == ["Left Lung", "Right Lung", "Heart"]
    assert segmentation["model_trained"] is False and result["model_trained"] is False
    assert "mask_rle" not in json.dumps(result)  # masks travel by id, not inline
    stored = engine.store.list_masks(session, image_id, source="organ_seg")
    assert {m["id"] for m in stored} == {o["mask_id"] for o in segmentation["organs"]}
    for organ, row in zip(segmentation["organs"], stored, strict=True):
        mask = decode_rle(row["rle"])
        assert mask.shape == (1955, 1841) and int(mask.sum()) == organ["area_px"]
    assert segmentation["spacing"]["pixel_spacing_mm"] is None  # RG1 has PixelSpacing [0, 0]
    assert all(o["area_cm2"] is None for o in segmentation["organs"])
    masks = engine.organ_masks(session, image_id, run=False)
    assert set(masks) == {"Heart", "Left Lung", "Right Lung"}
    with pytest.raises(MedVisionError) as err:
        engine.analyze_image(session, image_id, classify=False, segment=True, segment_organs=["Liver"])
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_region_analysis_measures_compares_and_annotates(engine: Engine, chest: tuple[str, str]) -> None:
    session, image_id = chest
    region = {"type": "bbox", "coordinates": [300, 500, 700, 900]}
    result = engine.analyze_selected_region(session, region, question="any opacity?",
                                            actions=["describe", "measure", "classify", "compare"])
    info = result["region_info"]
    # bbox edges are inclusive: [300, 500, 700, 900] covers 401 x 401 pixels
    assert info["bbox"] == [300, 500, 700, 900] and info["area"]["value"] == 401 * 401
    assert info["area"]["unit"] == "px2"  # no spacing in RG1
    assert info["pixel_statistics"]["count"] == 401 * 401
    assert result["measurements"]["long_axis"]["value"] == pytest.approx(401 * 2**0.5, rel=0.01)
    assert result["comparison"]["status"] == "ok" and "standardised_difference" in result["comparison"]
    assert len(result["classification"]["findings"]) == 18
    # The crop's classifier is untrained: the description says these are its outputs, first.
    assert result["description"].startswith(f"{UNTRAINED_OUTPUTS} Selected bbox region in the right lung field")
    assert result["region_info"]["anatomy"]["method"] == "lung_fields_classical"
    assert result["confidence_summary"]["overall"]["reliable"] is False  # untrained models
    annotation = engine.store.get_annotation(session, result["annotation_id"])
    assert annotation["source"] == "ai" and annotation["analysis_id"] == result["analysis_id"]
    assert annotation["coordinates"] == [300.0, 500.0, 700.0, 900.0]
    relative = engine.analyze_selected_region(
        session, {"type": "bbox", "coordinates": [0.1, 0.1, 0.2, 0.2], "format": "relative"}, actions=["measure"])
    assert relative["region_info"]["bbox"][0] == 184


@pytest.mark.parametrize(
    ("region", "actions", "code"),
    [
        ({"type": "bbox", "coordinates": [0, 0, 5000, 10]}, ["describe"], ErrorCode.INVALID_REGION),
        ({"type": "polygon", "coordinates": [[1, 1], [2, 2]]}, ["describe"], ErrorCode.INVALID_REGION),
        ({"type": "bbox", "coordinates": [1, 1, 20, 20]}, ["dance"], ErrorCode.INVALID_ARGUMENT),
    ],
)
def test_bad_regions_write_nothing(engine: Engine, chest: tuple[str, str], region, actions, code) -> None:
    session, _ = chest
    before = engine.store.last_event_id()
    with pytest.raises(MedVisionError) as err:
        engine.analyze_selected_region(session, region, actions=actions)
    assert err.value.code is code
    assert engine.store.events_since(before) == []


def test_annotation_tools(engine: Engine, chest: tuple[str, str]) -> None:
    session, image_id = chest
    created = engine.add_annotation(session, image_id, "polygon", [[10, 10], [200, 10], [100, 150]], label="x")
    annotation_id = created["annotation_id"]
    engine.update_annotation(session, annotation_id, label="effusion?", notes="check lateral")
    listed = engine.get_annotations(session, image_id, source="user")["annotations"]
    assert any(a["annotation_id"] == annotation_id and a["label"] == "effusion?" for a in listed)
    engine.delete_annotation(session, annotation_id)
    with pytest.raises(MedVisionError) as err:
        engine.update_annotation(session, annotation_id, label="gone")
    assert err.value.code is ErrorCode.ANNOTATION_NOT_FOUND


@pytest.fixture(scope="module")
def library_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cases")
    rows = []
    for name, cardiomegaly in (("RG1_UNCR.dcm", "1"), ("RG1_J2KI.dcm", "1"), ("RG3_UNCR.dcm", "0"),
                               ("MR2_UNCR.dcm", ""), ("CT_small.dcm", "0")):
        shutil.copy(get_testdata_file(name), folder / name)
        rows.append({"image_path": name, "findings": f"findings {name}", "impression": f"impression {name}",
                     "Cardiomegaly": cardiomegaly})
    with open(folder / "cases.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "cases.csv"


def test_visual_rag_end_to_end(engine: Engine, chest: tuple[str, str], library_csv: Path) -> None:
    session, image_id = chest
    built = engine.build_rag_index(data_path=library_csv)
    assert built["added"] == 5 and built["failed"] == []
    found = engine.search_similar_cases(session, image_id, top_k=3)
    # How the untrained embedder ranks the other cases (the lossy twin included) differs from
    # machine to machine: the search must return the three cases of highest cosine to the
    # query's own embedding, most similar first, and the image's exact copy at 1.
    def embed(decoded) -> np.ndarray:  # noqa: ANN001 - a DecodedImage
        return embed_image(decoded, engine.models)["vector"]

    query = embed(engine.decoded_image(session, image_id)[1])
    with open(library_csv, newline="") as handle:
        names = [row["image_path"] for row in csv.DictReader(handle)]
    cosine = {name: max(0.0, float(query @ embed(decode_image(library_csv.parent / name)))) for name in names}
    results = {r["findings"].split()[-1]: r for r in found["results"]}
    assert len(results) == 3, found["results"]
    for name, row in results.items():
        assert row["similarity"] == pytest.approx(cosine[name], abs=1e-4), (name, cosine)
    similarities = [r["similarity"] for r in found["results"]]
    assert similarities == sorted(similarities, reverse=True)
    assert similarities == pytest.approx(sorted(cosine.values(), reverse=True)[:3], abs=1e-4), cosine
    assert "RG1_UNCR.dcm" in results and results["RG1_UNCR.dcm"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    for name, row in results.items():  # each case names the CSV row and file it came from
        assert row["origin"] == {"kind": "csv", "dataset": "cases.csv", "file": name, "row": names.index(name) + 2}
        assert row["source_name"] == f"cases.csv row {names.index(name) + 2}: {name}"
    vote = found["aggregated_labels"]["Cardiomegaly"]
    voters = [r for r in found["results"] if r["labels"].get("Cardiomegaly") in (0, 1)]  # RG1 copy: 1
    assert vote["supporting_cases"] == len(voters) >= 1 and found["model_trained"] is False
    by_file = {name: row["case_id"] for name, row in results.items()}
    thumbs = engine.similar_case_thumbnails([*by_file.values(), "no-such-case"])
    assert set(thumbs) == set(by_file.values())  # an unknown id is left out
    preview = np.asarray(Image.open(io.BytesIO(thumbs[by_file["RG1_UNCR.dcm"]])).convert("L"), dtype=float)
    assert preview.shape == (160, 151)  # RG1 is 1955 rows x 1841 columns: longest side 160
    _, decoded = engine.decoded_image(session, image_id)
    expected = np.asarray(Image.fromarray(decoded.display()).resize((151, 160), Image.Resampling.BOX), dtype=float)
    assert np.abs(preview - expected).mean() < 8  # the viewer's rendering (MONOCHROME1 inverted), scaled down
    again = engine.build_rag_index(data_path=library_csv)
    assert again["added"] == 0 and again["skipped_duplicates"] + again.get("already_done", 0) == 5

    merged = engine.analyze_with_rag(session, image_id, mode="quick")
    labels = {row["label"]: row for row in merged["merged_labels"]}
    row = labels["Cardiomegaly"]
    assert row["combined"] == pytest.approx((row["classifier"] + row["rag_weight"] * row["rag"]) / (1 + row["rag_weight"]), abs=1e-5)
    assert "untrained" in merged["suggested_prompt"] and "Similar case" in merged["suggested_prompt"]
    assert set(merged["metadata"]["stages_ms"]) >= {"classify", "rag_search", "total"}
    rag_only = engine.analyze_with_rag(session, image_id, mode="rag_only")
    assert rag_only["classification"] is None and rag_only["similar_cases"]["results"]
    with pytest.raises(MedVisionError) as err:
        engine.analyze_with_rag(session, image_id, mode="deep")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    region = engine.analyze_selected_region(session, {"type": "bbox", "coordinates": [200, 200, 1600, 1700]},
                                            actions=["rag_search"])
    assert region["similar_cases"]["results"]
    assert np.isfinite(region["similar_cases"]["search_metadata"]["search_time_ms"])


RIGHT_LUNG_CLICK = [440, 800]  # inside the right lung field of RG1 (image left)


def test_click_to_segment_and_accept(engine: Engine, chest: tuple[str, str]) -> None:
    session, image_id = chest
    result = engine.segment_interactive(session, image_id, points=[RIGHT_LUNG_CLICK], labels=[1])
    assert result["backend"] == "classical"  # the dev pack's SAM is untrained
    best = result["masks"][result["best"]]
    mask = decode_rle(best["rle"])
    assert mask.shape == (1955, 1841) and mask[800, 440]
    assert 0.01 < mask.mean() < 0.4  # a lung, not the whole film
    accepted = engine.accept_mask(session, result["mask_id"], label="right lung")
    annotation = engine.store.get_annotation(session, accepted["annotation_id"])
    assert annotation["type"] == "mask" and (decode_rle(annotation["coordinates"]) == mask).all()
    with pytest.raises(MedVisionError) as err:
        engine.segment_interactive(session, image_id, points=[[5000, 10]], labels=[1])
    assert err.value.code is ErrorCode.INVALID_REGION


def test_region_segment_action_measures_the_segmented_mask(engine: Engine, chest: tuple[str, str]) -> None:
    session, _ = chest
    result = engine.analyze_selected_region(session, {"type": "point", "coordinates": RIGHT_LUNG_CLICK},
                                            actions=["segment", "measure"])
    segmented = result["segmentation"]["masks"][result["segmentation"]["best"]]
    assert result["measurements"]["area"]["value"] == segmented["area_px"]
    assert engine.store.get_annotation(session, result["annotation_id"])["type"] == "mask"


def test_sam_backend_caches_the_embedding_encrypted(tmp_path: Path, model_pack: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDVISION_INTERACTIVE_BACKEND", "sam")
    settings = Settings(home=tmp_path / "home", model_pack=model_pack, threads=2, use_keyring=False)
    with Engine(settings) as first:
        session = first.create_study_session()["session_id"]
        image_id = first.add_image_to_session(session, get_testdata_file("RG1_UNCR.dcm"), auto_analyze=False)["image_id"]
        clicked = first.segment_interactive(session, image_id, points=[RIGHT_LUNG_CLICK], labels=[1])
        assert clicked["backend"] == "sam" and clicked["model_trained"] is False
        assert first.segmenter.encoder_runs == 1
        first.segment_interactive(session, image_id, box=[200, 300, 800, 1500])
        assert first.segmenter.encoder_runs == 1  # the second prompt reuses the embedding
    cached = list((tmp_path / "home" / "cache" / "embeddings").rglob("*.mvb"))
    assert len(cached) == 1
    with Engine(settings) as second:  # a restart reads the encrypted cache instead of re-encoding
        second.segment_interactive(session, image_id, points=[RIGHT_LUNG_CLICK], labels=[1])
        assert second.segmenter.encoder_runs == 0
        second.delete_session(session)
    assert list((tmp_path / "home" / "cache" / "embeddings").rglob("*.mvb")) == []
