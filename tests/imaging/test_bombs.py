"""Decompression bombs (issue 14, item 1): refused before anything big is allocated, with a code.

Each probe is a small file built in the test (:mod:`tests.bombs`) that inflates to hundreds
of MB or more. The CLI runs in a child under a 3 GiB address-space cap (a regression fails
instead of taking the machine down) and its own peak RSS is asserted; before the limits it
was 1.7 GB to 3.5 GB for these files. The defaults must accept every real sample file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from engine.config import DecodeLimits, Settings
from engine.errors import ErrorCode, MedVisionError
from engine.imaging import decode_image
from engine.imaging.limits import check_pixel_limits, read_dicom
from engine.services.images import DecodeCache, decoded_nbytes
from tests import bombs
from tests.conftest import REPO
from tests.imaging.conftest import PYDICOM_DATA_FILES, PYDICOM_FILES

MiB = 1024 * 1024
#: A refused probe's whole CLI process: the engine's imports (about 180 MB) and little more.
PEAK_RSS_MB = 450

PROBES = {
    # name: (builder, what the issue measured before the limits)
    "deflated CR 12000x12000 16-bit (280 kB)": (lambda p: bombs.deflated_cr(p, 12000, 12000), "1.72 GB"),
    "deflated CR 20000x20000 16-bit (780 kB)": (lambda p: bombs.deflated_cr(p, 20000, 20000), "MemoryError"),
    "RGB PNG 9400x9400 (260 kB)": (lambda p: bombs.png_zeros(p, 9400, 9400, rgb=True), "3.54 GB"),
    "grey PNG 13000x13000 (165 kB)": (lambda p: bombs.png_zeros(p, 13000, 13000, rgb=False), "1.82 GB"),
    "deflated private tag inflating to 1.5 GiB (1.6 MB)": (lambda p: bombs.deflated_private_bomb(p), "3.0 GB"),
}


def _medvision(*args: str, home: Path, model_pack: Path, cwd: Path, env: dict | None = None) -> bombs.Capped:
    exe = shutil.which("medvision", path=str(Path(sys.executable).parent))
    environment = os.environ | {"MEDVISION_HOME": str(home), "MEDVISION_MODEL_PACK": str(model_pack),
                                "PYTHONPATH": str(REPO)} | (env or {})
    return bombs.run_capped([exe, *args], env=environment, cwd=cwd)


@pytest.mark.parametrize("probe", list(PROBES))
def test_cli_analyze_refuses_each_bomb_with_one_coded_line_and_small_memory(
        probe: str, home: Path, model_pack: Path, tmp_path: Path) -> None:
    build, _before = PROBES[probe]
    path = build(tmp_path / ("probe.png" if "PNG" in probe else "probe.dcm"))
    assert path.stat().st_size < 2 * MiB
    run = _medvision("analyze", str(path), home=home, model_pack=model_pack, cwd=tmp_path)
    print(f"{probe}: peak RSS {run.peak_rss_mb:.0f} MB")  # noqa: T201 - the figure the issue asks for
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("IMAGE_TOO_LARGE: 'probe."), run.stderr[-2000:]
    assert run.peak_rss_mb < PEAK_RSS_MB
    listing = _medvision("sessions", "list", "--json", home=home, model_pack=model_pack, cwd=tmp_path)
    assert json.loads(listing.stdout) == []  # no empty session left behind


def test_the_limits_are_configurable_from_the_environment(home: Path, model_pack: Path, rg1_path: Path,
                                                          tmp_path: Path, monkeypatch) -> None:
    run = _medvision("analyze", str(rg1_path), home=home, model_pack=model_pack, cwd=tmp_path,
                     env={"MEDVISION_MAX_IMAGE_PIXELS": "1_000_000"})
    assert run.returncode == 2 and run.stderr.startswith("IMAGE_TOO_LARGE: 'RG1_UNCR.dcm' is too large"), run.stderr
    assert "1841 x 1955 = 3,599,155 exceeds the limit of 1,000,000 (MEDVISION_MAX_IMAGE_PIXELS)" in run.stderr

    monkeypatch.setenv("MEDVISION_MAX_IMAGE_PIXELS", "1000")
    monkeypatch.setenv("MEDVISION_MAX_PIXEL_DATA_BYTES", "2000")
    monkeypatch.setenv("MEDVISION_MAX_INFLATED_BYTES", "3000")
    monkeypatch.setenv("MEDVISION_DECODE_CACHE_BYTES", "4000")
    settings = Settings.from_env(home)
    assert settings.limits == DecodeLimits(max_image_pixels=1000, max_pixel_data_bytes=2000, max_inflated_bytes=3000)
    assert settings.decode_cache_bytes == 4000
    monkeypatch.setenv("MEDVISION_MAX_INFLATED_BYTES", "-5")
    with pytest.raises(ValueError, match="MEDVISION_MAX_INFLATED_BYTES must be a positive integer"):
        Settings.from_env(home)


@pytest.mark.filterwarnings("ignore::UserWarning")  # some samples are deliberately odd
def test_the_defaults_accept_every_sample_file() -> None:
    """The header of every DICOM in pydicom's and pydicom-data's samples is within the defaults."""
    checked = 0
    for path in sorted([*PYDICOM_FILES.rglob("*"), *PYDICOM_DATA_FILES.rglob("*")]):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except (InvalidDicomError, ValueError, TypeError, EOFError, OSError, KeyError, AttributeError):
            continue
        if "Rows" in ds:
            check_pixel_limits(ds, DecodeLimits(), path.name)
            checked += 1
    assert checked > 100


def test_a_real_sized_mammogram_and_the_deflated_sample_still_decode(sample, tmp_path: Path) -> None:
    """4000 x 5000 16-bit, deflated (40 MB inflated), and pydicom's image_dfl.dcm, as pydicom reads them."""
    mammogram = decode_image(bombs.deflated_cr(tmp_path / "mg.dcm", 5000, 4000))
    assert (mammogram.rows, mammogram.columns, mammogram.raw.dtype) == (5000, 4000, np.uint16)
    assert mammogram.metadata["TransferSyntaxUID"] == pydicom.uid.DeflatedExplicitVRLittleEndian
    sample_path = sample("image_dfl.dcm")
    decoded = decode_image(sample_path)
    assert np.array_equal(decoded.raw, pydicom.dcmread(sample_path).pixel_array)
    assert decoded.metadata["TransferSyntaxUID"] == pydicom.uid.DeflatedExplicitVRLittleEndian


