"""Write a CT volume (by default the shared example_ct.nii.gz) as a DICOM CT series, good or broken.

One CT Image Storage instance per slice (Explicit VR Little Endian, 16-bit unsigned with a
Rescale Intercept), ImagePositionPatient / ImageOrientationPatient / PixelSpacing from the
NIfTI affine (RAS turned into DICOM's LPS). File names, InstanceNumber and SliceLocation
are shuffled or reversed, and SliceThickness / SpacingBetweenSlices are wrong on purpose,
so that sorting or spacing by any of them gives a wrong volume. Switches add one kind of
bad input each (see :func:`write_ct_series`). Nothing is written into the repository.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

SHARED_CT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct"
EXAMPLE_CT = SHARED_CT / "example_ct.nii.gz"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
WRONG_THICKNESS_MM = 5.0  # SliceThickness and SpacingBetweenSlices written (the real spacing differs)


@lru_cache(maxsize=1)
def example_ct() -> tuple[np.ndarray, np.ndarray]:
    """The shared example CT: HU indexed [i, j, k] (int32) and its RAS affine."""
    import nibabel as nib

    image = nib.load(EXAMPLE_CT)
    return np.asarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


def sub_volume(first: int, stop: int, volume: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Slices ``first..stop-1`` (k) of a volume, with the affine moved to the new first slice."""
    data, affine = volume if volume is not None else example_ct()
    moved = affine.copy()
    moved[:3, 3] += first * affine[:3, 2]
    return data[:, :, first:stop], moved


def expected_lps(volume: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What a correct assembly of the written series gives: voxels (z, y, x) float32 and the LPS affine."""
    data, affine = volume if volume is not None else example_ct()
    return np.asarray(data, dtype=np.float32).transpose(2, 1, 0), RAS_TO_LPS @ affine


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=[str(seed), *(str(p) for p in parts)])


def _rotate_about_x(vector: np.ndarray, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([vector[0], c * vector[1] - s * vector[2], s * vector[1] + c * vector[2]])


def _template(seed: int, *, intercept: float, orientation: np.ndarray, pixel_spacing: tuple[float, float],
              shape: tuple[int, int]) -> Dataset:
    """The header every slice shares; :func:`_slice` sets what differs (built once: writing 2,000 slices
    is then mostly the file writes)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(seed, "study"), _uid(seed, "series")
    ds.FrameOfReferenceUID = _uid(seed, "frame-of-reference")
    ds.PatientName, ds.PatientID, ds.Modality = "Volume^Test", "VOL-1", "CT"
    ds.SeriesDescription, ds.SeriesNumber, ds.AcquisitionNumber = "example_ct as DICOM", 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation.ravel()]
    ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    ds.SliceThickness = ds.SpacingBetweenSlices = WRONG_THICKNESS_MM
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{intercept:g}", 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    return ds


def _slice(template: Dataset, seed: int, name: str, *, stored: np.ndarray, position: np.ndarray,
           instance: int) -> Dataset:
    ds = template.copy()  # shallow: the shared elements are not written to
    ds.file_meta = template.file_meta.copy()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, "sop", name)
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.SliceLocation = f"{-float(position[2]):.6f}"  # reversed: sorting by it would turn the volume over
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds


def write_ct_series(folder: str | Path, *, volume: tuple[np.ndarray, np.ndarray] | None = None,
                    drop_slice: int | None = None, duplicate_slice: int | None = None,
                    other_orientation: bool = False, other_size: bool = False, localizer: bool = False,
                    gantry_tilt_deg: float = 0.0, corrupt_slice: int | None = None, seed: int = 0) -> list[Path]:
    """Write ``volume`` (HU indexed [i, j, k], RAS affine; default :func:`example_ct`) as a CT series.

    Bad input, one switch each:

    - ``drop_slice=k``: slice k is not written (a slice missing from the middle);
    - ``duplicate_slice=k``: a second instance at slice k's position (another UID);
    - ``other_orientation``: one extra sagittal slice of the same size;
    - ``other_size``: one extra slice at the middle position, half the rows and columns;
    - ``localizer``: one extra coronal slice with ImageType ORIGINAL/PRIMARY/LOCALIZER;
    - ``gantry_tilt_deg``: the image plane tilted about the left-right axis while the
      positions still step along the table (sheared positions + tilted orientation);
    - ``corrupt_slice=k``: slice k's Pixel Data truncated to half its length.

    Returns the written files (names shuffled).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data, affine_ras = volume if volume is not None else example_ct()
    affine = RAS_TO_LPS @ affine_ras
    ni, nj, nk = data.shape
    column_spacing, row_spacing = (float(np.linalg.norm(affine[:3, a])) for a in (0, 1))
    row_dir, column_dir = affine[:3, 0] / column_spacing, affine[:3, 1] / row_spacing
    if gantry_tilt_deg:
        row_dir, column_dir = _rotate_about_x(row_dir, gantry_tilt_deg), _rotate_about_x(column_dir, gantry_tilt_deg)
    orientation = np.stack([row_dir, column_dir])
    intercept = float(min(-1024, math.floor(float(data.min()))))
    rng = np.random.default_rng(seed)

    slices: list[dict] = []
    for k in range(nk):
        if k == drop_slice:
            continue
        stored = (np.asarray(data[:, :, k]).T - intercept).astype(np.uint16)  # rows = j, columns = i
        entry = {"stored": stored, "position": affine @ np.array([0.0, 0.0, k, 1.0]), "k": k}
        slices.append(entry)
        if k == duplicate_slice:
            slices.append({**entry, "k": f"{k}-again"})
    middle = slices[len(slices) // 2]
    if other_orientation:
        slices.append({"stored": middle["stored"], "position": middle["position"], "k": "sagittal",
                       "orientation": np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])})
    if other_size:
        slices.append({"stored": middle["stored"][::2, ::2], "position": middle["position"], "k": "small",
                       "spacing": (row_spacing * 2, column_spacing * 2)})
    if localizer:
        slices.append({"stored": np.zeros((128, 96), np.uint16), "position": middle["position"], "k": "localizer",
                       "orientation": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]),
                       "image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")})
    names = rng.permutation(len(slices))
    instances = rng.permutation(len(slices)) + 1
    template = _template(seed, intercept=intercept, orientation=orientation,
                         pixel_spacing=(row_spacing, column_spacing), shape=(nj, ni))
    paths = []
    for index, entry in enumerate(slices):
        name = f"IM{names[index]:05d}"
        ds = _slice(template, seed, name, stored=entry["stored"], position=entry["position"][:3],
                    instance=int(instances[index]))
        if "orientation" in entry:
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in entry["orientation"].ravel()]
        if "spacing" in entry:
            ds.PixelSpacing = [f"{v:.6f}" for v in entry["spacing"]]
        if "image_type" in entry:
            ds.ImageType = list(entry["image_type"])
        if entry["k"] == corrupt_slice:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        path = folder / name
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
