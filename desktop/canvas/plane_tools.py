"""Drawing and measuring on a volume plane: the canvas's tools in millimetres, stored as 3D annotations.

A plane's scene is in mm (see :mod:`desktop.canvas.planes`); a shape drawn there is turned
into the plane's pixel coordinates (centres at whole numbers, ``plane_pixels``' layout) and
measured by the engine (``Engine.volume_roi`` with ``plane``/``index``, ``Engine.volume_distance``),
which stores it as a ``volume_roi`` annotation with the plane, index and voxel coordinates.
The stored rows come back here as items in scene mm, on the plane and slice they were drawn on.
"""

from __future__ import annotations

from typing import Any, Protocol

from desktop.canvas.commands import Ref
from desktop.canvas.tools import ToolController
from desktop.qt import QPointF, Qt
from engine.analysis.volume.annotation import VOLUME_ROI
from engine.analysis.volume.plane_coords import plane_to_voxel, voxel_to_plane
from engine.imaging.volume.planes import plane_spacing


class PlaneSurface(Protocol):
    """What the plane tools need of the view they draw on (``desktop.canvas.planes.PlaneView``)."""

    host: Any
    plane: str
    index: int
    volume: Any

    def plane_point(self, scene_point: QPointF) -> list[float]: ...  # noqa: D102

    def voxel_point(self, scene_point: QPointF) -> list[float]: ...  # noqa: D102

#: The plane tools: name -> (shortcut, title), as :data:`desktop.canvas.tools.TOOLS`.
PLANE_TOOLS = {
    "navigate": ("", "Navigate (click moves the crosshair)"),
    "distance": ("", "Ruler (mm)"),
    "bbox": ("", "Rectangle ROI"),
    "ellipse": ("", "Ellipse ROI"),
    "polygon": ("", "Polygon ROI"),
    "distance3d": ("", "3D distance (two points, any slices or planes)"),
}
ROI_SHAPES = {"bbox": "rectangle", "ellipse": "ellipse", "polygon": "polygon"}


class PlaneToolController(ToolController):
    """The canvas's tool input on one volume plane; what it draws is measured and stored by the engine."""

    tools = PLANE_TOOLS
    drag_kinds = frozenset({"distance", "bbox", "ellipse"})
    view_tools = ("navigate",)

    view: PlaneSurface

    def __init__(self, view: PlaneSurface) -> None:
        super().__init__(view)
        self.tool = "navigate"

    def press(self, button: Qt.MouseButton, point: QPointF) -> bool:
        if self.tool == "distance3d" and button == Qt.MouseButton.LeftButton:
            self.view.host.pick_distance_point(self.view.voxel_point(point))
            return True
        return super().press(button, point)

    def create_annotation(self, kind: str, coordinates: Any, label: str = "") -> Ref:
        """A shape drawn in scene mm -> plane pixels -> the engine measures and stores it (undoable)."""
        view = self.view
        if kind == "measurement":
            points = [view.voxel_point(QPointF(*p)) for p in coordinates["points"]]
            return view.host.store_distance(points, view.plane, view.index, label)
        if kind == "bbox":
            x1, y1, x2, y2 = coordinates
            geometry: Any = [*view.plane_point(QPointF(x1, y1)), *view.plane_point(QPointF(x2, y2))]
        elif kind == "ellipse":
            rows_mm, columns_mm = plane_spacing(view.volume.spacing_zyx, view.plane)
            (rx, ry) = coordinates["radii"]
            geometry = {"center": view.plane_point(QPointF(*coordinates["center"])),
                        "radii": [round(rx / columns_mm, 3), round(ry / rows_mm, 3)]}
        else:
            geometry = [view.plane_point(QPointF(*p)) for p in coordinates]
        return view.host.store_plane_roi(view.plane, view.index, ROI_SHAPES.get(kind, kind), geometry, label)


