"""The agent's tools for volume series (CT, MR): the series' geometry, segmentation, organ volumes and HU.

They run in ``pipelines/ct.yaml`` over a session whose current image is a slice of a
stored series, through :class:`engine.services.volumes.VolumeService` (the same calls as
``Engine.list_series`` and ``Engine.segment_volume``). Outputs are JSON (no voxels: masks
stay in the store as ``volume_roi`` annotations, cited by id). The report reads the
measurements :func:`volume_measurements` lists: each structure's volume in mL and mean
attenuation in HU, named after the structure.
"""

from __future__ import annotations

from typing import Any

from engine.agent.toolkit import Tool, ToolCall, ToolResult
from engine.errors import ErrorCode, MedVisionError

#: Report names of the classical method's structures (the U-Net's labels are used as they are).
STRUCTURE_NAMES = {"lung_left": "left lung", "lung_right": "right lung"}


def volume_info(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """The series (and stack) the current image is a slice of: shape, spacing, orientation, warnings."""
    mark = call.services.volumes.image_stacks(call.session_id).get(call.image_id)
    if mark is None:
        reason = "the image is not a slice of a volume series"
        return ToolResult({"series_uid": None, "skipped": reason}, skipped=True, reasoning=reason)
    listed = call.services.volumes.list_series(call.session_id)
    series = next(s for s in listed["series"] if s["series_uid"] == mark["series_uid"])
    stack = next(s for s in series["stacks"] if s["stack"] == mark["stack"])
    warnings = [{"code": w["code"], "message": w["message"]} for w in stack["warnings"]]
    output = {"series_uid": series["series_uid"], "stack": stack["stack"], "modality": series["modality"],
              "series_description": series["series_description"], "slices": stack["slices"],
              "shape_zyx": stack["shape_zyx"], "spacing_zyx_mm": [round(v, 3) for v in stack["spacing_zyx_mm"]],
              "orientation": stack["orientation"], "warnings": warnings, "warning_count": len(warnings),
              "z_of_image": mark["z"]}
    z, y, x = stack["shape_zyx"]
    return ToolResult(output, reasoning=f"{series['modality']} series of {z} slices ({x} x {y}), "
                                        f"{len(warnings)} warning(s)")


def segment_volume(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Structures of the CT series with mL and mean HU (``method`` classical or unet); each classical
    structure kept as a ``volume_roi`` annotation (ids in the output)."""
    info = call.outputs.get("volume_info") or {}
    if not info.get("series_uid"):
        raise MedVisionError(ErrorCode.NOT_A_VOLUME, "segment_volume needs volume_info's series first")
    method = args.get("method", "classical")
    result = call.services.volumes.segment(call.session_id, args.get("structures"), info["series_uid"], info["stack"],
                                           annotate=bool(args.get("annotate", True)), method=method)
    ids = result.get("annotation_ids") or {}
    structures = [{"name": s["name"], "found": s["found"], "volume_ml": s["volume_ml"], "mean_hu": s["mean_hu"],
                   "sd_hu": s["sd_hu"], "annotation_id": ids.get(s["name"])}
                  for s in result["segmentation"]["structures"]]
    model = result.get("model")
    output = {"method": method, "algorithm": result["segmentation"]["method"], "series_uid": result["series_uid"],
              "stack": result["stack"], "structures": structures, "model_trained": result["model_trained"],
              "model_id": model["id"] if model else None, "note": result.get("note")}
    models = [{"id": model["id"], "sha256": model.get("sha256"), "trained": model.get("trained"),
               "task": "segment3d"}] if model else []
    found = [s["name"] for s in structures if s["found"]]
    return ToolResult(output, models=models,
                      reasoning=f"{result['segmentation']['method']}: {len(found)} structure(s) found"
                                + (f" ({', '.join(found)})" if found else ""))


def volume_measurements(call: ToolCall, args: dict[str, Any]) -> ToolResult:
    """Each structure found: volume (mL) and mean attenuation (HU), as report measurements."""
    segmented = call.outputs.get("segment_volume") or {}
    measurements = []
    for structure in segmented.get("structures", []):
        if not structure["found"]:
            continue
        name = STRUCTURE_NAMES.get(structure["name"], structure["name"].replace("_", " "))
        measurements.append({"name": f"{name} volume", "value": round(float(structure["volume_ml"]), 1), "unit": "mL",
                             "structure": structure["name"], "annotation_id": structure.get("annotation_id")})
        if structure.get("mean_hu") is not None:
            measurements.append({"name": f"{name} mean attenuation", "value": round(float(structure["mean_hu"]), 1),
                                 "unit": "HU", "structure": structure["name"],
                                 "annotation_id": structure.get("annotation_id")})
    return ToolResult({"measurements": measurements, "method": segmented.get("algorithm"),
                       "model_trained": segmented.get("model_trained")},
                      reasoning=f"{len(measurements)} measurement(s) from the volume segmentation")


def volume_tools() -> list[Tool]:
    """The tools of the volume pipeline."""
    volumes = ("CT", "MRI")
    schema = {"type": "object", "additionalProperties": False, "properties": {
        "method": {"enum": ["classical", "unet"]}, "annotate": {"type": "boolean"},
        "structures": {"type": "array", "minItems": 1, "items": {"enum": ["body", "lungs", "airways", "bone"]}}}}
    return [
        Tool("volume_info", "1.0.0", ("orchestrator",),
             "The series the image is a slice of: slices, shape, spacing, orientation and warnings",
             volume_info, image_types=volumes, mcp_tools=("list_series",)),
        Tool("segment_volume", "1.0.0", ("image_analysis",),
             "Structures of a CT series with mL and mean HU (classical HU and connectivity, or the pack's 3D U-Net)",
             segment_volume, schema, ("CT",), ("segment_volume",), consumes=("volume_info",), writes=True),
        Tool("volume_measurements", "1.0.0", ("specialist",),
             "Organ volumes (mL) and mean attenuation (HU) from the volume segmentation",
             volume_measurements, image_types=("CT",), consumes=("segment_volume",)),
    ]
