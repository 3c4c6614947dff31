"""DICOM exports of the worked session: dciodvfy-clean, and read back with highdicom."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from reportlab.pdfgen import canvas

from engine.errors import ErrorCode, MedVisionError
from engine.export.bundle import ExportOptions, gather
from engine.export.dicom_common import codes, concept, source_dataset, term
from engine.export.dicom_sc import encapsulated_pdf, secondary_capture
from engine.export.dicom_seg import dicom_seg
from engine.export.dicom_sr import dicom_sr, finding_site
from engine.export.render import compose
from engine.export.service import rendered_overlays
from engine.imaging.decode import window_to_uint8
from engine.imaging.masks import decode_rle
from engine.vocabulary import UNTRAINED_OUTPUTS, UNTRAINED_OVERLAYS_HIDDEN
from tests.dciodvfy import dciodvfy


def written(tmp_path: Path, artifact) -> Path:
    path = tmp_path / artifact.name
    path.write_bytes(artifact.data)
    return path


def windowed(item) -> np.ndarray:
    decoded = item.decoded
    return window_to_uint8(decoded.pixels, decoded.window_center, decoded.window_width, decoded.voi_function,
                           invert=decoded.invert)


def overlay(item) -> np.ndarray:
    """The real composited overlay (annotations and masks burned in), full size."""
    return np.asarray(compose(item)[0])


def drawn_mask_area(annotation) -> int:
    return int(decode_rle(annotation["coordinates"]).sum())


@pytest.fixture(scope="module")
def bundle(worked):
    return gather(worked.engine.services, worked.session_id, ExportOptions())


def test_every_pack_label_has_a_code(model_pack: Path) -> None:
    manifest = json.loads((model_pack / "manifest.json").read_text())
    table = codes()
    for model in manifest["models"]:
        if model["task"] == "classify":
            assert {label.replace("_", " ") for label in model["labels"]} <= set(table["findings"]), model["id"]
        if model["task"] == "organ_seg":
            assert set(model["labels"]) <= set(table["organs"]), model["id"]
    for entry in table["findings"].values():
        assert entry["site"] in table["sites"]
    for entry in table["organs"].values():
        assert entry["site"] in table["sites"] and entry.get("side") in (None, *table["sides"])


def test_sr_is_valid_and_reads_back(bundle, tmp_path: Path) -> None:
    item = bundle.images[0]
    artifacts = dicom_sr(bundle)
    assert [a.media_type for a in artifacts] == ["application/dicom"]  # a DICOM source needs no capture
    path = written(tmp_path, artifacts[0])
    dciodvfy(path)
    sr = hd.sr.srread(path)
    assert sr.StudyInstanceUID == item.dicom.StudyInstanceUID and sr.PatientID == item.dicom.PatientID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == item.dicom.SOPInstanceUID

    findings = {f["label"]: f for f in bundle.report["findings"]}
    finding_codes = {concept(codes()["findings"][label.replace("_", " ")]["code"]): label for label in findings}
    groups = [g for g in sr.content.get_image_measurement_groups() if g.finding_type in finding_codes]
    assert len(groups) == len(findings) == 18
    for group in groups:
        finding = findings[finding_codes[group.finding_type]]
        (evaluation,) = group.get_qualitative_evaluations()
        assert evaluation.value == term("present" if finding["present"] else "absent")
        (probability,) = group.get_measurements(name=term("probability"))
        assert probability.value == pytest.approx(finding["probability"])
        assert group.source_images[0].referenced_sop_instance_uid == item.dicom.SOPInstanceUID
    for group in groups:  # each site as the report says, whatever the untrained dev pack found
        finding = findings[finding_codes[group.finding_type]]
        entry = codes()["findings"][finding["label"].replace("_", " ")]
        zone, side = finding.get("zone"), finding.get("side")
        (site,) = group.finding_sites
        location = codes()["zones"][zone] if zone and entry["site"] == "Lung" else codes()["sites"][entry["site"]]
        assert site.value == concept(location)
        assert site.laterality == (concept(codes()["sides"][side]) if side else None)

    regions = sr.content.get_planar_roi_measurement_groups(referenced_sop_instance_uid=item.dicom.SOPInstanceUID)
    drawn = [a for a in item.annotations if a["type"] not in ("text", "mask")]
    assert len(regions) == len(drawn)
    box = next(a for a in item.annotations if a["label"] == "opacity")
    roi = next(g for g in regions if box["annotation_id"] in g.tracking_identifier).roi
    x1, y1, x2, y2 = box["coordinates"]
    assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    assert roi.value.tolist() == [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
    assert roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == item.dicom.SOPInstanceUID
    width = next(g for g in regions if g.tracking_identifier.endswith(" width"))
    (length,) = width.get_measurements(name=term("length"))
    assert length.unit.value == "{pixels}" and length.value == pytest.approx(700.2857, abs=1e-3)
    organs = [g for g in sr.content.get_image_measurement_groups() if g.tracking_identifier.startswith("mask ")]
    assert len(organs) == len([m for m in item.masks if m.area_px])
    (drawn_mask,) = [a for a in item.annotations if a["type"] == "mask"]
    (mask_group,) = [g for g in sr.content.get_image_measurement_groups() if drawn_mask["annotation_id"] in
                     g.tracking_identifier]
    assert mask_group.get_measurements(name=term("area"))[0].value == drawn_mask_area(drawn_mask)

    comments = [i.TextValue for i in pydicom.dcmread(path).ContentSequence[-1].ContentSequence]
    assert comments == ["These are outputs of untrained development models, not findings.",
                        "For research and education, not for diagnostic use.",
                        "Development models: untrained weights, output not meaningful."]


def test_a_lung_finding_site_names_its_zone_and_side() -> None:
    site = finding_site("Lung", "bilateral", "upper")
    assert site.value == concept(codes()["zones"]["upper"])
    assert site.laterality == concept(codes()["sides"]["bilateral"])
    heart = finding_site("Heart", None, "upper")  # a zone only narrows the lung
    assert heart.value == concept(codes()["sites"]["Heart"]) and heart.laterality is None


def test_seg_is_valid_and_holds_the_masks(bundle, tmp_path: Path) -> None:
    item = bundle.images[0]
    (artifact,) = dicom_seg(bundle)
    path = written(tmp_path, artifact)
    dciodvfy(path)
    seg = hd.seg.segread(path)
    layers = [m for m in item.masks if m.mask.any()]
    organs = [m for m in layers if m.source == "organ_seg"]  # how many are non-empty is the untrained model's say
    assert seg.number_of_segments == len(layers) == len(organs) + 1  # + the user's accepted mask
    assert seg.StudyInstanceUID == item.dicom.StudyInstanceUID
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == item.dicom.SOPInstanceUID
    for organ in organs:
        (number,) = seg.get_segment_numbers(segment_label=organ.label)
        description = seg.get_segment_description(number)
        site = codes()["organs"][organ.label]["site"]
        assert description.segmented_property_type == concept(codes()["sites"][site])
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        pixels = seg.get_pixels_by_source_instance([item.dicom.SOPInstanceUID], segment_numbers=[number])
        assert np.array_equal(pixels[0, ..., 0].astype(bool), organ.mask)
    user = seg.get_segment_description(len(layers))
    assert user.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC


def test_secondary_capture_and_pdf_are_valid(bundle, tmp_path: Path) -> None:
    item = bundle.images[0]
    rendered = overlay(item)
    (capture,) = secondary_capture(bundle, {item.image_id: rendered})
    path = written(tmp_path, capture)
    dciodvfy(path)
    sc = pydicom.dcmread(path)
    assert sc.StudyInstanceUID == item.dicom.StudyInstanceUID and sc.SeriesInstanceUID != item.dicom.SeriesInstanceUID
    assert sc.BurnedInAnnotation == "YES" and np.array_equal(sc.pixel_array, rendered)
    # The untrained run: its masks and boxes are not burned in unless asked for, and the capture says so.
    assert sc.ImageComments.startswith(UNTRAINED_OVERLAYS_HIDDEN)
    assert np.array_equal(rendered_overlays(bundle)[item.image_id], rendered)
    asked = dataclasses.replace(bundle, options=ExportOptions(show_untrained_overlays=True))
    burned = rendered_overlays(asked)[item.image_id]
    assert (burned != rendered).any(axis=-1).mean() > 0.1  # the 14 organ masks
    (capture,) = secondary_capture(asked, {item.image_id: burned})
    assert pydicom.dcmread(io.BytesIO(capture.data)).ImageComments.startswith(UNTRAINED_OUTPUTS)

    buffer = io.BytesIO()
    page = canvas.Canvas(buffer)
    page.drawString(72, 720, "MedVision report")
    page.save()
    (document,) = encapsulated_pdf(bundle, buffer.getvalue())
    path = written(tmp_path, document)
    dciodvfy(path)
    pdf = pydicom.dcmread(path)
    assert pdf.StudyInstanceUID == item.dicom.StudyInstanceUID and pdf.PatientID == item.dicom.PatientID
    assert pdf.EncapsulatedDocument[:pdf.EncapsulatedDocumentLength] == buffer.getvalue()


def test_png_source_gets_a_capture_and_a_valid_sr(worked, tmp_path: Path) -> None:
    item = gather(worked.engine.services, worked.session_id, ExportOptions()).images[0]
    png = tmp_path / "chest.png"
    Image.fromarray(windowed(item)).save(png)
    session = worked.engine.create_study_session("png export")["session_id"]
    image = worked.engine.add_image_to_session(session, png, auto_analyze=False)["image_id"]
    worked.engine.add_annotation(session, image, "bbox", [100, 200, 300, 400], label="opacity")
    bundle = gather(worked.engine.services, session, ExportOptions())
    report, capture = dicom_sr(bundle)
    dciodvfy(written(tmp_path, report))
    dciodvfy(written(tmp_path, capture))
    source = pydicom.dcmread(io.BytesIO(capture.data))
    assert source.SOPInstanceUID == source_dataset(bundle.images[0]).SOPInstanceUID  # one capture per image
    sr = hd.sr.srread(io.BytesIO(report.data))
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    (roi,) = sr.content.get_planar_roi_measurement_groups(referenced_sop_instance_uid=source.SOPInstanceUID)
    assert roi.roi.value.tolist() == [[100, 200], [300, 200], [300, 400], [100, 400], [100, 200]]
    assert sr.content.get_image_measurement_groups() == []  # not analysed: no findings invented


def test_sr_of_a_session_with_nothing_to_report_fails_with_the_reason(worked, rg1_path: Path) -> None:
    session = worked.engine.create_study_session("empty export")["session_id"]
    worked.engine.add_image_to_session(session, rg1_path, auto_analyze=False)
    bundle = gather(worked.engine.services, session, ExportOptions())
    with pytest.raises(MedVisionError) as raised:
        dicom_sr(bundle)
    assert raised.value.code == ErrorCode.EXPORT_FAILED and "has not been analysed" in raised.value.message
    assert dicom_seg(bundle) == []
