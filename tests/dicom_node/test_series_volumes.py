"""A CT series pushed to a real node process is analysed as one volume once it is quiet, not image by image."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.config import SERIES_QUIET_ENV, SERIES_QUIET_S, load
from dicom_node.ingest import ANALYZE_JOB
from dicom_node.series import VOLUME_JOB
from engine.errors import MedVisionError
from engine.imaging.records import arrival_job, is_series_slice
from engine.store import Store
from tests.dicom_node.conftest import free_port, node_process, storescu
from tests.volumes.ct_reference import load_mask
from tests.volumes.ctseries import EXAMPLE_CT, SHARED_CT, example_ct, write_ct_series

QUIET_S = 1.0
REFERENCES = {"lung_left": ["lung_upper_lobe_left", "lung_lower_lobe_left"],
              "lung_right": ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"]}


def _reference_ml(slices: int) -> dict[str, float]:
    """Each lung's volume in the shared CT's reference segmentation (TotalSegmentator) over its
    first (lowest) ``slices`` axial slices, in mL."""
    voxel_ml = abs(np.linalg.det(example_ct()[1][:3, :3])) / 1000.0
    assert EXAMPLE_CT.is_file()
    return {name: float(load_mask(SHARED_CT / "example_ct_seg", names)[:slices].sum()) * voxel_ml
            for name, names in REFERENCES.items()}


def _volume_jobs(home: Path, count: int, timeout: float = 120.0) -> tuple[list[dict], list[dict]]:
    """Wait until ``count`` volume jobs are done; all jobs and the volume analyses then."""
    deadline = time.monotonic() + timeout
    while True:
        store = Store.open(home, use_keyring=False)
        try:
            jobs = store.db.query("SELECT id, kind, status, payload, result, error FROM jobs ORDER BY id")
            done = [j for j in jobs if j["kind"] == VOLUME_JOB and j["status"] in ("done", "failed")]
            if len(done) >= count or time.monotonic() > deadline:
                analyses = [a for a in store.db.query("SELECT * FROM analyses ORDER BY created_at, rowid")
                            if a["kind"] == "volume"]
                return [store.get_job(j["id"]) for j in jobs], [store.analyses.in_session(a["session_id"], a["image_id"])[-1]
                                                                 for a in analyses]
        finally:
            store.close()
        time.sleep(0.3)


def test_a_ct_series_queues_one_volume_job_and_a_late_slice_one_update(home, model_pack, tmp_path) -> None:
    files = write_ct_series(tmp_path / "ct")
    top = max(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    first = [f for f in files if f != top]  # the top slice comes late: the first volume is one slice short
    port = free_port()
    process = node_process(home, port, model_pack, "--series-quiet", str(QUIET_S))
    try:
        assert storescu(port, first).returncode == 0
        jobs, analyses = _volume_jobs(home, 1)
        assert [j["kind"] for j in jobs].count(ANALYZE_JOB) == 0  # no per-image job for 111 slices
        (job,) = [j for j in jobs if j["kind"] == VOLUME_JOB]
        assert job["status"] == "done", job["error"]
        assert job["payload"]["instances"] == len(first) and job["payload"]["update"] is False
        volumes = job["result"]["structure_volumes_ml"]
        assert {"lung_left", "lung_right", "bone", "body"} <= set(volumes)
        # The crop holds the lung bases, and its top slice a quarter of them: tens of mL, as the reference says.
        for side, ml in _reference_ml(len(first)).items():
            assert abs(volumes[side] - ml) < 0.1 * ml, (side, volumes[side], ml)
        assert volumes["bone"] > volumes["lung_left"] and volumes["body"] > volumes["bone"]
        (analysis,) = analyses
        assert analysis["id"] == job["result"]["analysis_id"] and analysis["result"]["slices"] == len(first)
        assert analysis["result"]["structure_volumes_ml"] == volumes and analysis["model_trained"] == 0

        assert storescu(port, [top]).returncode == 0  # a late instance: the series queues once more
        jobs, analyses = _volume_jobs(home, 2)
        time.sleep(3 * QUIET_S)  # and only once
        jobs, analyses = _volume_jobs(home, 2)
        volume_jobs = [j for j in jobs if j["kind"] == VOLUME_JOB]
        assert len(volume_jobs) == 2 and [j["kind"] for j in jobs].count(ANALYZE_JOB) == 0
        update = volume_jobs[1]
        assert update["status"] == "done", update["error"]
        assert update["payload"]["update"] is True and update["payload"]["instances"] == 1
        assert analyses[-1]["result"]["slices"] == len(files) and analyses[-1]["result"]["update"] is True
        for side, ml in _reference_ml(len(files)).items():  # the whole series now
            assert abs(update["result"]["structure_volumes_ml"][side] - ml) < 0.1 * ml, (side, ml)
            assert update["result"]["structure_volumes_ml"][side] > volumes[side] * 1.2
    finally:
        process.terminate()
        assert process.wait(60) == 0
    from engine.api import Engine

    with Engine(home=home, model_pack=model_pack) as engine:  # what the desktop and MCP read back
        latest = engine.latest_analysis(analyses[-1]["session_id"], analyses[-1]["image_id"], kinds=("volume",))
        assert latest["analysis_id"] == update["result"]["analysis_id"]
        assert latest["structure_volumes_ml"] == update["result"]["structure_volumes_ml"]


def test_series_slices_skip_the_image_job_and_the_quiet_time_is_configurable(monkeypatch) -> None:
    slice_row = {"type": "CXR", "modality": "CT", "frame_count": 1, "series_instance_uid": "1.2.3"}
    assert is_series_slice(slice_row) and not arrival_job(slice_row)
    assert arrival_job({"type": "CXR", "modality": "DX", "frame_count": 1, "series_instance_uid": "1.2"})
    assert not is_series_slice(slice_row | {"frame_count": 40}) and not is_series_slice(slice_row | {"modality": "MR",
                                                                                                   "series_instance_uid": None})
    assert is_series_slice(slice_row | {"modality": "MR"})
    monkeypatch.delenv(SERIES_QUIET_ENV, raising=False)
    assert load().series_quiet_s == SERIES_QUIET_S
    monkeypatch.setenv(SERIES_QUIET_ENV, "2.5")
    assert load().series_quiet_s == 2.5
    assert load(argparse.Namespace(series_quiet_s=0.5)).series_quiet_s == 0.5  # the flag wins
    for bad in ("soon", "0"):
        monkeypatch.setenv(SERIES_QUIET_ENV, bad)
        with pytest.raises(MedVisionError, match="series_quiet_s|MEDVISION_SERIES_QUIET_S"):
            load()
