"""``medvision volume | roi | segment-volume``: a series (files, a folder) or a NIfTI file as a 3D volume.

``volume`` prints, for each stack the sources hold, its dimensions, spacing, orientation,
slice order and every warning found while assembling it; ``roi`` the HU statistics and
volume of a box of voxels; ``segment-volume`` the structures the training-free method
finds (body, lungs, airways, bone) with their volumes, ``--seg OUT.dcm`` them as one
multi-frame DICOM SEG referencing every source slice and ``--sr OUT.dcm`` their volumes and
mean HU as a TID 1500 SR referencing its segments. ``--json OUT`` writes the same as
JSON (no voxels). No session is created: the files are read where they are. A SOURCE that is
a session id (and no file of that name) reads the session's stored series instead, decrypted
in memory: its main stack, or ``--series UID`` (``--stack KEY`` for another stack).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.cli.common import write_json
from engine.errors import ErrorCode, MedVisionError

#: What a session id looks like (``store.common.new_id``: 12 or 32 hex digits).
SESSION_ID = re.compile(r"^[0-9a-f]{12}([0-9a-f]{20})?$")


def format_volume(summary: dict[str, Any]) -> str:
    """A readable block for one volume's :meth:`Volume.summary`."""
    x, y, z = summary["dimensions_xyz"]
    dz, dy, dx = summary["spacing_zyx_mm"]
    title = summary["series_description"] or summary["stack_key"] or "volume"
    lines = [f"{title}  ({summary['source_format']}"
             + (f", series {summary['series_uid']}" if summary["series_uid"] else "") + ")"]
    lines.append(f"  {summary['modality'] or 'volume'}  {x} x {y} x {z} voxels (x, y, z)  "
                 f"spacing {dx:.3f} x {dy:.3f} x {dz:.3f} mm")
    code = summary["orientation"]
    lines.append(f"  orientation {code} (x -> {code[0]}, y -> {code[1]}, z -> {code[2]}), "
                 "affine to patient LPS mm" + ("" if summary["patient_geometry"] else " (nominal: no positions)"))
    order = summary["slice_order"]
    normal = ", ".join(f"{v:g}" for v in order["normal_lps"])
    span = (f": {order['first_mm']:.2f} .. {order['last_mm']:.2f} mm" if "first_mm" in order else "")
    lines.append(f"  slice order: z 0..{z - 1}, {order['sorted_by']} ({normal}){span}")
    if summary["value_range"]:
        low, high = summary["value_range"]
        lines.append(f"  values {low:g} .. {high:g}" + (" HU" if summary["modality"] == "CT" else ""))
    if not summary["warnings"]:
        lines.append("  warnings: none")
    for warning in summary["warnings"]:
        where = f" [z {', '.join(str(s) for s in warning['slices'])}]" if warning["slices"] else ""
        lines.append(f"  ! {warning['code']}: {warning['message']}{where}")
    return "\n".join(lines)


def _session_id(sources: list[str]) -> str | None:
    """The session id when the one source names a session (and no file of that name exists)."""
    if len(sources) == 1 and not Path(sources[0]).exists() and SESSION_ID.match(sources[0]):
        return sources[0]
    if any(not Path(s).exists() and SESSION_ID.match(s) for s in sources):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "a session id is a source on its own: give it alone.")
    return None


def _session_volumes(args: argparse.Namespace, session_id: str, every_stack: bool) -> Iterator[Any]:
    """The session's stored stacks (every one, or the one chosen), read through the engine one at a time."""
    from engine.cli.common import open_engine

    with open_engine(args) as engine:
        if not every_stack or args.stack:
            yield engine.get_volume(session_id, args.series, args.stack)
            return
        listed = engine.list_series(session_id)["series"]
        wanted = [(s["series_uid"], stack["stack"]) for s in listed for stack in s["stacks"]
                  if args.series in (None, s["series_uid"])]
        if not wanted:
            raise MedVisionError(ErrorCode.NOT_A_VOLUME if not listed else ErrorCode.INVALID_ARGUMENT,
                                 "the session holds no such volume series" if listed
                                 else "the session holds no series that makes a volume", session_id=session_id)
        for series_uid, stack in wanted:
            yield engine.get_volume(session_id, series_uid, stack)


