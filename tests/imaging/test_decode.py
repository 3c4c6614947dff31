"""Tests for engine.imaging.decode on pydicom's and pydicom-data's real sample files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_windowing

from engine.errors import ErrorCode, MedVisionError
from engine.imaging import DecodedImage, decode_image

UNSUPPORTED = ErrorCode.UNSUPPORTED_FORMAT
DECODE_ERROR = ErrorCode.IMAGE_DECODE_ERROR

# Every sample file that must fail, with the code and why. Any other file must decode.
EXPECTED_FAILURES: dict[str, tuple[ErrorCode, str]] = {
    "ExplVR_BigEndNoMeta.dcm": (UNSUPPORTED, "RT Ion Plan, no pixel data"),
    "ExplVR_LitEndNoMeta.dcm": (UNSUPPORTED, "RT Ion Plan, no pixel data"),
    "rtplan.dcm": (UNSUPPORTED, "RT Plan, no pixel data"),
    "rtplan_truncated.dcm": (UNSUPPORTED, "RT Plan, no pixel data"),
    "rtstruct.dcm": (UNSUPPORTED, "RT Structure Set, no pixel data"),
    "reportsi.dcm": (UNSUPPORTED, "Basic Text SR, no pixel data"),
    "reportsi_with_empty_number_tags.dcm": (UNSUPPORTED, "Basic Text SR, no pixel data"),
    "test-SR.dcm": (UNSUPPORTED, "Comprehensive SR, no pixel data"),
    "dicomdirtests/DICOMDIR-empty.dcm": (UNSUPPORTED, "DICOMDIR, no pixel data"),
    "empty_charset_LEI.dcm": (UNSUPPORTED, "two header elements only, no SOP class"),
    "no_meta_group_length.dcm": (UNSUPPORTED, "RT Image header fragment, no pixel data"),
    "priv_SQ.dcm": (UNSUPPORTED, "MR header fragment (private sequence), no pixel data"),
    "UN_sequence.dcm": (UNSUPPORTED, "CT header with one private UN sequence, no pixel data"),
    "no_meta.dcm": (UNSUPPORTED, "starts with a stray byte: no DICOM element can be parsed"),
    "JPEG-lossy.dcm": (DECODE_ERROR, "12-bit lossy JPEG with a misplaced marker (libjpeg)"),
    "JPEG2000-embedded-sequence-delimiter.dcm": (DECODE_ERROR, "J2K stream deliberately corrupted"),
    "MR_truncated.dcm": (DECODE_ERROR, "pixel data shorter than Rows x Columns"),
    "badVR.dcm": (DECODE_ERROR, "NumberOfFrames is '1A', not an integer"),
    "meta_missing_tsyntax.dcm": (DECODE_ERROR, "no transfer syntax and no image pixel module"),
    "nested_priv_SQ.dcm": (DECODE_ERROR, "pixel data without Rows/Columns/BitsAllocated"),
    "emri_small_jpeg_2k_lossless_too_short.dcm": (
        DECODE_ERROR, "file ends inside the encapsulated pixel data: no element readable"),
}

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_DATA_FILES = Path(data_store.__file__).parent / "data"
ALL_DICOM_FILES = sorted(
    [(str(p.relative_to(PYDICOM_FILES)), p) for p in PYDICOM_FILES.rglob("*.dcm")]
    + [(str(p.relative_to(PYDICOM_DATA_FILES)), p) for p in PYDICOM_DATA_FILES.rglob("*.dcm")]
)


def test_expected_failures_list_is_current() -> None:
    names = {name for name, _ in ALL_DICOM_FILES}
    assert set(EXPECTED_FAILURES) <= names
    assert len(ALL_DICOM_FILES) > 140


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # the odd files make pydicom warn
@pytest.mark.parametrize(("name", "path"), ALL_DICOM_FILES, ids=[n for n, _ in ALL_DICOM_FILES])
def test_every_sample_file_decodes_or_fails_cleanly(name: str, path) -> None:
    if name in EXPECTED_FAILURES:
        with pytest.raises(MedVisionError) as info:
            decode_image(path)
        assert info.value.code == EXPECTED_FAILURES[name][0], str(info.value)
        return

    decoded = decode_image(path)
    header = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    shape = (header.Rows, header.Columns) if "Rows" in header else (decoded.rows, decoded.columns)
    expected = (*shape, 3) if decoded.is_color else shape
    assert decoded.pixels.shape == expected
    assert decoded.pixels.dtype == np.float32
    assert np.isfinite(decoded.pixels).all()
    assert decoded.raw.shape[:2] == shape
    shown = decoded.display()
    assert shown.dtype == np.uint8 and shown.shape == expected
    json.dumps(decoded.metadata)
    json.dumps(decoded.patient)
    assert decoded.window_width > 0


# ------------------------------------------------------------------- RG1 chest film


def test_rg1_is_a_monochrome1_chest_film(rg1: DecodedImage) -> None:
    assert rg1.format == "dicom"
    assert (rg1.rows, rg1.columns) == (1955, 1841)
    assert rg1.photometric == "MONOCHROME1" and rg1.invert
    assert rg1.bits_stored == 15 and rg1.max_value == 2**15 - 1
    assert rg1.image_type == "CXR" and rg1.type_confidence >= 0.8
    assert rg1.modality == "CR"
    assert (rg1.window_center, rg1.window_width, rg1.window_source) == (15000, 30000, "dicom")
    assert rg1.raw.dtype == np.uint16


def test_rg1_zero_pixel_spacing_is_treated_as_missing(rg1: DecodedImage) -> None:
    assert rg1.pixel_spacing_mm is None
    assert rg1.spacing_source == "none"


def _box(image: np.ndarray, cx: float, cy: float, half: float = 0.05) -> float:
    rows, cols = image.shape[:2]
    top, left = int((cy - half) * rows), int((cx - half) * cols)
    return float(image[top:int((cy + half) * rows), left:int((cx + half) * cols)].mean())


def test_rg1_display_shows_lungs_darker_than_mediastinum(rg1: DecodedImage) -> None:
    # Boxes chosen on the rendered film: mid lung fields at 30 % / 70 % of the width,
    # 40 % of the height; mediastinum/spine column at 50 % of the width.
    shown = rg1.display()
    lungs = [_box(shown, 0.30, 0.40), _box(shown, 0.70, 0.40)]
    mediastinum = _box(shown, 0.50, 0.40)
    assert max(lungs) < mediastinum - 40
    # The stored MONOCHROME1 values run the other way: only the inversion fixes it.
    assert _box(rg1.pixels, 0.30, 0.40) > _box(rg1.pixels, 0.50, 0.40)


def test_rg1_patient_tags_stay_out_of_metadata(rg1: DecodedImage) -> None:
    assert rg1.patient["PatientName"] == "CompressedSamples^RG1"
    text = json.dumps(rg1.metadata)
    assert "CompressedSamples" not in text
    assert "PatientName" not in text
    assert "CompressedSamples" not in repr(rg1)
    assert rg1.metadata["SOPClassName"] == "Computed Radiography Image Storage"
    assert rg1.metadata["BodyPartExamined"] == "CHEST"


# ------------------------------------------------------------------ codecs agree


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [("RG1_J2KR.dcm", "RG1_UNCR.dcm"), ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
     ("US1_J2KR.dcm", "US1_UNCR.dcm"), ("MR_small_RLE.dcm", "MR_small.dcm"),
     ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"), ("MR_small_bigendian.dcm", "MR_small.dcm"),
     ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm")],
)
def test_lossless_codecs_give_identical_raw(compressed: str, reference: str, sample) -> None:
    decoded, expected = decode_image(sample(compressed)), decode_image(sample(reference))
    np.testing.assert_array_equal(decoded.raw, expected.raw)
    assert decoded.raw.dtype.isnative


@pytest.mark.parametrize(
    ("lossy", "reference"),
    [("RG1_J2KI.dcm", "RG1_UNCR.dcm"), ("MR2_J2KI.dcm", "MR2_UNCR.dcm"),
     ("US1_J2KI.dcm", "US1_UNCR.dcm")],
)
def test_lossy_codecs_stay_close(lossy: str, reference: str, sample) -> None:
    decoded, expected = decode_image(sample(lossy)), decode_image(sample(reference))
    difference = np.abs(decoded.raw.astype(np.float64) - expected.raw.astype(np.float64))
    value_range = float(expected.raw.max()) - float(expected.raw.min())
    assert difference.mean() / value_range < 0.01


# --------------------------------------------------------- modalities and LUTs


def test_ct_small_gives_hounsfield_units_and_spacing(sample) -> None:
    ct = decode_image(sample("CT_small.dcm"))
    np.testing.assert_array_equal(ct.pixels, ct.raw.astype(np.float32) - 1024)
    assert ct.pixels.min() < -800
    assert ct.pixel_spacing_mm == pytest.approx((0.661468, 0.661468))
    assert ct.spacing_source == "PixelSpacing"
    assert ct.image_type == "CT"


def test_full_field_ct_has_air_near_minus_1000_hu(sample) -> None:
    ct = decode_image(sample("693_UNCR.dcm"))
    in_field = ct.pixels[ct.pixels > -2000]  # -3024 pads outside the reconstruction
    assert -1050 < np.percentile(in_field, 1) < -950


def test_enhanced_ct_reads_functional_groups(sample) -> None:
    ct = decode_image(sample("eCT_Supplemental.dcm"), frame=1)
    assert ct.frame_count == 2 and ct.frame_index == 1
    assert ct.pixels.min() == -1024  # Rescale Intercept from the functional groups
    assert (ct.window_center, ct.window_width, ct.window_source) == (49, 102, "dicom")
    assert ct.pixel_spacing_mm == pytest.approx((0.388672, 0.388672))


def test_modality_lut_sequence_matches_pydicom(sample) -> None:
    decoded = decode_image(sample("mlut_18.dcm"))
    ds = pydicom.dcmread(sample("mlut_18.dcm"))
    np.testing.assert_array_equal(decoded.pixels, apply_modality_lut(ds.pixel_array, ds))


def test_voi_lut_sequence_is_used_for_display(sample) -> None:
    decoded = decode_image(sample("vlut_04.dcm"))
    assert decoded.window_source == "voi_lut"
    shown = decoded.display()
    assert shown.min() < 20 and shown.max() > 235
    assert not np.array_equal(decoded.display(100, 50), shown)  # explicit window overrides


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom(function: str, sample) -> None:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40, 400, function
    buffer = io.BytesIO()
    ds.save_as(buffer)
    decoded = decode_image(buffer.getvalue())
    assert decoded.voi_function == function and decoded.window_source == "dicom"

    reference = apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds)
    y_min, y_max = -(2**15) - 1024, 2**15 - 1 - 1024  # signed 16-bit, rescaled
    expected = (reference - y_min) / (y_max - y_min) * 255
    assert np.abs(decoded.display().astype(np.float64) - expected).max() <= 1.0


def test_display_rejects_bad_window(rg1: DecodedImage) -> None:
    with pytest.raises(MedVisionError) as info:
        rg1.display(window_center=100, window_width=0)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT


def test_mr_and_colour_ultrasound(sample) -> None:
    assert decode_image(sample("MR_small.dcm")).image_type == "MRI"
    us = decode_image(sample("US1_UNCR.dcm"))
    assert us.image_type == "US" and us.is_color and us.photometric == "RGB"
    assert us.pixels.shape == (480, 640, 3)
    np.testing.assert_array_equal(us.display(), us.raw)


def test_ybr_and_palette_become_rgb(sample) -> None:
    ybr = decode_image(sample("SC_ybr_full_uncompressed.dcm"))
    rgb = decode_image(sample("SC_rgb.dcm"))
    assert ybr.photometric == "YBR_FULL" and ybr.is_color
    difference = np.abs(ybr.pixels - rgb.pixels)  # same test pattern after YBR->RGB
    assert difference.mean() < 1 and difference.max() <= 8
    palette = decode_image(sample("OBXXXX1A.dcm"))
    assert palette.is_color and palette.raw.ndim == 2 and palette.pixels.shape == (600, 800, 3)
    assert 0 <= palette.pixels.min() and palette.pixels.max() <= 255


def test_pixel_spacing_fallbacks(sample) -> None:
    aspect_only = decode_image(sample("color-pl.dcm"))  # PixelAspectRatio 4\3 only
    assert (aspect_only.pixel_spacing_mm, aspect_only.spacing_source) == (None, "none")

    ds = pydicom.dcmread(sample("CT_small.dcm"))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.25]
    buffer = io.BytesIO()
    ds.save_as(buffer)
    decoded = decode_image(buffer.getvalue())
    assert decoded.pixel_spacing_mm == pytest.approx((0.2, 0.25))
    assert decoded.spacing_source == "ImagerPixelSpacing"
    assert decoded.metadata["pixel_spacing"]["calibrated_at_patient"] is False


# ------------------------------------------------------------- ECG waveforms


def test_ecg_waveform_is_rendered(sample) -> None:
    ecg = decode_image(sample("waveform_ecg.dcm"))
    assert ecg.image_type == "EKG" and ecg.frame_count == 2
    assert ecg.columns >= 1000 and ecg.rows >= 500
    shown = ecg.display()
    assert np.median(shown) == 255  # white paper
    assert 0.002 < np.mean(shown < 100) < 0.2  # thin dark traces
    waveform = ecg.metadata["waveform"]
    assert waveform["channel_count"] == 12 and len(waveform["channel_labels"]) == 12
    assert waveform["channel_labels"][1] == "Lead II"
    assert (waveform["sampling_frequency_hz"], waveform["sample_count"]) == (1000, 10000)
    assert ecg.patient["PatientName"]
    assert ecg.patient["PatientName"] not in json.dumps(ecg.metadata)


def test_ecg_frame_selects_multiplex_group(sample) -> None:
    median_beat = decode_image(sample("waveform_ecg.dcm"), frame=1)
    assert median_beat.metadata["waveform"]["sample_count"] == 1200
    with pytest.raises(MedVisionError) as info:
        decode_image(sample("waveform_ecg.dcm"), frame=2)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT


# ----------------------------------------------------------------- multi-frame


@pytest.mark.parametrize(("name", "frames"), [("SC_rgb_rle_2frame.dcm", 2), ("emri_small.dcm", 10)])
def test_frames_differ_and_range_is_checked(name: str, frames: int, sample) -> None:
    first, second = decode_image(sample(name)), decode_image(sample(name), frame=1)
    assert first.frame_count == frames and second.frame_index == 1
    assert not np.array_equal(first.raw, second.raw)
    decode_image(sample(name), frame=frames - 1)
    for bad_frame in (frames, -1):
        with pytest.raises(MedVisionError) as info:
            decode_image(sample(name), frame=bad_frame)
        assert info.value.code == ErrorCode.INVALID_ARGUMENT


# ------------------------------------------------------------------ PNG / JPEG


def _encode(array: np.ndarray, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_png_8bit_chest(rg1_display_small: np.ndarray) -> None:
    decoded = decode_image(_encode(rg1_display_small, "PNG"))
    assert decoded.format == "png" and decoded.photometric == "MONOCHROME2"
    assert not decoded.is_color and decoded.bits_stored == 8 and decoded.max_value == 255
    np.testing.assert_array_equal(decoded.raw, rg1_display_small)
    np.testing.assert_array_equal(decoded.display(), rg1_display_small)
    assert decoded.image_type == "CXR" and decoded.type_confidence <= 0.6
    assert decoded.patient == {} and decoded.sop_instance_uid is None


def test_png_16bit(rg1: DecodedImage) -> None:
    stored = rg1.raw[::4, ::4].copy()
    decoded = decode_image(_encode(stored, "PNG"))
    assert decoded.bits_stored == 16 and decoded.max_value == 65535
    np.testing.assert_array_equal(decoded.raw, stored)
    assert decoded.window_source == "auto"
    low, high = np.percentile(stored, [0.5, 99.5])
    assert decoded.window_center == pytest.approx((low + high) / 2, rel=0.05)


def test_jpeg_rgb(rg1_display_small: np.ndarray) -> None:
    rgb = np.repeat(rg1_display_small[..., None], 3, axis=2)
    decoded = decode_image(_encode(rgb, "JPEG", quality=95))
    assert decoded.format == "jpeg" and decoded.is_color and decoded.photometric == "RGB"
    assert decoded.pixels.shape == rgb.shape
    assert np.abs(decoded.raw.astype(np.float64) - rgb).mean() < 3
    assert decoded.image_type == "CXR"  # near-grayscale chest-shaped


def test_png_rgba_and_palette_become_rgb(rg1_display_small: np.ndarray) -> None:
    rgba = np.dstack([rg1_display_small] * 3 + [np.full_like(rg1_display_small, 255)])
    decoded = decode_image(_encode(rgba, "PNG"))
    assert decoded.raw.shape == (*rg1_display_small.shape, 3)
    palette = Image.fromarray(rg1_display_small).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue())
    assert decoded.is_color and decoded.raw.shape == (*rg1_display_small.shape, 3)


def test_format_comes_from_content_not_extension(tmp_path, rg1_display_small) -> None:
    path = tmp_path / "chest.dcm"
    path.write_bytes(_encode(rg1_display_small, "PNG"))
    assert decode_image(path).format == "png"


# ---------------------------------------------------------------------- failures


def _error_code(source) -> ErrorCode:
    with pytest.raises(MedVisionError) as info:
        decode_image(source)
    return info.value.code


def test_truncated_png(rg1_display_small: np.ndarray) -> None:
    data = _encode(rg1_display_small, "PNG")
    assert _error_code(data[: len(data) // 2]) == ErrorCode.IMAGE_DECODE_ERROR


def test_random_and_empty_bytes() -> None:
    noise = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert _error_code(noise) == ErrorCode.UNSUPPORTED_FORMAT
    assert _error_code(b"") == ErrorCode.UNSUPPORTED_FORMAT


def test_missing_file_message_has_no_directory(tmp_path) -> None:
    missing = tmp_path / "nested" / "chest.dcm"
    with pytest.raises(MedVisionError) as info:
        decode_image(missing)
    assert info.value.code == ErrorCode.FILE_NOT_FOUND
    assert "chest.dcm" in info.value.message
    assert str(tmp_path) not in str(info.value) and str(tmp_path) not in str(info.value.details)
    with pytest.raises(MedVisionError) as info:
        decode_image(b"not an image", filename=str(tmp_path / "scan.png"))
    assert "scan.png" in info.value.message and str(tmp_path) not in str(info.value)


def test_truncated_rg1(rg1_bytes: bytes) -> None:
    code = _error_code(rg1_bytes[: int(len(rg1_bytes) * 0.6)])
    assert code in (ErrorCode.IMAGE_DECODE_ERROR, ErrorCode.UNSUPPORTED_FORMAT)


def test_sr_names_its_sop_class(sample) -> None:
    with pytest.raises(MedVisionError) as info:
        decode_image(sample("test-SR.dcm"))
    assert "Comprehensive SR Storage" in info.value.message


def test_bad_arguments(sample) -> None:
    with pytest.raises(MedVisionError) as info:
        decode_image(12345)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(MedVisionError) as info:
        decode_image(sample("CT_small.dcm"), frame=1.0)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.INVALID_ARGUMENT


# ------------------------------------------------------------- bytes == path


@pytest.mark.parametrize(
    "name", ["RG1_UNCR.dcm", "US1_J2KR.dcm", "waveform_ecg.dcm", "OT-PAL-8-face.dcm"]
)
def test_bytes_and_path_give_the_same_result(name: str, sample) -> None:
    from_path = decode_image(sample(name))
    from_bytes = decode_image(sample(name).read_bytes())
    np.testing.assert_array_equal(from_path.raw, from_bytes.raw)
    np.testing.assert_array_equal(from_path.pixels, from_bytes.pixels)
    for attribute in ("metadata", "patient", "window_center", "window_width", "pixel_spacing_mm",
                      "image_type", "type_reason", "frame_count", "sop_instance_uid"):
        assert getattr(from_path, attribute) == getattr(from_bytes, attribute), attribute
