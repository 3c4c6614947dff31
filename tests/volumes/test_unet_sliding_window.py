"""The 3D U-Net runtime's geometry and sliding-window arithmetic (no model file, no torch).

The patch model here is a real computation in numpy: per voxel, one logit per class that
peaks at the class nearest the voxel's value. Any correct tiling and blending of such a
pointwise model returns exactly its whole-volume answer, so these tests fail on a missed
voxel, a misplaced window or a wrong pad/unpad.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.analysis.volume.unet import (
    UNetSpec,
    ct_normalize,
    gaussian_importance,
    pad_to,
    reorient,
    reorient_spacing,
    resample,
    segment_ct,
    sliding_window_argmax,
    window_starts,
)
from engine.errors import ErrorCode, MedVisionError

CLASSES = 5


class NearestClass:
    """Logits ``-(v - c)^2`` for classes c = 0..4: argmax is the class nearest the voxel value."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        patch = feeds["image"]
        self.calls.append(patch.shape)
        classes = np.arange(CLASSES, dtype=np.float32).reshape(1, CLASSES, 1, 1, 1)
        return [-((patch - classes) ** 2)]


def spec(patch=(16, 16, 16), spacing=(2.0, 2.0, 2.0), orientation="RAS") -> dict:
    return {"id": "tiny-fp32", "precision": "fp32", "trained": False, "sha256": "0" * 64,
            "labels": ["background", "a", "b", "c", "d"],
            "input": {"name": "image", "patch_size": list(patch), "spacing_mm": list(spacing), "divisor": [8, 8, 8],
                      "transpose_forward": [0, 1, 2], "orientation": orientation,
                      "normalization": {"scheme": "CTNormalization", "mean": 0.0, "std": 1.0,
                                        "percentile_00_5": -1.0, "percentile_99_5": 10.0}}}


def test_window_starts_follow_nnunet():
    # nnU-Net's own example: image 110, patch 64, step 0.5 -> starts 0, 23, 46.
    assert window_starts((110, 64, 65), (64, 64, 64), 0.5) == [[0, 23, 46], [0], [0, 1]]
    assert window_starts((128,), (128,)) == [[0]]
    with pytest.raises(ValueError):
        window_starts((10,), (16,))


def test_gaussian_importance_map():
    weights = gaussian_importance((16, 16, 24))
    assert weights.shape == (16, 16, 24) and weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0) and weights[8, 8, 12] == pytest.approx(1.0)
    assert weights.min() > 0
    np.testing.assert_allclose(weights, weights[::-1, :, :][np.r_[15, 0:15]], rtol=0, atol=1e-7)  # symmetric about 8
    # sigma is 1/8 of the patch: 2 voxels along z -> exp(-0.5 * (4/2)^2) of the peak 4 voxels away
    assert weights[12, 8, 12] / weights[8, 8, 12] == pytest.approx(np.exp(-2.0), rel=0.02)


def test_sliding_window_equals_the_pointwise_answer():
    rng = np.random.default_rng(1)
    image = rng.uniform(-0.4, 4.4, size=(37, 20, 29)).astype(np.float32)
    model = NearestClass()
    labels, windows = sliding_window_argmax(model, image, (16, 16, 16), CLASSES)
    assert labels.shape == image.shape
    np.testing.assert_array_equal(labels, np.clip(np.round(image), 0, CLASSES - 1).astype(np.uint8))
    assert windows == 4 * 2 * 3 == len(model.calls)
    assert set(model.calls) == {(1, 1, 16, 16, 16)}


def test_small_volume_is_padded_and_cropped_back():
    image = np.full((5, 9, 3), 2.2, dtype=np.float32)
    labels, windows = sliding_window_argmax(NearestClass(), image, (16, 16, 16), CLASSES)
    assert windows == 1 and labels.shape == (5, 9, 3) and (labels == 2).all()
    padded, unpad = pad_to(image, (16, 16, 16))
    assert padded.shape == (16, 16, 16) and (padded[unpad] == image).all()


