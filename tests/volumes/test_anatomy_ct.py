"""Classical anatomy segmentation on the shared real CT, scored against its reference masks.

The shared CT (122 x 101 x 112 voxels of 3 mm, abdomen and pelvis up to the lung bases) comes
with TotalSegmentator masks: a reference, not ground truth. Dice per structure, measured
on this branch (floors below are those figures minus a small margin):

| structure  | reference                                   | Dice 3 mm | Dice coarse path |
| lung_left  | lung_upper_lobe_left + lung_lower_lobe_left | 0.954     | 0.953            |
| lung_right | the three right lobes                       | 0.969     | 0.968            |
| bone       | vertebrae, ribs, sacrum, hips, femurs       | 0.819     | 0.830            |
| airways    | trachea: empty (the scan starts below it)   | unscored  | unscored         |
| body       | none exists                                 | unscored: the reference's bones, lungs, big organs and muscles lie inside it |

The airway reference ``lung_trachea_bronchia`` holds only segmental bronchi inside the lung
bases (495 voxels): the method, which starts at the trachea, finds none of them (Dice 0),
and says that no trachea was found. The "coarse path" is the same CT repeated 3x in-plane
(1 mm pixels), which the method pools 2 x 2 before labelling and refines at full size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.analysis.volume.anatomy import METHOD, segment_anatomy
from engine.errors import ErrorCode, MedVisionError
from tests.volumes.ct_reference import bone_names, dice, load_ct, load_mask

FLOORS = {"lung_left": 0.93, "lung_right": 0.95, "bone": 0.80}
REFERENCES = {"lung_left": ["lung_upper_lobe_left", "lung_lower_lobe_left"],
              "lung_right": ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"],
              "airways": ["trachea"]}
SOFT_TISSUE = ["autochthon_left", "autochthon_right", "gluteus_maximus_left", "gluteus_maximus_right",
               "iliopsoas_left", "iliopsoas_right", "liver", "spleen", "colon", "small_bowel", "urinary_bladder"]


@pytest.fixture(scope="module")
def ct(shared_ct_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_ct(shared_ct_dir / "example_ct.nii.gz")


@pytest.fixture(scope="module")
def references(shared_ct_dir: Path) -> dict[str, np.ndarray]:
    seg = shared_ct_dir / "example_ct_seg"
    out = {name: load_mask(seg, names) for name, names in REFERENCES.items()}
    out["bone"] = load_mask(seg, bone_names(seg))
    out["bronchia"] = load_mask(seg, ["lung_trachea_bronchia"])
    # Organs and muscles out to the body wall (loading all 107 masks would double the setup time).
    soft = load_mask(seg, SOFT_TISSUE)
    out["all"] = soft | out["bone"] | out["lung_left"] | out["lung_right"] | out["bronchia"]
    return out


def _scores(result, references: dict[str, np.ndarray], zoom: int = 1) -> dict[str, float | None]:  # noqa: ANN001
    def up(mask: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(mask, zoom, axis=1), zoom, axis=2) if zoom > 1 else mask
    return {name: dice(result.mask(name), up(references[name])) for name in ("lung_left", "lung_right", "bone",
                                                                              "airways")}


def test_dice_against_the_reference_per_structure(ct, references) -> None:  # noqa: ANN001
    hu, affine = ct
    result = segment_anatomy(hu, affine)
    scores = _scores(result, references)
    table = "\n".join(f"  {name:<10} Dice {'unscored' if score is None else f'{score:.3f}'}"
                      for name, score in scores.items())
    print(f"\nclassical anatomy on the shared CT ({result.elapsed_s:.2f} s):\n{table}")  # noqa: T201 - the issue's table
    for name, floor in FLOORS.items():
        assert scores[name] >= floor, (name, scores[name])
    # No trachea in this scan: nothing found, and said so; the reference's trachea is empty too.
    assert scores["airways"] is None
    airways = next(s for s in result.structures if s.name == "airways")
    assert not airways.found and "trachea" in airways.note
    assert dice(result.mask("airways"), references["bronchia"]) == 0.0
    # Body: no reference; the reference's bones, lungs, organs and muscles out to the body wall
    # lie inside it, the air around does not.
    body = result.mask("body")
    assert (references["all"] & body).sum() / references["all"].sum() > 0.995
    assert not body[:, 0, 0].any() and not body[:, -1, -1].any()
    summary = result.to_dict()
    assert summary["method"] == METHOD == "classical_hu_connectivity"
    assert {s["name"] for s in summary["structures"]} == {"body", "bone", "lung_left", "lung_right", "airways"}


def test_left_and_right_follow_the_affine_not_the_array(ct, references) -> None:  # noqa: ANN001
    hu, affine = ct
    columns = hu.shape[2]
    # The same patient stored with the columns reversed: the affine says so, the sides must not swap.
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, columns - 1
    result = segment_anatomy(hu[:, :, ::-1].copy(), affine @ flip, structures=("lungs",))
    for side in ("lung_left", "lung_right"):
        assert dice(result.mask(side), references[side][:, :, ::-1]) >= FLOORS[side]
    assert result.names == ("lung_left", "lung_right")


def test_the_coarse_path_scores_the_same(ct, references) -> None:  # noqa: ANN001
    hu, affine = ct
    big = np.repeat(np.repeat(hu, 3, axis=1), 3, axis=2)
    result = segment_anatomy(big, affine @ np.diag([1 / 3, 1 / 3, 1.0, 1.0]), structures="lungs,bone,airways")
    assert result.grid_factors == (1, 2, 2)
    scores = _scores(result, references, zoom=3)
    for name, floor in FLOORS.items():
        assert scores[name] >= floor, (name, scores[name])


def test_bad_arguments_are_invalid_argument(ct) -> None:  # noqa: ANN001
    hu, affine = ct
    for args in [(hu[0], affine), (hu, np.eye(3)), (hu, np.zeros((4, 4)))]:
        with pytest.raises(MedVisionError) as caught:
            segment_anatomy(*args)
        assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(MedVisionError) as caught:
        segment_anatomy(hu, affine, structures=("heart",))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(MedVisionError):
        segment_anatomy(hu[:, :40, :40], affine, structures=("bone",)).mask("body")
