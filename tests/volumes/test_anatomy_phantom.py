"""Airways, lungs and sides on a synthetic chest whose answer is known voxel by voxel.

The shared CT starts below the trachea, so the airway method is checked here: a body
(40 HU) holding two lungs (-850 HU, with vessels) and an air-filled trachea (-1000 HU)
that runs down from the top slice and splits into two main bronchi ending in the lungs.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.analysis.volume.anatomy import segment_anatomy
from tests.volumes.ct_reference import dice

SHAPE = (60, 100, 120)          # z, y, x; 2.5 mm slices, 2 mm pixels
LUNG_CENTRES_X = (35, 85)       # array columns


def _phantom(lung_hu: float = -850.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    body = ((y - 50) / 40.0) ** 2 + ((x - 60) / 50.0) ** 2 <= 1.0
    hu[np.broadcast_to(body, SHAPE)] = 40.0
    lungs = [((z - 25) / 18.0) ** 2 + ((y - 50) / 25.0) ** 2 + ((x - cx) / 18.0) ** 2 <= 1.0 for cx in LUNG_CENTRES_X]
    for lung in lungs:
        hu[lung] = lung_hu
    rng = np.random.default_rng(7)
    vessels = np.zeros(SHAPE, dtype=bool)
    vessels[tuple(rng.integers(0, n, 400) for n in SHAPE)] = True
    hu[vessels & (lungs[0] | lungs[1])] = 40.0
    trachea = np.broadcast_to(((y - 45) ** 2 + (x - 60) ** 2 <= 25) & (z >= 44), SHAPE)
    bronchi = np.zeros(SHAPE, dtype=bool)
    bronchi[43:47, 43:48, LUNG_CENTRES_X[0]:61] = True
    bronchi[43:47, 43:48, 60:LUNG_CENTRES_X[1] + 1] = True
    airways = trachea | bronchi
    hu[airways] = -1000.0
    truth = {"airways": airways, "low_x_lung": lungs[0] & ~airways, "high_x_lung": lungs[1] & ~airways}
    return hu, truth


def _affine(columns_run_to_the_patients_left: bool) -> np.ndarray:
    affine = np.diag([2.0, 2.0, 2.5, 1.0])         # LPS: +x is the patient's left, +z superior
    if not columns_run_to_the_patients_left:
        affine[0, 0], affine[0, 3] = -2.0, 2.0 * (SHAPE[2] - 1)
    return affine


@pytest.mark.parametrize("columns_run_left", [True, False])
def test_trachea_bronchi_and_sided_lungs(columns_run_left: bool) -> None:
    hu, truth = _phantom()
    result = segment_anatomy(hu, _affine(columns_run_left), structures=("lungs", "airways"))
    airways = result.mask("airways")
    assert (airways == truth["airways"]).all()
    left, right = ("high_x_lung", "low_x_lung") if columns_run_left else ("low_x_lung", "high_x_lung")
    assert dice(result.mask("lung_left"), truth[left]) > 0.97
    assert dice(result.mask("lung_right"), truth[right]) > 0.97
    assert not (result.mask("lung_left") & airways).any()
    found = {s.name: s for s in result.structures}
    assert found["airways"].found and found["airways"].volume_ml == pytest.approx(truth["airways"].sum() * 0.01)


def test_a_grow_that_floods_the_lungs_falls_back_to_the_tighter_threshold() -> None:
    # Emphysema-like lungs at -960 HU: the -950 grow floods them; the leak check keeps the -975 result.
    hu, truth = _phantom(lung_hu=-960.0)
    result = segment_anatomy(hu, _affine(True), structures=("airways",))
    assert (result.mask("airways") == truth["airways"]).all()
    assert "leaked" in result.structures[0].note


def test_no_air_tube_no_airways_and_it_says_so() -> None:
    hu, truth = _phantom()
    hu[truth["airways"]] = 40.0        # no trachea or bronchi (a scan below the thoracic inlet)
    result = segment_anatomy(hu, _affine(True), structures=("airways", "lungs"))
    found = {s.name: s for s in result.structures}
    assert not found["airways"].found and not result.mask("airways").any()
    assert "no trachea" in found["airways"].note
    assert found["lung_left"].found and found["lung_right"].found


def test_a_coronal_stack_does_not_guess_a_trachea_and_nan_is_refused() -> None:
    from engine.errors import ErrorCode, MedVisionError

    hu, _ = _phantom()
    coronal = np.array([[2.0, 0, 0, 0], [0, 0, 2.5, 0], [0, -2.0, 0, 0], [0, 0, 0, 1]])
    result = segment_anatomy(hu, coronal, structures=("airways",))
    assert not result.mask("airways").any() and "axial" in result.structures[0].note
    hu[3, 3, 3] = np.nan
    with pytest.raises(MedVisionError) as caught:
        segment_anatomy(hu, _affine(True))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


def test_the_coarse_path_finds_the_same_airways_and_lungs() -> None:
    hu, truth = _phantom()

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, 2, axis=1), 2, axis=2)

    # 1 mm pixels: the method pools 2 x 2 in-plane, labels there and refines at full size.
    result = segment_anatomy(up(hu), _affine(True) @ np.diag([0.5, 0.5, 1.0, 1.0]), structures=("lungs", "airways"))
    assert result.grid_factors == (1, 2, 2)
    assert dice(result.mask("airways"), up(truth["airways"])) > 0.99
    assert dice(result.mask("lung_left"), up(truth["high_x_lung"])) > 0.97
    assert dice(result.mask("lung_right"), up(truth["low_x_lung"])) > 0.97


def test_an_airway_open_to_the_room_keeps_the_lungs() -> None:
    hu, truth = _phantom()
    # The trachea opens through the body wall above z 47 (a mouth, or a tube): only a 7.5 mm
    # stub stays enclosed, joined to the bronchi, so no airway is found; the lungs still
    # must not be taken for the room's air they now connect to.
    hu[47:, 0:46, 58:63] = -1000.0
    result = segment_anatomy(hu, _affine(True), structures=("lungs", "airways"))
    found = {s.name: s for s in result.structures}
    assert not found["airways"].found
    assert dice(result.mask("lung_left"), truth["high_x_lung"]) > 0.95
    assert dice(result.mask("lung_right"), truth["low_x_lung"]) > 0.95


def test_a_single_slice_still_has_a_body_and_lungs() -> None:
    hu, truth = _phantom()
    result = segment_anatomy(hu[25:26].copy(), _affine(True), structures=("body", "lungs"))
    found = {s.name: s for s in result.structures}
    assert found["body"].found and found["lung_left"].found and found["lung_right"].found
    assert dice(result.mask("lung_left"), truth["high_x_lung"][25:26]) > 0.95
