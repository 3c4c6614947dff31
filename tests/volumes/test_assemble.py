"""DICOM series -> Volume on real data: the shared example CT written as a series, pydicom's
enhanced CT and MR objects, and every kind of bad input the issue lists."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from engine.config import DecodeLimits
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume import WarningCode, iter_volumes, load_volume
from tests.volumes.ctseries import RAS_TO_LPS, WRONG_THICKNESS_MM, expected_lps, write_ct_series


def codes(volume) -> list[str]:  # noqa: ANN001
    return [w.code for w in volume.warnings]


# -- the good series ------------------------------------------------------------------------------
def test_the_series_assembles_into_the_nifti_voxels_and_affine(ct_series: Path) -> None:
    volume = load_volume(ct_series)
    voxels, affine = expected_lps()
    assert volume.voxels.dtype == np.float32 and volume.voxels.shape == (112, 101, 122)
    np.testing.assert_array_equal(volume.voxels, voxels)  # HU after rescale, z lowest first
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    assert volume.spacing_zyx == pytest.approx((3.0, 3.0, 3.0))  # from positions, not SliceThickness (5 mm)
    assert WRONG_THICKNESS_MM not in volume.spacing_zyx
    assert volume.warnings == ()
    assert volume.orientation == "RAS" and volume.modality == "CT"
    # one source UID per z, in position order: z's position is the affine's
    assert len(volume.source_uids) == 112 and len(set(volume.source_uids)) == 112
    by_uid = {}
    for path in ct_series.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_uid[ds.SOPInstanceUID] = ds
    for z in (0, 55, 111):
        ds = by_uid[volume.source_uids[z]]
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                   (volume.affine @ np.array([0.0, 0.0, z, 1.0]))[:3], atol=1e-4)
    # the names and InstanceNumbers were shuffled: sorting by them would have been wrong
    instance_order = [int(by_uid[u].InstanceNumber) for u in volume.source_uids]
    assert instance_order != sorted(instance_order)
    assert volume.summary()["slice_order"]["first_uid"] == volume.source_uids[0]


def test_a_ct_voxel_lands_where_the_nifti_puts_it(ct_series: Path, shared_ct_dir: Path) -> None:
    import nibabel as nib

    volume = load_volume(ct_series)
    image = nib.load(shared_ct_dir / "example_ct.nii.gz")
    data = np.asarray(image.dataobj)
    i, j, k = 60, 40, 77
    ras = image.affine @ np.array([i, j, k, 1.0])
    lps = volume.voxel_to_patient(np.array([i, j, k]))
    np.testing.assert_allclose(lps, RAS_TO_LPS[:3, :3] @ ras[:3], atol=1e-4)
    assert volume.voxels[k, j, i] == data[i, j, k]


# -- bad input: a warning or a coded error, never a silently wrong volume ---------------------------
@pytest.fixture
def series(tmp_path: Path, small_ct):  # noqa: ANN001, ANN201
    def write(**switches: object) -> Path:
        folder = tmp_path / "series"
        write_ct_series(folder, volume=small_ct, **switches)
        return folder
    return write


def test_a_slice_missing_from_the_middle(series, small_ct) -> None:  # noqa: ANN001
    volume = load_volume(series(drop_slice=20))
    voxels, _ = expected_lps(small_ct)
    assert volume.shape_zyx[0] == 39
    np.testing.assert_array_equal(volume.voxels, np.delete(voxels, 20, axis=0))
    missing = [w for w in volume.warnings if w.code == WarningCode.MISSING_SLICE]
    assert len(missing) == 1 and missing[0].slices == (19, 20) and "6.000 mm" in missing[0].message
    assert volume.spacing_zyx[0] == pytest.approx(3.0)  # the median gap, not the stretched mean
    np.testing.assert_allclose(volume.positions_mm[20] - volume.positions_mm[19], [0, 0, 6.0], atol=1e-4)


def test_two_slices_at_one_position(series, small_ct) -> None:  # noqa: ANN001
    volume = load_volume(series(duplicate_slice=10))
    voxels, affine = expected_lps(small_ct)
    np.testing.assert_array_equal(volume.voxels, voxels)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    (duplicate,) = [w for w in volume.warnings if w.code == WarningCode.DUPLICATE_POSITION]
    assert duplicate.slices == (10,) and "left out" in duplicate.message
    assert codes(volume) == [WarningCode.DUPLICATE_POSITION]


@pytest.mark.parametrize(("switch", "code"), [("other_orientation", WarningCode.MIXED_ORIENTATION),
                                               ("other_size", WarningCode.MIXED_SIZE),
                                               ("localizer", WarningCode.LOCALIZER_REMOVED)])
def test_one_slice_that_does_not_belong(series, small_ct, switch: str, code: str) -> None:  # noqa: ANN001
    folder = series(**{switch: True})
    assert len(list(folder.iterdir())) == 41
    volume = load_volume(folder)
    voxels, affine = expected_lps(small_ct)
    np.testing.assert_array_equal(volume.voxels, voxels)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    assert codes(volume) == [code]
    assert "1 " in volume.warnings[0].message  # says how many were set aside


def test_gantry_tilt_is_reported_and_kept_in_the_affine(series, small_ct) -> None:  # noqa: ANN001
    volume = load_volume(series(gantry_tilt_deg=12.0))
    voxels, affine = expected_lps(small_ct)
    np.testing.assert_array_equal(volume.voxels, voxels)
    (tilt,) = [w for w in volume.warnings if w.code == WarningCode.GANTRY_TILT]
    assert "12.00 degrees" in tilt.message
    np.testing.assert_allclose(volume.affine[:3, 2], affine[:3, 2], atol=1e-5)  # the table's step, sheared
    assert volume.spacing_zyx[0] == pytest.approx(3.0 * np.cos(np.radians(12.0)), abs=1e-4)  # between planes
    assert abs(float(volume.affine[:3, 2] @ volume.slice_normal)) == pytest.approx(volume.spacing_zyx[0], abs=1e-5)


def test_a_corrupt_slice(series, small_ct) -> None:  # noqa: ANN001
    volume = load_volume(series(corrupt_slice=25))
    voxels, _ = expected_lps(small_ct)
    np.testing.assert_array_equal(volume.voxels, np.delete(voxels, 25, axis=0))
    assert WarningCode.CORRUPT_SLICE in codes(volume)
    (missing,) = [w for w in volume.warnings if w.code == WarningCode.MISSING_SLICE]
    assert missing.slices == (24, 25)


def test_a_cr_radiograph_is_not_a_volume(rg1_path: Path) -> None:
    with pytest.raises(MedVisionError) as caught:
        load_volume(rg1_path)
    assert caught.value.code is ErrorCode.NOT_A_VOLUME
    assert "CR radiograph" in caught.value.message and "RG1_UNCR.dcm" in caught.value.message


def test_a_single_ct_image_is_not_a_volume() -> None:
    with pytest.raises(MedVisionError) as caught:
        load_volume(get_testdata_file("CT_small.dcm"))
    assert caught.value.code is ErrorCode.NOT_A_VOLUME and "single 2D CT image" in caught.value.message


def test_only_localizers_is_not_a_volume(tmp_path: Path, small_ct) -> None:  # noqa: ANN001
    folder = tmp_path / "only-localizer"
    write_ct_series(folder, volume=small_ct, localizer=True)
    for path in folder.iterdir():
        if "LOCALIZER" not in pydicom.dcmread(path, stop_before_pixels=True).ImageType:
            path.unlink()
    with pytest.raises(MedVisionError) as caught:
        load_volume(folder)
    assert caught.value.code is ErrorCode.NOT_A_VOLUME


def test_a_volume_over_the_cap_is_refused_before_allocating(ct_series: Path) -> None:
    limits = DecodeLimits(max_volume_bytes=112 * 101 * 122 * 4 - 1)
    with pytest.raises(MedVisionError) as caught:
        load_volume(ct_series, limits=limits)
    assert caught.value.code is ErrorCode.VOLUME_TOO_LARGE
    assert "MEDVISION_MAX_VOLUME_BYTES" in caught.value.message
    assert load_volume(ct_series, limits=DecodeLimits(max_volume_bytes=112 * 101 * 122 * 4)).shape_zyx[0] == 112


def test_files_that_are_not_images_are_reported(tmp_path: Path, ct_series: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(ct_series, folder)
    (folder / "README.txt").write_text("not DICOM")
    shutil.copy(get_testdata_file("test-SR.dcm"), folder / "report.dcm")
    volume = load_volume(folder)
    assert volume.shape_zyx == (112, 101, 122)
    assert codes(volume) == [WarningCode.SKIPPED_FILE, WarningCode.SKIPPED_FILE]


def test_two_series_need_a_choice(tmp_path: Path, small_ct) -> None:  # noqa: ANN001
    write_ct_series(tmp_path / "a", volume=small_ct, seed=1)
    write_ct_series(tmp_path / "b", volume=small_ct, seed=2)
    with pytest.raises(MedVisionError) as caught:
        load_volume(tmp_path)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT and len(caught.value.details["series"]) == 2
    chosen = caught.value.details["series"][1]["series_uid"]
    assert load_volume(tmp_path, series_uid=chosen).series_uid == chosen
    assert len(list(iter_volumes([tmp_path]))) == 2


def test_a_multi_phase_series_splits_by_acquisition(tmp_path: Path, small_ct) -> None:  # noqa: ANN001
    folder = tmp_path / "phases"
    write_ct_series(folder, volume=small_ct)
    for path in sorted(folder.iterdir())[:10]:  # a second acquisition over the same positions
        ds = pydicom.dcmread(path)
        ds.AcquisitionNumber, ds.SOPInstanceUID = 2, pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"phase2-{path.name}")
    volumes = list(iter_volumes([folder]))
    assert [v.shape_zyx[0] for v in volumes] == [40, 10]
    assert WarningCode.OTHER_STACKS in codes(volumes[0]) and WarningCode.OTHER_STACKS in codes(volumes[1])


def test_step_and_shoot_acquisitions_stay_one_stack(tmp_path: Path, small_ct) -> None:  # noqa: ANN001
    folder = tmp_path / "sequential"
    write_ct_series(folder, volume=small_ct)
    for path in folder.iterdir():  # each 4-slice rotation its own acquisition, positions not repeated
        ds = pydicom.dcmread(path)
        ds.AcquisitionNumber = int(float(ds.ImagePositionPatient[2]) // 12)
        ds.save_as(path)
    volume = load_volume(folder)
    assert volume.shape_zyx[0] == 40 and volume.warnings == ()


# -- enhanced multi-frame objects ------------------------------------------------------------------
def test_enhanced_ct_uses_its_per_frame_groups() -> None:
    path = get_testdata_file("eCT_Supplemental.dcm")
    volume = load_volume(path)
    ds = pydicom.dcmread(path)
    assert volume.shape_zyx == (2, 512, 512) and volume.warnings == ()
    # frame 2 lies lower along the normal (0, 0, -1): it comes first
    assert volume.source_uids == (f"{ds.SOPInstanceUID}#2", f"{ds.SOPInstanceUID}#1")
    assert volume.spacing_zyx == pytest.approx((10.0, 0.388672, 0.388672))
    assert volume.orientation == "RPI"
    np.testing.assert_allclose(volume.affine[:3, 3], [99.5, -301.5, -149.0])
    raw = ds.pixel_array
    np.testing.assert_array_equal(volume.voxels, raw[::-1].astype(np.float32) - 1024)  # per-frame rescale


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
                                  "emri_small_big_endian.dcm"])
def test_enhanced_mr_without_per_frame_positions_says_so(name: str) -> None:
    volume = load_volume(get_testdata_file(name))
    reference = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array
    assert volume.shape_zyx == (10, 64, 64) and volume.modality == "MR"
    np.testing.assert_array_equal(volume.voxels, reference.astype(np.float32))  # stored frame order
    assert WarningCode.NO_PER_FRAME_POSITION in codes(volume)
    assert not volume.patient_geometry and volume.spacing_zyx[0] == pytest.approx(1.2)  # SpacingBetweenSlices
    assert volume.source_uids[0].endswith("#1") and volume.source_uids[-1].endswith("#10")


def test_slices_all_at_one_position_are_not_a_volume(tmp_path: Path, small_ct) -> None:  # noqa: ANN001
    folder = tmp_path / "one-place"
    write_ct_series(folder, volume=(small_ct[0][:, :, :1], small_ct[1]), duplicate_slice=0)
    with pytest.raises(MedVisionError) as caught:
        load_volume(folder)
    assert caught.value.code is ErrorCode.NOT_A_VOLUME and "all lie at one position" in caught.value.message


# -- the direct read of uncompressed slices agrees with the decoder --------------------------------
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_RLE.dcm"])
def test_slices_read_directly_or_decoded_give_the_decoders_values(name: str) -> None:
    from engine.imaging import decode_image
    from engine.imaging.volume.assemble import scan_sources
    from engine.imaging.volume.native import read_native_slice

    path = get_testdata_file(name)
    (header,), _ = scan_sources([path])
    out = np.empty((header.rows, header.columns), np.float32)
    direct = read_native_slice(header, header.source.read(), out)
    assert direct == (name in ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm"))  # big endian, RLE: pydicom
    if direct:
        np.testing.assert_array_equal(out, decode_image(path).pixels)


def test_bits_above_bits_stored_go_through_the_decoder(tmp_path: Path, small_ct) -> None:  # noqa: ANN001
    from engine.imaging import decode_image

    folder = tmp_path / "twelve-bit"
    write_ct_series(folder, volume=small_ct)
    for index, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = 12, 11
        if index % 4 == 0:  # an overlay's bits above bit 11, as old scanners left them
            stored = np.frombuffer(ds.PixelData, "<u2").copy()
            stored[:500] |= 0xF000
            ds.PixelData = stored.tobytes()
        ds.save_as(path)
    volume = load_volume(folder)
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in folder.iterdir()}
    high = 0
    for z, uid in enumerate(volume.source_uids):
        stored = np.frombuffer(pydicom.dcmread(by_uid[uid]).PixelData, "<u2")
        high += int(stored.max()) > 4095
        np.testing.assert_array_equal(volume.voxels[z], decode_image(by_uid[uid]).pixels)
    assert high  # some slices had bits set above bit 11: those went through pydicom


def test_orientations_that_differ_by_rounding_stay_one_stack(tmp_path: Path, small_ct) -> None:  # noqa: ANN001
    folder = tmp_path / "rounding"
    write_ct_series(folder, volume=small_ct)
    for index, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        # 0.000049 and 0.000051 round apart at 4 decimals; they are 0.0001 degrees apart
        ds.ImageOrientationPatient = ["-1", "0.000049" if index % 2 else "0.000051", "0", "0", "-1", "0"]
        ds.save_as(path)
    volume = load_volume(folder)
    assert volume.shape_zyx[0] == 40 and WarningCode.MIXED_ORIENTATION not in codes(volume)
