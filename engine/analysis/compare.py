"""Current against prior: register a prior radiograph onto the current one, the difference,
and the change in findings and measurements between the two studies' analyses.

Registration (:func:`register_radiographs`) estimates a similarity transform (rotation,
isotropic scale, translation), then refines it to a full affine:

1. both images are normalised (1st..99th percentile), shrunk so the longer side is
   :data:`WORK_SIDE` pixels and padded into the same square;
2. rotation and scale from the Fourier-Mellin method: the magnitude of each image's
   spectrum (band-passed, Hann-windowed) does not depend on translation, and in log-polar
   coordinates a rotation and a scale become a shift, which phase correlation finds
   (scikit-image ``warp_polar`` + ``phase_cross_correlation``); both 180-degree
   readings of the spectrum are tried and the better one kept;
3. translation by phase correlation of the rotated and scaled prior against the current;
4. refinement of all six affine parameters by maximising the normalised cross-correlation
   over the overlap (Powell, on a coarser grid), which is what ECC does with another
   optimiser; the refinement is kept only when it raises the correlation.

Phase correlation is robust to the brightness and contrast changes between two
acquisitions; the correlation before and after, and the overlap, are returned so a
caller can see a failed registration (a low ``ncc_after``) rather than trust it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage, optimize
from skimage.registration import phase_cross_correlation
from skimage.transform import AffineTransform, resize, warp, warp_polar

#: The working grid's longer side (pixels) for the similarity estimate, and for the refinement.
WORK_SIDE = 512
REFINE_SIDE = 256
METHOD = "fourier_mellin_phase_correlation+ncc_affine_refinement"
#: Below this correlation after registration, the alignment is flagged as doubtful.
GOOD_NCC = 0.5


def normalised(values: np.ndarray, invert: bool = False) -> np.ndarray:
    """A 2D image as float32 in 0..1 (1st..99th percentile), bright bone up when ``invert``
    undoes MONOCHROME1; colour is averaged to grey."""
    image = np.asarray(values, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=2)
    low, high = np.percentile(image, (1, 99))
    scaled = np.clip((image - low) / max(float(high - low), 1e-6), 0, 1)
    return (1.0 - scaled if invert else scaled).astype(np.float32)


def _square(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``image`` shrunk so its longer side is ``side``, top-left in a ``side`` square padded with
    NaN (no data: never counted as overlap); (square, factor)."""
    factor = side / max(image.shape)
    shape = (max(1, round(image.shape[0] * factor)), max(1, round(image.shape[1] * factor)))
    small = resize(image, shape, anti_aliasing=True, preserve_range=True).astype(np.float32)
    out = np.full((side, side), np.nan, dtype=np.float32)
    out[:shape[0], :shape[1]] = small
    return out, factor


def _spectrum(image: np.ndarray) -> np.ndarray:
    image = np.nan_to_num(image)
    band = ndimage.gaussian_filter(image, 1) - ndimage.gaussian_filter(image, 8)  # difference of Gaussians
    hann = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    filtered = band * hann
    return np.abs(np.fft.fftshift(np.fft.fft2(filtered)))


def _matrix(angle_deg: float, scale: float, center: tuple[float, float]) -> np.ndarray:
    """current -> prior (x, y): rotate by ``angle_deg`` and scale by ``scale`` about ``center``."""
    cx, cy = center
    a = math.radians(angle_deg)
    rot = np.array([[scale * math.cos(a), -scale * math.sin(a), 0], [scale * math.sin(a), scale * math.cos(a), 0],
                    [0, 0, 1]])
    to_center = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    back = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
    return back @ rot @ to_center