def cmd_volume(args: argparse.Namespace) -> int:
    """Assemble the sources into volumes and describe each."""
    from engine.imaging.volume import is_nifti, iter_volumes, load_volume

    session_id = _session_id(args.sources)
    if session_id:
        volumes = _session_volumes(args, session_id, every_stack=True)
    elif any(is_nifti(s) for s in args.sources):
        volumes = [load_volume(args.sources)]
    else:
        volumes = iter_volumes(args.sources, series_uid=args.series)
    summaries = []
    for volume in volumes:  # one at a time: each volume is freed before the next is assembled
        summary = volume.summary()
        print(format_volume(summary))
        summaries.append(summary)
    write_json(args.json, {"volumes": summaries})
    return 0


def _one_volume(args: argparse.Namespace):  # noqa: ANN202 - engine.imaging.volume imported lazily
    """The main volume among the sources (or the session's), its warnings printed first."""
    from engine.imaging.volume import load_volume

    session_id = _session_id(args.sources)
    if session_id:
        (volume,) = _session_volumes(args, session_id, every_stack=False)
    else:
        volume = load_volume(args.sources, series_uid=args.series)
    for warning in volume.warnings:
        print(f"  ! {warning.code}: {warning.message}")
    return volume


def cmd_roi(args: argparse.Namespace) -> int:
    """HU statistics and volume of a box of voxels (indices inclusive: x column, y row, z sorted slice)."""
    from engine.analysis.volume.roi import roi_box_stats

    volume = _one_volume(args)
    stats = roi_box_stats(volume.voxels, volume.spacing_zyx, args.box).to_dict()
    x1, y1, z1, x2, y2, z2 = args.box
    unit = " HU" if volume.modality == "CT" else ""
    print(f"box x {x1}..{x2}, y {y1}..{y2}, z {z1}..{z2}: {stats['voxel_count']} voxels, {stats['volume_ml']:.2f} mL")
    if stats["voxel_count"]:
        print(f"  mean {stats['mean_hu']:.1f}{unit}  SD {stats['sd_hu']:.1f}  min {stats['min_hu']:g}  "
              f"max {stats['max_hu']:g}")
    write_json(args.json, {"volume": volume.summary(), "box": list(args.box), "statistics": stats})
    return 0


def cmd_segment_volume(args: argparse.Namespace) -> int:
    """Body, lungs, airways and bone of a CT by HU and connectivity (no trained model), with volumes in mL."""
    from engine.analysis.volume.anatomy import segment_anatomy

    if args.sr and not args.seg:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, "--sr references the SEG's segments: give --seg OUT.dcm too")
    volume = _one_volume(args)
    if volume.modality not in ("CT", ""):
        raise MedVisionError(ErrorCode.INVALID_IMAGE_TYPE,
                             f"segment-volume needs a CT (Hounsfield units); this volume is {volume.modality}")
    result = segment_anatomy(volume.voxels, volume.affine, structures=args.structures)
    print(f"{result.method} (no trained model), {result.elapsed_s:.2f} s")
    for structure in result.structures:
        found = f"{structure.volume_ml:10.1f} mL" if structure.found else "   not found"
        print(f"  {structure.name:<12} {found}" + (f"  ({structure.note})" if structure.note else ""))
    write_json(args.json, {"volume": volume.summary(), "segmentation": result.to_dict()})
    if args.seg:
        write_seg(args, volume, result)
    return 0


