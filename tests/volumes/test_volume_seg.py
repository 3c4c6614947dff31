"""``segment-volume --seg``: the structures as one multi-frame DICOM SEG over every source slice,
dciodvfy-clean, its frames equal to the label map, from files and from a session's encrypted store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage

from engine.analysis.volume.anatomy import segment_anatomy
from engine.api import Engine
from engine.cli import main
from engine.config import Settings
from engine.errors import ErrorCode, MedVisionError
from engine.export.dicom_common import dicom_bytes
from engine.export.volume_seg import volume_segmentation
from engine.imaging.volume import load_volume
from tests.dciodvfy import dciodvfy
from tests.volumes.ctseries import sub_volume, write_ct_series

#: Label of each structure's segment.
SEGMENT_LABELS = {"body": "body", "bone": "bone", "lung_left": "lung left", "lung_right": "lung right",
                  "airways": "airways"}


def segment_masks(ds: pydicom.Dataset, uids: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each segment's 3D mask rebuilt from the frames and their source references (not from our writer)."""
    shape = (len(uids), ds.Rows, ds.Columns)
    z_of = {uid: z for z, uid in enumerate(uids)}
    labels = {item.SegmentNumber: item.SegmentLabel for item in ds.SegmentSequence}
    masks = {label: np.zeros(shape, dtype=bool) for label in labels.values()}
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        masks[labels[number]][z_of[source]] = frame.astype(bool)
    return masks


def content_items(item: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every SR content item under ``item``, depth first."""
    found = []
    for child in item.get("ContentSequence", []):
        found += [child, *content_items(child)]
    return found


def check_report(sr: pydicom.Dataset, seg: pydicom.Dataset, volume, result) -> None:  # noqa: ANN001
    """One TID 1411 group per segment: its segment referenced, volume (mL) and mean HU of its mask."""
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = [i for i in content_items(sr) if i.ValueType == "CONTAINER"
              and i.ConceptNameCodeSequence[0].CodeValue == "125007"]  # Measurement Group
    labels = {item.SegmentNumber: item.SegmentLabel.replace(" ", "_") for item in seg.SegmentSequence}
    assert len(groups) == len(labels)
    voxel_ml = float(np.prod(volume.spacing_zyx)) / 1000
    for group in groups:
        items = content_items(group)
        (segment,) = [i for i in items if i.ValueType == "IMAGE" and "ReferencedSegmentNumber" in
                      i.ReferencedSOPSequence[0]]
        assert segment.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        mask = result.mask(labels[segment.ReferencedSOPSequence[0].ReferencedSegmentNumber])
        values = {i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
                  for i in items if i.ValueType == "NUM"}
        assert values["118565006"] == pytest.approx(mask.sum() * voxel_ml, abs=1e-3)  # Volume, mL
        assert values["112031"] == pytest.approx(float(volume.voxels[mask].mean()), abs=0.01)  # mean HU


def test_segment_volume_writes_a_seg_over_every_slice(ct_series: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out, report = tmp_path / "anatomy-seg.dcm", tmp_path / "anatomy-sr.dcm"
    assert main(["segment-volume", str(ct_series), "--seg", str(out), "--sr", str(report)]) == 0
    text = capsys.readouterr().out
    assert f"SEG written to {out}: 4 segments" in text and f"SR written to {report}" in text  # no trachea here
    dciodvfy(out)
    dciodvfy(report)
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == SegmentationStorage and ds.SegmentationType == "BINARY"
    assert [item.SegmentLabel for item in ds.SegmentSequence] == ["body", "bone", "lung left", "lung right"]
    types = [item.SegmentedPropertyTypeCodeSequence[0] for item in ds.SegmentSequence]
    assert [(t.CodeValue, t.CodingSchemeDesignator) for t in types] == [
        ("38266002", "SCT"), ("272673000", "SCT"), ("39607008", "SCT"), ("39607008", "SCT")]
    assert [t.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning for t in types[2:4]] == ["Left", "Right"]

    files = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(ct_series.iterdir())]
    assert ds.StudyInstanceUID == files[0].StudyInstanceUID and ds.PatientID == files[0].PatientID
    assert ds.FrameOfReferenceUID == files[0].FrameOfReferenceUID
    referenced = {item.ReferencedSOPInstanceUID
                  for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {f.SOPInstanceUID for f in files}  # every source slice, none other

    volume = load_volume(ct_series)
    result = segment_anatomy(volume.voxels, volume.affine)
    masks = segment_masks(ds, volume.source_uids)
    assert not result.mask("airways").any()
    for name, label in list(SEGMENT_LABELS.items())[:4]:
        assert np.array_equal(masks[label], result.mask(name)), name
    check_report(pydicom.dcmread(report), ds, volume, result)
    position = {f.SOPInstanceUID: [float(v) for v in f.ImagePositionPatient] for f in files}
    for group in ds.PerFrameFunctionalGroupsSequence[:50]:
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient] == \
            pytest.approx(position[source])


def test_seg_refusals(ct_series: Path, shared_ct_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "seg.dcm"
    assert main(["segment-volume", str(shared_ct_dir / "example_ct_sm.nii.gz"), "--seg", str(out)]) == 2
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: --seg needs DICOM slices")
    assert not out.exists()
    assert main(["segment-volume", str(ct_series), "--sr", str(out)]) == 2
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: --sr references the SEG's segments")
    volume = load_volume(ct_series)
    result = segment_anatomy(volume.voxels, volume.affine, structures="lungs")
    with pytest.raises(MedVisionError) as refused:
        volume_segmentation(result, [])
    assert refused.value.code == ErrorCode.EXPORT_FAILED and "0 source slices" in refused.value.message


def test_a_stored_series_is_referenced_from_the_store(tmp_path: Path, model_pack: Path) -> None:
    """The headers come from the encrypted blobs (in memory), in the volume's z order."""
    folder = tmp_path / "series"
    folder.mkdir()
    write_ct_series(folder, volume=sub_volume(20, 50), seed=3)
    settings = Settings(home=tmp_path / "home", model_pack=model_pack, use_keyring=False)
    with Engine(settings) as engine:
        session_id = engine.create_study_session("ct")["session_id"]
        for path in sorted(folder.iterdir()):
            engine.add_image_to_session(session_id, path, auto_analyze=False)
        volume = engine.get_volume(session_id)
        headers = engine.volume_source_headers(session_id)
        assert [h.SOPInstanceUID for h in headers] == list(volume.source_uids)
        assert all("PixelData" not in h for h in headers)
        result = segment_anatomy(volume.voxels, volume.affine, structures="body,bone")
        out = tmp_path / "stored-seg.dcm"
        out.write_bytes(dicom_bytes(volume_segmentation(result, headers)))
    dciodvfy(out)
    ds = pydicom.dcmread(out)
    assert [item.SegmentLabel for item in ds.SegmentSequence] == ["body", "bone"]
    masks = segment_masks(ds, volume.source_uids)
    assert np.array_equal(masks["bone"], result.mask("bone"))
