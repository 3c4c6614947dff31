"""Volumes from a session's stored series: listed from headers, assembled from the encrypted store.

A session's DICOM images are read back through :class:`~engine.imaging.volume.SliceSource`
(each blob decrypted in memory, never written out) into the same assembler that reads files.

- :meth:`VolumeService.list_series`: every series with its stacks (geometry, slice count,
  warnings) from the headers alone: the slice record kept in each image's row at intake
  (``metadata.volume_slice``), else the object's header read from its decrypted blob (images
  the DICOM node received); the records are kept per image in memory (a few hundred bytes each).
- :meth:`VolumeService.volume`: one stack assembled, kept in a :class:`VolumeCache` bounded in
  MB (``Settings.volume_cache_mb``), least recently used out first.
- :meth:`VolumeService.volume_slice`: one slice decoded on its own (the first slice on screen
  before the rest is read), the whole stack assembled meanwhile on a background thread.
- :meth:`VolumeService.reslice`, :meth:`roi`, :meth:`segment`: planes, statistics and anatomy of
  the cached volume through :mod:`engine.analysis.volume`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.analysis.volume.anatomy import segment_anatomy
from engine.analysis.volume.annotation import structure_annotation, volume_annotation
from engine.analysis.volume.roi import roi_box_stats, roi_sphere_stats
from engine.config import DecodeLimits
from engine.errors import ErrorCode, MedVisionError
from engine.imaging.volume import SliceSource, Volume, assemble_stack
from engine.imaging.volume.assemble import (
    OpenSource,
    decode_slice,
    header_datasets,
    scan_one,
    slice_frame,
)
from engine.imaging.volume.headers import SliceHeader, header_from_record
from engine.imaging.volume.model import orientation_code
from engine.imaging.volume.planes import PLANES, plane_pixels, plane_spacing
from engine.imaging.volume.stacks import PROJECTION_MODALITIES, StackPlan, plan_stacks
from engine.services.annotations import AnnotationService
from engine.store import Store

log = logging.getLogger(__name__)
MiB = 1024 * 1024
#: Slice headers kept per process (a few hundred bytes each): enough for tens of large series.
MAX_CACHED_HEADERS = 200_000


@dataclass(frozen=True)
class CachedVolume:
    volume: Volume
    image_ids: tuple[str, ...]  # the stored images it was assembled from (a changed series is rebuilt)


class VolumeCache:
    """Assembled volumes keyed by (session, series, stack), at most ``max_bytes`` of voxels; thread-safe.

    The least recently used goes first; a volume larger than the whole budget is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, str], CachedVolume] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(item.volume.voxels.nbytes for item in self._items.values())

    def keys(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self._items)

    def get(self, key: tuple[str, str, str]) -> CachedVolume | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, str, str], item: CachedVolume) -> None:
        with self._lock:
            self._items.pop(key, None)
            if item.volume.voxels.nbytes > self.max_bytes:
                return
            self._items[key] = item
            total = sum(v.volume.voxels.nbytes for v in self._items.values())
            while total > self.max_bytes:
                _, oldest = self._items.popitem(last=False)
                total -= oldest.volume.voxels.nbytes

    def forget(self, session_id: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == session_id]:
                del self._items[key]


def _stack_id(plan: StackPlan) -> str:
    return plan.key or "main"


def _image_ids(plan: StackPlan) -> tuple[str, ...]:
    return tuple(dict.fromkeys(h.source.image_id or "" for h in plan.slices))


