"""NIfTI in and out: RAS on disk, LPS in a Volume, and the same voxels as the DICOM road."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume import WarningCode, load_volume, read_nifti, write_nifti
from tests.volumes.ctseries import RAS_TO_LPS, expected_lps


def test_reading_the_example_ct(shared_ct_dir: Path, ct_series: Path) -> None:
    volume = read_nifti(shared_ct_dir / "example_ct.nii.gz")
    voxels, affine = expected_lps()
    np.testing.assert_array_equal(volume.voxels, voxels)
    np.testing.assert_allclose(volume.affine, affine)
    assert volume.spacing_zyx == pytest.approx((3.0, 3.0, 3.0)) and volume.warnings == ()
    assert volume.source_format == "nifti" and len(volume.source_uids) == 112
    from_dicom = load_volume(ct_series)  # the DICOM road gives the same volume
    np.testing.assert_array_equal(from_dicom.voxels, volume.voxels)
    np.testing.assert_allclose(from_dicom.affine, volume.affine, atol=1e-5)


def test_round_trip(tmp_path: Path, ct_series: Path) -> None:
    volume = load_volume(ct_series)
    path = write_nifti(volume, tmp_path / "ct.nii.gz")
    image = nib.load(path)
    assert image.shape == (122, 101, 112) and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    np.testing.assert_allclose(image.affine, RAS_TO_LPS @ volume.affine)
    back = read_nifti(path)
    np.testing.assert_array_equal(back.voxels, volume.voxels)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_a_file_stored_top_down_is_reversed(tmp_path: Path, shared_ct_dir: Path) -> None:
    image = nib.load(shared_ct_dir / "example_ct_sm.nii.gz")
    data = np.asarray(image.dataobj)
    flipped = image.affine.copy()
    flipped[:3, 2] *= -1
    flipped[:3, 3] += image.affine[:3, 2] * (data.shape[2] - 1)
    nib.save(nib.Nifti1Image(data[:, :, ::-1], flipped), tmp_path / "down.nii.gz")
    down, up = read_nifti(tmp_path / "down.nii.gz"), read_nifti(shared_ct_dir / "example_ct_sm.nii.gz")
    np.testing.assert_array_equal(down.voxels, up.voxels)
    np.testing.assert_allclose(down.affine, up.affine, atol=1e-5)
    assert [w.code for w in down.warnings] == [WarningCode.Z_REVERSED]


def test_an_existing_target_is_not_replaced(tmp_path: Path, shared_ct_dir: Path) -> None:
    volume = read_nifti(shared_ct_dir / "example_ct_sm.nii.gz")
    target = tmp_path / "out.nii"
    target.write_bytes(b"keep")
    with pytest.raises(MedVisionError) as caught:
        write_nifti(volume, target)
    assert caught.value.code is ErrorCode.TARGET_EXISTS and target.read_bytes() == b"keep"
    write_nifti(volume, target, overwrite=True)
    np.testing.assert_array_equal(read_nifti(target).voxels, volume.voxels)


def test_not_a_nifti_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x00" * 400)
    with pytest.raises(MedVisionError) as caught:
        read_nifti(bad)
    assert caught.value.code is ErrorCode.UNSUPPORTED_FORMAT