def roi_text(stats: dict, unit: str) -> str:
    """One line of a 3D annotation's result: a length, or mean, SD, min, max, voxel count, the area of a
    shape drawn on a plane and the mL (of its one-voxel slab)."""
    if stats.get("length_mm") is not None:
        return f"{stats['length_mm']:.1f} mm"
    if not stats.get("voxel_count"):
        return "empty"
    unit = f" {unit}" if unit else ""
    area = f"  {stats['area_mm2']:.1f} mm²" if stats.get("area_mm2") is not None else ""  # a shape on a plane
    return (f"mean {stats['mean_hu']:.1f}{unit}  SD {stats['sd_hu']:.1f}  min {stats['min_hu']:.0f}  "
            f"max {stats['max_hu']:.0f}  n {stats['voxel_count']}{area}  {stats['volume_ml']:.2f} mL")


def plane_of(coordinates: dict) -> tuple[str, int] | None:
    """The plane and index a stored 3D annotation was drawn on (axial slice shapes: ``z``); else None."""
    geometry = coordinates.get("geometry") or {}
    if "plane" in geometry:
        return geometry["plane"], int(geometry["index"])
    if str(coordinates.get("shape", "")).startswith("slice_") and "z" in geometry:
        return "axial", int(geometry["z"])
    return None


def display_annotations(rows: list[dict], plane: str, index: int, spacing_zyx: tuple[float, float, float],
                        shape_zyx: tuple[int, int, int], unit: str) -> list[dict]:
    """The stored 3D annotations that show on ``plane`` at ``index``, as canvas annotations in scene mm.

    A shape shows on the plane and slice it was drawn on; a distance across slices shows its
    end points on the slices that hold them.
    """
    rows_mm, columns_mm = plane_spacing(spacing_zyx, plane)

    def scene(px: float, py: float) -> list[float]:
        return [(px + 0.5) * columns_mm, (py + 0.5) * rows_mm]

    shown = []
    for row in rows:
        coordinates = row["coordinates"]
        if row["type"] != VOLUME_ROI:
            continue
        geometry, shape, drawn_on = coordinates["geometry"], coordinates["shape"], plane_of(coordinates)
        text = row.get("label") or ""
        text = f"{text}  {roi_text(coordinates['stats'], unit)}".strip()
        base = {"annotation_id": row["annotation_id"], "label": text, "source": row.get("source", "user")}
        if shape == "line":
            ends, along = voxel_to_plane(plane, geometry["points_xyz"], shape_zyx)
            if drawn_on == (plane, index):
                shown.append(base | {"type": "line", "coordinates": [scene(*p) for p in ends.tolist()]})
            else:
                shown += [base | {"type": "point", "coordinates": scene(*p)}
                          for p, at in zip(ends.tolist(), along.tolist(), strict=True) if round(at) == index]
        elif drawn_on == (plane, index):
            if shape == "slice_ellipse":
                (rx, ry) = geometry["radii"]
                shown.append(base | {"type": "ellipse", "coordinates": {
                    "center": scene(*geometry["center"]), "radii": [rx * columns_mm, ry * rows_mm]}})
            elif shape == "slice_rectangle":
                x1, y1, x2, y2 = geometry["rectangle"]
                shown.append(base | {"type": "bbox", "coordinates": [*scene(x1, y1), *scene(x2, y2)]})
            elif shape == "slice_polygon":
                shown.append(base | {"type": "polygon", "coordinates": [scene(*p) for p in geometry["polygon"]]})
    return shown


def voxel_of_plane_point(plane: str, index: int, point: list[float], shape_zyx: tuple[int, int, int]) -> list[float]:
    """Voxel coordinates ``(x, y, z)`` of one plane point ``(px, py)``."""
    return [round(float(v), 3) for v in plane_to_voxel(plane, index, [point], shape_zyx)[0]]


__all__ = ["PLANE_TOOLS", "PlaneToolController", "display_annotations", "plane_of", "roi_text",
           "voxel_of_plane_point"]