def _source_headers(args: argparse.Namespace, volume: Any) -> list[Any]:
    """The header of each slice's instance in the volume's z order: from the session's store, or the files."""
    from engine.imaging.volume import is_nifti
    from engine.imaging.volume.assemble import header_datasets, scan_sources

    session_id = _session_id(args.sources)
    if session_id:
        from engine.cli.common import open_engine

        with open_engine(args) as engine:
            return engine.volume_source_headers(session_id, args.series, args.stack)
    if volume.source_format != "dicom" or any(is_nifti(s) for s in args.sources):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT,
                             "--seg needs DICOM slices to reference: a NIfTI volume has none")
    headers, _ = scan_sources(args.sources)
    return header_datasets(headers, volume.source_uids)


def _write_dicom(path: str, dataset: Any) -> Path:
    from engine.export.dicom_common import dicom_bytes

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(dicom_bytes(dataset))
    return target


def write_seg(args: argparse.Namespace, volume: Any, result: Any) -> None:
    """The structures as one multi-frame DICOM SEG referencing every source slice (``--seg OUT.dcm``), and
    their volume and mean HU as a TID 1500 SR referencing its segments (``--sr OUT.dcm``)."""
    import time

    from engine.export.volume_seg import volume_segmentation
    from engine.export.volume_sr import volume_measurement_report

    started = time.perf_counter()
    headers = _source_headers(args, volume)
    seg = volume_segmentation(result, headers)
    target = _write_dicom(args.seg, seg)
    print(f"SEG written to {target}: {len(seg.SegmentSequence)} segments, {seg.NumberOfFrames} frames over "
          f"{len(volume.source_uids)} slices ({time.perf_counter() - started:.2f} s)")
    if args.sr:
        target = _write_dicom(args.sr, volume_measurement_report(seg, result, volume.voxels, headers))
        print(f"SR written to {target}: volume and mean HU of each segment (TID 1500)")


SOURCE_HELP = "DICOM files, a folder, a NIfTI file, or a session id (its stored series)"


def _choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--series", metavar="UID", help="the series to use (SeriesInstanceUID)")
    parser.add_argument("--stack", metavar="KEY", help="a session's stack other than the series' main one")


def register(sub: argparse._SubParsersAction) -> None:
    """``volume``, ``roi`` and ``segment-volume``."""
    volume = sub.add_parser("volume", help="assemble a series (files, folder) or a NIfTI file into a 3D volume")
    volume.add_argument("sources", nargs="+", metavar="SOURCE", help=SOURCE_HELP)
    volume.add_argument("--json", metavar="OUT", help="write the description as JSON")
    _choice(volume)
    volume.set_defaults(func=cmd_volume)
    roi = sub.add_parser("roi", help="HU statistics and volume (mL) of a box of voxels in a volume")
    roi.add_argument("sources", nargs="+", metavar="SOURCE", help=SOURCE_HELP)
    roi.add_argument("--box", type=int, nargs=6, required=True, metavar=("X1", "Y1", "Z1", "X2", "Y2", "Z2"),
                     help="voxel indices, inclusive: x column, y row, z the slice's place in the sorted stack")
    roi.add_argument("--json", metavar="OUT", help="write the statistics as JSON")
    _choice(roi)
    roi.set_defaults(func=cmd_roi)
    segment = sub.add_parser("segment-volume", help="body, lungs, airways and bone of a CT without a trained model")
    segment.add_argument("sources", nargs="+", metavar="SOURCE", help=SOURCE_HELP)
    segment.add_argument("--structures", default="body,lungs,airways,bone",
                         help="comma list of body,lungs,airways,bone (default: all)")
    segment.add_argument("--json", metavar="OUT", help="write the structures and volumes as JSON")
    segment.add_argument("--seg", metavar="OUT.dcm",
                         help="write the structures as one DICOM SEG referencing every source slice")
    segment.add_argument("--sr", metavar="OUT.dcm",
                         help="with --seg: write each segment's volume (mL) and mean HU as a DICOM SR (TID 1500)")
    _choice(segment)
    segment.set_defaults(func=cmd_segment_volume)