def test_reorient_lps_to_ras_flips_x_and_y():
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    ras = reorient(volume, "LPS", "RAS")
    np.testing.assert_array_equal(ras, volume[:, ::-1, ::-1])
    np.testing.assert_array_equal(reorient(ras, "RAS", "LPS"), volume)
    # a sagittal stack (x index -> posterior, y -> inferior, z -> left) laid out as RAS
    sag = reorient(volume, "PIL", "RAS")
    assert sag.shape == (3, 4, 2)
    assert reorient_spacing((1.0, 2.0, 3.0), "PIL", "RAS") == (2.0, 3.0, 1.0)
    np.testing.assert_array_equal(reorient(sag, "RAS", "PIL"), volume)
    with pytest.raises(MedVisionError) as err:
        reorient(volume, "LLS", "RAS")
    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_resample_nearest_keeps_labels_and_exact_shape():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[2:5, 3:7, 4:9] = 3
    up = resample(labels, (21, 19, 20), order=0)
    assert up.shape == (21, 19, 20) and set(np.unique(up)) == {0, 3}
    assert resample(up, (10, 10, 10), order=0).shape == (10, 10, 10)
    smooth = resample(np.ones((7, 9, 11), dtype=np.float32), (13, 4, 22), order=3)
    assert smooth.shape == (13, 4, 22)
    np.testing.assert_allclose(smooth, 1.0, atol=1e-5)


def test_ct_normalization():
    out = ct_normalize(np.array([-2000.0, 0.0, 50.0, 5000.0]), (-1000.0, 1000.0), 100.0, 200.0)
    np.testing.assert_allclose(out, [-5.5, -0.5, -0.25, 4.5])
    assert out.dtype == np.float32


def test_segment_ct_resamples_reorients_and_measures():
    rng = np.random.default_rng(2)
    # 1 mm in-plane, 2 mm slices, LPS axes; the model works at 2 mm in RAS.
    hu = rng.uniform(-0.4, 4.4, size=(20, 30, 40)).astype(np.float32)
    hu[:, :, :20] = 3.0  # a block of class 3 on the patient's right (low x in LPS)
    model = NearestClass()
    result = segment_ct(hu, (2.0, 1.0, 1.0), model=model, spec=spec(), orientation="LPS")
    assert result.label_map.shape == hu.shape
    assert (result.label_map[:, :, :12] == 3).all()  # away from the block edge (cubic resampling)
    assert result.network_shape == (20, 15, 20)
    assert result.trained is False and result.banner and result.backend == "onnxruntime-fp32"
    found = {s.name: s for s in result.structures}
    assert found["c"].voxels == int((result.label_map == 3).sum())
    assert found["c"].volume_ml == pytest.approx(found["c"].voxels * 2.0 / 1000, abs=1e-3)
    assert result.mask("c").sum() == found["c"].voxels and result.mask(3).dtype == bool
    assert set(result.masks()) == set(found)
    summary = result.to_dict()
    assert summary["model"]["id"] == "tiny-fp32" and summary["model_trained"] is False
    assert sum(s["voxels"] for s in summary["structures"]) == int((result.label_map > 0).sum())


@pytest.mark.parametrize(("hu", "spacing", "code"), [
    (np.zeros((4, 4)), (1, 1, 1), ErrorCode.INVALID_IMAGE),
    (np.full((4, 4, 4), np.nan), (1, 1, 1), ErrorCode.INVALID_IMAGE),
    (np.zeros((4, 4, 4)), (1, 0, 1), ErrorCode.INVALID_ARGUMENT),
    (np.zeros((4, 4, 4)), (1, 1), ErrorCode.INVALID_ARGUMENT),
])
def test_bad_input_is_refused(hu, spacing, code):
    with pytest.raises(MedVisionError) as err:
        segment_ct(hu, spacing, model=NearestClass(), spec=spec())
    assert err.value.code is code


def test_huge_volume_refused_before_allocating():
    # 0.5 mm voxels of a 1000^3-voxel-at-2mm grid: refused from the shape alone.
    hu = np.zeros((4, 4, 4), dtype=np.float32)
    with pytest.raises(MedVisionError) as err:
        segment_ct(hu, (2000.0, 2000.0, 2000.0), model=NearestClass(), spec=spec())
    assert err.value.code is ErrorCode.IMAGE_TOO_LARGE


def test_malformed_manifest_entry():
    bad = spec()
    bad["input"]["normalization"]["scheme"] = "ZScoreNormalization"
    with pytest.raises(MedVisionError) as err:
        UNetSpec.from_manifest(bad)
    assert err.value.code is ErrorCode.MODEL_LOAD_ERROR
    odd = spec(patch=(12, 16, 16))
    with pytest.raises(MedVisionError):
        UNetSpec.from_manifest(odd)
