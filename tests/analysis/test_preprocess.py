"""Our numpy preprocessing equals torchxrayvision's own transforms, value for value."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torchxrayvision as xrv
from PIL import Image
from pydicom.data import get_testdata_file

from engine.analysis.preprocess import classifier_tensor, resize_matrix, xrv_resize
from engine.imaging import decode_image

ATOL = 2e-3  # float32 BLAS vs scipy's float64 filter, on a [-1024, 1024] scale


def _reference(image_2d: np.ndarray, size: int = 224) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cropped = xrv.datasets.XRayCenterCrop()(image_2d[None])
        return xrv.datasets.XRayResizer(size)(cropped)[0]


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KR.dcm"])
def test_dicom_path_matches_read_xray_dcm(name: str) -> None:
    path = get_testdata_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xrv warns about MONOCHROME1 conversion
        expected = _reference(xrv.utils.read_xray_dcm(path))
    ours = classifier_tensor(decode_image(path))
    assert ours.shape == (1, 1, 224, 224) and ours.dtype == np.float32
    assert np.abs(ours[0, 0] - expected).max() < ATOL


def test_png_path_matches_the_xrv_readme_recipe(tmp_path: Path, rg1_path: Path) -> None:
    display = decode_image(rg1_path).display()[::3, ::3]
    rgb = np.stack([display, display // 2, 255 - display], axis=2)  # real pixels, distinct channels
    Image.fromarray(rgb).save(tmp_path / "chest.png")
    expected = _reference(xrv.utils.normalize(rgb.mean(2), 255))
    ours = classifier_tensor(decode_image(tmp_path / "chest.png"))
    assert np.abs(ours[0, 0] - expected).max() < ATOL


@pytest.mark.parametrize("size", [100, 224, 300, 512, 1841])
def test_resize_equals_skimage_for_up_and_down_sampling(size: int, rg1_path: Path) -> None:
    image = decode_image(rg1_path).pixels[:size, :size].astype(np.float32)
    image = (image / image.max() * 2048 - 1024).astype(np.float32)
    expected = xrv.datasets.XRayResizer(224)(image[None])[0]
    assert np.abs(xrv_resize(np.ascontiguousarray(image), 224) - expected).max() < ATOL


def test_resize_rows_are_normalised_weights() -> None:
    matrix = resize_matrix(1841, 224)
    interior = matrix[20:-20].sum(axis=1)
    assert np.allclose(interior, 1.0, atol=1e-5)  # a flat image stays flat away from the border
    assert (matrix >= 0).all()