def _warped(prior: np.ndarray, current_to_prior: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The prior resampled on the current's grid, and where it had data."""
    aligned = warp(prior, AffineTransform(matrix=current_to_prior), output_shape=shape, order=1, cval=np.nan,
                   preserve_range=True)
    valid = np.isfinite(aligned)
    return np.nan_to_num(aligned, nan=0.0).astype(np.float32), valid


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two images over ``mask`` (-1..1; 0 when flat or empty)."""
    finite = np.isfinite(a) & np.isfinite(b)  # padding (NaN) never counts
    keep = finite if mask is None else finite & mask
    a, b = a[keep], b[keep]
    if a.size < 16:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _score(current: np.ndarray, prior: np.ndarray, matrix: np.ndarray, content: np.ndarray) -> float:
    """Correlation over the overlap of the current's content and the prior's grid (-1 when under
    half the content overlaps: shrinking the overlap must not pay)."""
    aligned, valid = _warped(prior, matrix, current.shape)
    mask = valid & content
    return ncc(current, aligned, mask) if mask.sum() >= 0.5 * content.sum() else -1.0


def _similarity(current: np.ndarray, prior: np.ndarray, content: np.ndarray) -> tuple[np.ndarray, dict]:
    """Fourier-Mellin rotation and scale, then phase-correlation translation (working grid)."""
    side = current.shape[0]
    radius = side // 8  # the lower frequencies carry the anatomy; the rest is noise
    polar = [warp_polar(_spectrum(image), radius=radius, output_shape=(360, side), scaling="log", order=0)[:180]
             for image in (current, prior)]
    shifts, _error, _phase = phase_cross_correlation(polar[0], polar[1], upsample_factor=10, normalization=None)
    klog = side / math.log(radius)
    scale = math.exp(shifts[1] / klog)  # prior features are `scale` times the current's
    center = ((side - 1) / 2, (side - 1) / 2)
    best: tuple[float, np.ndarray, dict] | None = None
    for angle in (-float(shifts[0]), 180.0 - float(shifts[0])):
        angle = (angle + 180.0) % 360.0 - 180.0
        rotated = _matrix(angle, scale, center)
        # the prior brought to the current's rotation and scale; the rest is a translation
        unrotated, _valid = _warped(prior, rotated, current.shape)
        offset, _error, _phase = phase_cross_correlation(np.nan_to_num(current), unrotated, upsample_factor=10,
                                                         normalization=None)
        translate = np.array([[1, 0, -offset[1]], [0, 1, -offset[0]], [0, 0, 1]])
        matrix = rotated @ translate
        score = _score(current, prior, matrix, content)
        if best is None or score > best[0]:
            best = (score, matrix, {"rotation_deg": angle, "scale": scale})
    assert best is not None
    return best[1], best[2]


def _refine(current: np.ndarray, prior: np.ndarray, matrix: np.ndarray, content: np.ndarray,
            factor: float) -> np.ndarray:
    """The similarity (rotation, scale, translation) refined for the best correlation, on a grid
    ``factor`` times the working one."""
    small = [resize(image, (REFINE_SIDE, REFINE_SIDE), order=1, anti_aliasing=False, preserve_range=True)
             for image in (current, prior)]
    small_content = resize(content.astype(np.float32), (REFINE_SIDE, REFINE_SIDE)) > 0.5
    down = np.diag([factor, factor, 1.0])
    start = down @ matrix @ np.linalg.inv(down)
    center = ((REFINE_SIDE - 1) / 2, (REFINE_SIDE - 1) / 2)

    def step(params: np.ndarray) -> np.ndarray:  # degrees, percent of scale, pixels, pixels
        m = _matrix(params[0], 1.0 + params[1] / 100, center)
        m[:2, 2] += params[2:]
        return start @ m

    def cost(params: np.ndarray) -> float:
        return -_score(small[0], small[1], step(params), small_content)

    found = optimize.minimize(cost, np.zeros(4), method="Powell",
                              options={"xtol": 1e-2, "ftol": 1e-5, "maxfev": 400})
    return np.linalg.inv(down) @ step(found.x) @ down


def decompose(matrix: np.ndarray) -> dict[str, float]:
    """Rotation (degrees), scales, shear and translation of a current -> prior affine (x, y)."""
    transform = AffineTransform(matrix=matrix)
    sx, sy = (float(s) for s in transform.scale)
    return {"rotation_deg": round(math.degrees(float(transform.rotation)), 3), "scale_x": round(sx, 4),
            "scale_y": round(sy, 4), "scale": round(math.sqrt(abs(sx * sy)), 4),
            "shear_deg": round(math.degrees(float(transform.shear)), 3),
            "translation_px": [round(float(matrix[0, 2]), 2), round(float(matrix[1, 2]), 2)]}


def register_radiographs(current: np.ndarray, prior: np.ndarray, *, refine: bool = True) -> dict[str, Any]:
    """Align ``prior`` onto ``current`` (both 2D, any intensities; see :func:`normalised`).

    Returns ``matrix`` (3x3, current pixel (x, y) -> prior pixel (x, y), full resolution),
    its ``transform`` parts, ``aligned`` (the prior on the current's grid, 0..1), ``valid``
    (where the prior had data), ``difference`` (current minus the aligned prior after a
    least-squares gain and offset, 0 outside ``valid``) and ``quality`` (the correlation
    before and after, the overlap, whether it looks good)."""
    current = normalised(current) if current.dtype != np.float32 or current.max() > 1 else current
    prior = normalised(prior) if prior.dtype != np.float32 or prior.max() > 1 else prior
    work_current, f_current = _square(current, WORK_SIDE)
    work_prior, f_prior = _square(prior, WORK_SIDE)
    content = ndimage.binary_erosion(np.isfinite(work_current), iterations=4)

    work, similarity = _similarity(work_current, work_prior, content)
    similarity_ncc = _score(work_current, work_prior, work, content)
    refined = False
    if refine:
        candidate = _refine(work_current, work_prior, work, content, REFINE_SIDE / WORK_SIDE)
        if _score(work_current, work_prior, candidate, content) > similarity_ncc:
            work, refined = candidate, True
    # full resolution: current px -> working current -> working prior -> prior px
    full = np.diag([1 / f_prior, 1 / f_prior, 1]) @ work @ np.diag([f_current, f_current, 1])
    aligned, valid = _warped(prior, full, current.shape)
    before_shape = tuple(min(a, b) for a, b in zip(current.shape, prior.shape, strict=True))
    before = ncc(current[:before_shape[0], :before_shape[1]], prior[:before_shape[0], :before_shape[1]])
    after = ncc(current, aligned, valid)
    difference = np.zeros_like(current)
    if valid.any():
        x, y = aligned[valid].astype(np.float64), current[valid].astype(np.float64)
        gain = float(((x - x.mean()) * (y - y.mean())).mean() / max(float(x.var()), 1e-12))
        offset = float(y.mean() - gain * x.mean())
        difference[valid] = current[valid] - (gain * aligned[valid] + offset)
    return {
        "method": METHOD,
        "matrix": full,
        "transform": decompose(full),
        "similarity_estimate": {k: round(v, 4) for k, v in similarity.items()},
        "refined": refined,
        "aligned": aligned,
        "valid": valid,
        "difference": difference,
        "quality": {"ncc_before": round(before, 4), "ncc_after": round(after, 4),
                    "overlap": round(float(valid.mean()), 4), "good": bool(after >= GOOD_NCC)},
    }


# -- findings and measurements ---------------------------------------------------------------
def _model_name(model: dict | None) -> str | None:
    if not model:
        return None
    return model.get("id") or model.get("name")


def compare_findings(current: dict | None, prior: dict | None) -> dict[str, Any]:
    """Per label: the current and prior probability, the change, both thresholds and positives,
    and the models that made each (from two ``analyze_image`` results' ``classification``)."""
    now = (current or {}).get("classification") or {}
    then = (prior or {}).get("classification") or {}
    by_label_now = {f["label"]: f for f in now.get("findings", [])}
    by_label_then = {f["label"]: f for f in then.get("findings", [])}
    rows = []
    for label in sorted(set(by_label_now) | set(by_label_then)):
        a, b = by_label_now.get(label), by_label_then.get(label)
        p_now = a["probability"] if a else None
        p_then = b["probability"] if b else None
        positive_now, positive_then = bool(a and a["positive"]), bool(b and b["positive"])
        rows.append({
            "label": label, "current_probability": p_now, "prior_probability": p_then,
            "delta": round(p_now - p_then, 6) if p_now is not None and p_then is not None else None,
            "current_threshold": a["threshold"] if a else None, "prior_threshold": b["threshold"] if b else None,
            "current_positive": positive_now, "prior_positive": positive_then,
            "change": ("new" if positive_now and not positive_then else "resolved" if positive_then and not positive_now
                       else "persistent" if positive_now else "absent"),
        })
    rows.sort(key=lambda r: abs(r["delta"] or 0.0), reverse=True)
    same_model = _model_name(now.get("model")) == _model_name(then.get("model"))
    return {
        "current_model": _model_name(now.get("model")), "prior_model": _model_name(then.get("model")),
        "current_model_trained": now.get("model_trained"), "prior_model_trained": then.get("model_trained"),
        "same_model": bool(now and then and same_model),
        "note": None if (not now or not then or same_model) else
        "the two studies were classified by different models: probabilities are not directly comparable",
        "findings": rows,
    }


def _ratio_change(now: dict, then: dict) -> dict[str, Any]:
    a = now.get("ratio") if now.get("status") == "ok" else None
    b = then.get("ratio") if then.get("status") == "ok" else None
    return {"current": a, "prior": b, "delta": round(a - b, 4) if a is not None and b is not None else None,
            "current_positive": now.get("positive"), "prior_positive": then.get("positive")}


def compare_measurements(current: dict | None, prior: dict | None) -> dict[str, Any]:
    """The cardiothoracic ratio and organ areas (cm² when calibrated, else pixels) of both studies."""
    now = (current or {}).get("segmentation") or {}
    then = (prior or {}).get("segmentation") or {}
    areas = []
    organs_now = {o["label"]: o for o in now.get("organs", [])}
    organs_then = {o["label"]: o for o in then.get("organs", [])}
    for label in sorted(set(organs_now) | set(organs_then)):
        a, b = organs_now.get(label) or {}, organs_then.get(label) or {}
        unit = "cm2" if a.get("area_cm2") is not None and b.get("area_cm2") is not None else "px"
        key = "area_cm2" if unit == "cm2" else "area_px"
        va, vb = a.get(key), b.get(key)
        areas.append({"label": label, "unit": unit, "current": va, "prior": vb,
                      "delta": round(va - vb, 3) if va is not None and vb is not None else None,
                      "ratio": round(va / vb, 4) if va is not None and vb else None})
    return {
        "current_model": _model_name(now.get("model")), "prior_model": _model_name(then.get("model")),
        "ctr": _ratio_change(now.get("ctr") or {}, then.get("ctr") or {}),
        "organ_areas": areas,
        "note": None if now and then else "organ segmentation missing on "
        + " and ".join(w for w, s in (("the current", now), ("the prior", then)) if not s) + " study",
    }


# -- volumes ---------------------------------------------------------------------------------
def corresponding_voxel(current: Any, prior: Any, voxel_xyz: Any,
                        registration: np.ndarray | None = None) -> dict[str, Any]:
    """Where voxel ``[x, y, z]`` of the ``current`` volume lies in the ``prior`` volume (both
    :class:`engine.imaging.volume.Volume`, or anything with ``affine``, ``frame_of_reference_uid``
    and ``shape_zyx``), for synchronised scrolling.

    With one Frame of Reference UID the patient coordinates are shared: current voxel ->
    LPS mm -> prior voxel. Otherwise ``registration`` (4x4, current LPS mm -> prior LPS mm)
    is needed; without it the positions cannot be related (``INVALID_ARGUMENT``)."""
    from engine.errors import ErrorCode, MedVisionError

    xyz = np.asarray(voxel_xyz, dtype=np.float64).reshape(3)
    patient = np.asarray(current.affine, dtype=np.float64) @ np.append(xyz, 1.0)
    same_frame = bool(current.frame_of_reference_uid) and \
        current.frame_of_reference_uid == prior.frame_of_reference_uid
    if same_frame:
        basis, target = "frame_of_reference", patient
    elif registration is not None:
        basis, target = "registration", np.asarray(registration, dtype=np.float64) @ patient
    else:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "the two volumes have different frames of reference and no"
                             " registration relates them: their positions cannot be synchronised")
    found = np.linalg.solve(np.asarray(prior.affine, dtype=np.float64), target)[:3]
    z, y, x = prior.shape_zyx
    inside = bool(np.all(found > -0.5) and np.all(found < np.array([x, y, z]) - 0.5))
    return {"space": "voxel", "voxel_xyz": [round(float(v), 3) for v in found],
            "patient_mm": [round(float(v), 3) for v in patient[:3]], "basis": basis, "inside": inside}