class VolumeService:
    """A session's series as volumes: listing, assembly from the store, slices, planes, ROI, anatomy."""

    def __init__(self, store: Store, cache: VolumeCache, limits: DecodeLimits | None = None,
                 annotations: AnnotationService | None = None) -> None:
        self.store, self.cache, self.annotations = store, cache, annotations
        self.limits = limits or DecodeLimits.from_env()
        self._headers: dict[str, tuple[list[SliceHeader], str | None]] = {}
        self._headers_lock = threading.Lock()
        self._assembling: dict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)
        self._background: set[tuple[str, str, str]] = set()
        self._session_plans: dict[str, tuple[int, list[StackPlan], list[str]]] = {}

    # -- headers and plans ---------------------------------------------------------------------
    def _candidates(self, session_id: str) -> list[dict]:
        """The session's DICOM images that may belong to a volume: a series of two or more images, or a
        multi-frame object; projection radiographs never."""
        rows = [r for r in self.store.list_images(session_id)
                if r["format"] == "dicom" and (r["modality"] or "") not in PROJECTION_MODALITIES]
        per_series: dict[str, int] = defaultdict(int)
        for row in rows:
            per_series[row["series_instance_uid"] or ""] += 1
        return [r for r in rows if per_series[r["series_instance_uid"] or ""] > 1 or (r["frame_count"] or 1) > 1]

    def _source(self, row: dict) -> SliceSource:
        blob = {"blob_id": row["blob_id"]}
        return SliceSource.stored(row["id"], row["source_name"] or "", lambda: self.store.image_bytes(blob))

    def _headers_of(self, row: dict) -> tuple[list[SliceHeader], str | None]:
        """An image's slice records (read once per process: stored images never change)."""
        with self._headers_lock:
            found = self._headers.get(row["id"])
        if found is None:
            source = self._source(row)
            kept = header_from_record(row["metadata"].get("volume_slice"), source)
            if kept is not None:
                found = ([kept], None)
            else:  # an image stored without its slice record (received by the DICOM node): read its header
                headers, warning = scan_one(source, self.limits)
                found = (headers, warning.message if warning else None)
            with self._headers_lock:
                if len(self._headers) >= MAX_CACHED_HEADERS:
                    self._headers.clear()
                self._headers[row["id"]] = found
        return found

    def _plans(self, session_id: str) -> tuple[list[StackPlan], list[str]]:
        """The session's stacks, planned again only when its images changed (images are only ever added,
        so their count tells)."""
        count = self.store.count("images", session_id)
        with self._headers_lock:
            known = self._session_plans.get(session_id)
        if known is not None and known[0] == count:
            return known[1], known[2]
        plans, notes = self._plan_session(session_id)
        with self._headers_lock:
            self._session_plans[session_id] = (count, plans, notes)
        return plans, notes

    def _plan_session(self, session_id: str) -> tuple[list[StackPlan], list[str]]:
        headers: list[SliceHeader] = []
        notes: list[str] = []
        for row in self._candidates(session_id):
            found, note = self._headers_of(row)
            headers += found
            if note:
                notes.append(note)
        if not headers:
            return [], notes
        planned = plan_stacks(headers)
        return planned.plans, notes + [exc.message for exc in planned.refused]

    def _plan(self, session_id: str, series_uid: str | None, stack: str | None) -> StackPlan:
        plans, notes = self._plans(session_id)
        if not plans:
            raise MedVisionError(ErrorCode.NOT_A_VOLUME, "the session holds no series that makes a volume"
                                 + (f" ({notes[0]})" if notes else ""), session_id=session_id, notes=notes[:20])
        if series_uid is not None:
            plans = [p for p in plans if p.first.series_uid == series_uid]
            if not plans:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"series {series_uid} is not a volume of this session",
                                     series_uid=series_uid)
        if stack is not None:
            chosen = [p for p in plans if _stack_id(p) == stack]
            if not chosen:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"no stack {stack!r} in the series; stacks: "
                                     + ", ".join(_stack_id(p) for p in plans), stack=stack)
            plans = chosen
        else:
            plans = [p for p in plans if p.main]
        if len(plans) > 1:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                                 f"the session holds {len(plans)} series; name the one to use (series_uid).",
                                 series=[{"series_uid": p.first.series_uid, "stack": _stack_id(p),
                                          "slices": len(p.slices)} for p in plans])
        return plans[0]

    # -- listing -------------------------------------------------------------------------------
    def list_series(self, session_id: str) -> dict[str, Any]:
        """Every series of the session with its stacks (geometry, slice count, warnings), without
        decoding a pixel; images that are not part of a volume are counted, series that are not a
        volume named with the reason."""
        self.store.get_session(session_id)
        plans, notes = self._plans(session_id)
        series: dict[str, dict[str, Any]] = {}
        for plan in sorted(plans, key=lambda p: not p.main):
            first = plan.first
            entry = series.setdefault(first.series_uid, {
                "series_uid": first.series_uid, "modality": first.modality,
                "series_description": first.series_description,
                "frame_of_reference_uid": first.frame_of_reference_uid, "stacks": []})
            entry["stacks"].append(self.stack_summary(plan))
        return {"session_id": session_id, "series": list(series.values()), "notes": notes}

    @staticmethod
    def stack_summary(plan: StackPlan) -> dict[str, Any]:
        """A stack's geometry from its headers: shape, spacing, orientation, affine, warnings, images."""
        frame = slice_frame(plan.slices, plan.patient_geometry)
        z_of = {h.uid: z for z, h in enumerate(plan.slices)}
        warnings = [w.resolve(z_of).to_dict() for w in plan.warnings] + [w.to_dict() for w in frame.warnings]
        z, y, x = plan.shape_zyx
        return {"stack": _stack_id(plan), "main": plan.main, "slices": z, "shape_zyx": [z, y, x],
                "spacing_zyx_mm": list(frame.spacing_zyx), "orientation": orientation_code(frame.affine),
                "affine_lps": np.asarray(frame.affine, dtype=float).tolist(),
                "patient_geometry": plan.patient_geometry, "warnings": warnings,
                "image_ids": list(_image_ids(plan)), "first_image_id": plan.first.source.image_id}

    def image_stacks(self, session_id: str) -> dict[str, dict[str, Any]]:
        """For each image in a volume stack: its ``series_uid``, ``stack`` and ``z`` (first slice)."""
        plans, _ = self._plans(session_id)
        marks: dict[str, dict[str, Any]] = {}
        for plan in plans:
            for z, header in enumerate(plan.slices):
                image_id = header.source.image_id
                if image_id and image_id not in marks:
                    marks[image_id] = {"series_uid": plan.first.series_uid, "stack": _stack_id(plan), "z": z}
        return marks

    # -- volumes -------------------------------------------------------------------------------
    def volume(self, session_id: str, series_uid: str | None = None, stack: str | None = None) -> Volume:
        """The stack assembled from the encrypted store (cached; rebuilt if the series changed)."""
        plan = self._plan(session_id, series_uid, stack)
        return self._assembled(session_id, plan)

    def _assembled(self, session_id: str, plan: StackPlan) -> Volume:
        key, ids = (session_id, plan.first.series_uid, _stack_id(plan)), _image_ids(plan)
        with self._assembling[key]:  # one assembly per stack at a time: a second caller waits for it
            cached = self.cache.get(key)
            if cached is not None and cached.image_ids == ids:
                return cached.volume
            volume = assemble_stack(plan, limits=self.limits)
            self.cache.put(key, CachedVolume(volume, ids))
            return volume

    def is_cached(self, session_id: str, series_uid: str | None = None, stack: str | None = None) -> bool:
        plan = self._plan(session_id, series_uid, stack)
        cached = self.cache.get((session_id, plan.first.series_uid, _stack_id(plan)))
        return cached is not None and cached.image_ids == _image_ids(plan)

    def volume_slice(self, session_id: str, z: int, series_uid: str | None = None, stack: str | None = None, *,
                     prefetch: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
        """Slice ``z`` (rows, columns float32, rescaled) of a stack: from the cached volume, else decoded
        on its own; with ``prefetch`` the whole stack is then assembled on a background thread."""
        plan = self._plan(session_id, series_uid, stack)
        if not isinstance(z, int) or not 0 <= z < len(plan.slices):
            raise MedVisionError(ErrorCode.INVALID_REGION, f"slice z={z!r} is outside the stack (0..{len(plan.slices) - 1})",
                                 z=z, slices=len(plan.slices))
        key = (session_id, plan.first.series_uid, _stack_id(plan))
        cached = self.cache.get(key)
        info = {"series_uid": plan.first.series_uid, "stack": _stack_id(plan), "z": z, "slices": len(plan.slices),
                "modality": plan.first.modality, "image_id": plan.slices[z].source.image_id,
                "pixel_spacing_mm": list(plan.first.pixel_spacing or (1.0, 1.0))}
        if cached is not None and cached.image_ids == _image_ids(plan) and len(cached.volume.source_uids) > z:
            return cached.volume.voxels[z], info | {"from": "volume", "source_uid": cached.volume.source_uids[z]}
        header = plan.slices[z]
        out = np.empty((header.rows, header.columns), dtype=np.float32)
        try:
            decode_slice(header, out, OpenSource(self.limits))
        except MedVisionError:
            raise
        except Exception as exc:  # noqa: BLE001 - every decoder failure is one coded error here
            raise MedVisionError(ErrorCode.IMAGE_DECODE_ERROR, f"slice {z} ({header.uid}) cannot be decoded "
                                 f"({type(exc).__name__})", z=z) from exc
        if prefetch and plan.voxel_bytes <= self.cache.max_bytes:
            self._prefetch(session_id, plan, key)
        return out, info | {"from": "slice", "source_uid": header.uid}

    def _prefetch(self, session_id: str, plan: StackPlan, key: tuple[str, str, str]) -> None:
        with self._headers_lock:
            if key in self._background:
                return
            self._background.add(key)

        def run() -> None:
            try:
                self._assembled(session_id, plan)
            except Exception:  # noqa: BLE001 - a background fill failing leaves the next call to report it
                log.warning("background assembly of a stack failed", exc_info=True)
            finally:
                with self._headers_lock:
                    self._background.discard(key)

        threading.Thread(target=run, name="volume-prefetch", daemon=True).start()

    def wait_background(self, timeout: float = 60.0) -> None:
        """Wait for background assemblies to end (tests, benchmarks)."""
        for thread in [t for t in threading.enumerate() if t.name == "volume-prefetch"]:
            thread.join(timeout)

    def reslice(self, session_id: str, plane: str, index: int, series_uid: str | None = None,
                stack: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """One plane of the cached volume: ``axial`` (slice z), ``coronal`` (row y) or ``sagittal``
        (column x). Coronal and sagittal planes have z along their rows, highest z first (for an
        axial stack sorted foot to head, the head at the top); ``pixel_spacing_mm`` is (row, column)."""
        if plane not in PLANES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"plane must be one of {', '.join(PLANES)}, not {plane!r}")
        volume = self.volume(session_id, series_uid, stack)
        axis = PLANES.index(plane)
        size = volume.voxels.shape[axis]
        if not isinstance(index, int) or not 0 <= index < size:
            raise MedVisionError(ErrorCode.INVALID_REGION, f"{plane} index {index!r} is outside 0..{size - 1}",
                                 plane=plane, index=index)
        image, spacing = plane_pixels(volume.voxels, plane, index), plane_spacing(volume.spacing_zyx, plane)
        return image, {"plane": plane, "index": index, "shape": list(image.shape), "pixel_spacing_mm": list(spacing),
                       "series_uid": volume.series_uid, "stack": volume.stack_key or "main", "from": "volume",
                       "modality": volume.modality}

    def plane_image(self, session_id: str, plane: str, index: int, series_uid: str | None = None,
                    stack: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """An axial slice decoded on its own while the volume is not assembled yet (the rest assembled
        behind it), else any plane of the cached volume (:meth:`reslice`)."""
        if plane == "axial" and not self.is_cached(session_id, series_uid, stack):
            image, info = self.volume_slice(session_id, index, series_uid, stack)
            return image, info | {"plane": "axial", "index": index}
        return self.reslice(session_id, plane, index, series_uid, stack)

    # -- measurements ----------------------------------------------------------------------------
    def _annotate(self, session_id: str, volume: Volume, payload: dict[str, Any], label: str, source: str) -> str:
        """Store a ``volume_roi`` annotation on the series' slice at its first z (the row's anchor); its id."""
        if self.annotations is None:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "this volume service stores no annotations")
        coordinates = payload["coordinates"]
        z = (coordinates["z_range"] or [0])[0]
        plan = self._plan(session_id, volume.series_uid, volume.stack_key or None)
        image_id = next(h.source.image_id for h in plan.slices if h.uid == volume.source_uids[z])
        added = self.annotations.add(session_id, image_id, payload["type"], coordinates, label=label, source=source)
        return added["annotation_id"]

    def roi(self, session_id: str, *, box: list[int] | None = None, center_mm: list[float] | None = None,
            radius_mm: float | None = None, series_uid: str | None = None, stack: str | None = None,
            annotate: bool = False, label: str = "") -> dict[str, Any]:
        """HU statistics and mL of a box of voxel indices ``[x1, y1, z1, x2, y2, z2]`` (inclusive) or of a
        sphere around a patient point (LPS mm) of ``radius_mm``; ``annotate`` stores it as a ``volume_roi``
        annotation (``annotation_id`` in the result)."""
        if (box is None) == (center_mm is None):
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "give either box or center_mm with radius_mm")
        volume = self.volume(session_id, series_uid, stack)
        if box is not None:
            stats, shape = roi_box_stats(volume.voxels, volume.spacing_zyx, box), {"box": list(box)}
        else:
            centre = _patient_to_voxel(center_mm, volume.affine)
            stats = roi_sphere_stats(volume.voxels, volume.spacing_zyx, centre, radius_mm)
            shape = {"center_mm": list(center_mm or []), "center_xyz": [round(c, 3) for c in centre],
                     "radius_mm": radius_mm}
        result = {"series_uid": volume.series_uid, "stack": volume.stack_key or "main", "roi": shape,
                  "statistics": stats.to_dict(), "unit": "HU" if volume.modality == "CT" else "stored value",
                  "warnings": [w.to_dict() for w in volume.warnings]}
        if annotate:
            geometry = {"box": [int(v) for v in box]} if box is not None else {
                "center": shape["center_xyz"], "radius_mm": float(radius_mm or 0)}
            payload = volume_annotation(stats, shape="box" if box is not None else "sphere", geometry=geometry,
                                        method="roi", volume_shape=volume.shape_zyx, series_uid=volume.series_uid,
                                        frame_of_reference_uid=volume.frame_of_reference_uid,
                                        stack_key=volume.stack_key or None)
            result["annotation_id"] = self._annotate(session_id, volume, payload, label, "user")
        return result

    def segment(self, session_id: str, structures: list[str] | str | None = None, series_uid: str | None = None,
                stack: str | None = None, annotate: bool = False) -> dict[str, Any]:
        """Body, lungs, airways and bone of a stored CT (HU and connectivity, no trained model), in mL;
        ``annotate`` stores each structure found as a ``volume_roi`` mask annotation (``annotation_ids``)."""
        volume = self.volume(session_id, series_uid, stack)
        if volume.modality not in ("CT", ""):
            raise MedVisionError(ErrorCode.INVALID_IMAGE_TYPE,
                                 f"segment_volume needs a CT (Hounsfield units); this series is {volume.modality}")
        result = segment_anatomy(volume.voxels, volume.affine,
                                 structures=structures or ("body", "lungs", "airways", "bone"))
        found = {"series_uid": volume.series_uid, "stack": volume.stack_key or "main",
                 "segmentation": result.to_dict(), "model_trained": False,
                 "warnings": [w.to_dict() for w in volume.warnings]}
        if annotate:
            found["annotation_ids"] = {}
            for structure in (s for s in result.structures if s.found):
                payload = structure_annotation(volume.voxels, volume.spacing_zyx, result.mask(structure.name),
                                               method=result.method, series_uid=volume.series_uid,
                                               frame_of_reference_uid=volume.frame_of_reference_uid,
                                               stack_key=volume.stack_key or None)
                found["annotation_ids"][structure.name] = self._annotate(session_id, volume, payload,
                                                                         structure.name, "ai")
        return found

    def source_headers(self, session_id: str, series_uid: str | None = None, stack: str | None = None) -> list[Any]:
        """The header (no pixels) of each slice's stored instance, in the volume's z order, for a derived
        object (a SEG): each blob decrypted in memory, never written out."""
        plan = self._plan(session_id, series_uid, stack)
        volume = self._assembled(session_id, plan)
        return header_datasets(plan.slices, volume.source_uids, self.limits)

    def forget(self, session_id: str, image_ids: list[str] | set[str]) -> None:
        """Drop a deleted session's volumes and headers."""
        self.cache.forget(session_id)
        with self._headers_lock:
            self._session_plans.pop(session_id, None)
            for image_id in image_ids:
                self._headers.pop(image_id, None)


def _patient_to_voxel(point_mm: Any, affine: np.ndarray) -> list[float]:
    """Voxel coordinates (x, y, z) of a patient point (LPS mm)."""
    try:
        point = np.asarray(point_mm, dtype=np.float64)
    except (TypeError, ValueError):
        point = np.empty(0)
    if point.shape != (3,) or not np.isfinite(point).all():
        raise MedVisionError(ErrorCode.INVALID_REGION, f"center_mm must be three numbers (LPS mm), not {point_mm!r}")
    xyz = np.linalg.solve(np.asarray(affine, dtype=np.float64)[:3, :3], point - affine[:3, 3])
    return [float(v) for v in xyz]