def test_a_deflated_private_tag_within_the_limit_is_skipped_while_inflating(tmp_path: Path) -> None:
    """100 MiB of private data under the 512 MiB limit: the image decodes, the private blob never sits in memory."""
    path = bombs.deflated_private_bomb(tmp_path / "p.dcm", 100 * MiB)
    probe = "import sys; from engine.imaging import decode_image; d = decode_image(sys.argv[1]); print(d.rows, d.columns)"
    run = bombs.run_capped([sys.executable, "-c", probe, str(path)], env=os.environ | {"PYTHONPATH": str(REPO)},
                           cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[:2] == ["32", "32"]
    assert run.peak_rss_mb < 200  # imports of engine.imaging: about 65 MB; the blob would add 100+


def test_limits_and_truncation_in_the_decoder(tmp_path: Path) -> None:
    small = bombs.deflated_cr(tmp_path / "cr.dcm", 300, 200).read_bytes()
    tight = DecodeLimits(max_image_pixels=10**6, max_pixel_data_bytes=100_000, max_inflated_bytes=10**9)
    with pytest.raises(MedVisionError) as refused:
        decode_image(small, filename="cr.dcm", limits=tight)
    assert refused.value.code is ErrorCode.IMAGE_TOO_LARGE
    assert refused.value.details == {"file": "cr.dcm", "size": 120_000, "limit": 100_000,
                                     "setting": "MEDVISION_MAX_PIXEL_DATA_BYTES"}
    inflate = DecodeLimits(max_inflated_bytes=100_000)
    with pytest.raises(MedVisionError) as refused:
        decode_image(small, filename="cr.dcm", limits=inflate)
    assert refused.value.code is ErrorCode.IMAGE_TOO_LARGE and refused.value.details["limit"] == 100_000
    for cut in (len(small) - 10, len(small) // 2):  # a truncated deflate stream stays a decode error
        with pytest.raises(MedVisionError) as broken:
            decode_image(small[:cut], filename="cut.dcm")
        assert broken.value.code is ErrorCode.IMAGE_DECODE_ERROR


def test_the_header_check_inflates_in_bounded_steps(tmp_path: Path) -> None:
    """What the node and the MCP path check read: the header, the private blob dropped, the size counted."""
    path = bombs.deflated_private_bomb(tmp_path / "p.dcm", 20 * MiB)
    with path.open("rb") as handle:
        ds, inflated = read_dicom(handle, DecodeLimits(), name="p.dcm", stop_before_pixels=True,
                                  defer_size="64 KB")
        assert inflated is not None and inflated.drain() > 20 * MiB
    assert ds.Rows == 32 and 0x00091000 not in ds and ds.PatientID == "B-1"
    with path.open("rb") as handle, pytest.raises(MedVisionError) as refused:
        read_dicom(handle, DecodeLimits(max_inflated_bytes=10 * MiB), name="p.dcm", stop_before_pixels=True,
                   defer_size="64 KB")[1].drain()
    assert refused.value.details["setting"] == "MEDVISION_MAX_INFLATED_BYTES"


def test_the_decode_cache_is_bounded_in_bytes(rg1) -> None:
    size = decoded_nbytes(rg1)
    assert size == rg1.raw.nbytes + rg1.pixels.nbytes > 20 * MiB
    cache = DecodeCache(entries=4, max_bytes=int(size * 2.5))
    for image_id in ("a", "b", "c"):
        cache.put(image_id, 0, rg1)
    assert cache.get("a", 0) is None and cache.get("b", 0) is rg1 and cache.get("c", 0) is rg1
    assert cache.nbytes == 2 * size
    cache.forget({"b"})
    assert cache.nbytes == size
    small = DecodeCache(entries=4, max_bytes=size - 1)
    small.put("big", 0, rg1)  # larger than the whole budget: not kept at all
    assert small.get("big", 0) is None and small.nbytes == 0
