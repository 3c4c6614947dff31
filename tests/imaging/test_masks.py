"""RLE round trips exactly and rejects malformed input."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.masks import decode_rle, encode_rle, mask_bbox


@pytest.mark.parametrize("seed", range(5))
def test_round_trip(seed: int) -> None:
    mask = np.random.default_rng(seed).random((37, 53)) > 0.6
    rle = encode_rle(mask)
    assert rle["size"] == [37, 53] and sum(rle["counts"]) == 37 * 53
    assert (decode_rle(rle) == mask).all()


def test_edges_and_bbox() -> None:
    full, empty = np.ones((4, 5), bool), np.zeros((4, 5), bool)
    assert encode_rle(full)["counts"] == [0, 20] and (decode_rle(encode_rle(full)) == full).all()
    assert encode_rle(empty)["counts"] == [20] and mask_bbox(empty) is None
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:8] = True
    assert mask_bbox(mask) == [3, 2, 7, 4]


@pytest.mark.parametrize("bad", [{"size": [2, 2], "counts": [1, 1]}, {"size": [2, 2]}, {"size": [2, 2], "counts": [5, -1]}])
def test_malformed_rle(bad: dict) -> None:
    with pytest.raises(MedVisionError) as err:
        decode_rle(bad)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT
