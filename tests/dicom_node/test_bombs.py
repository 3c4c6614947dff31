"""Decompression bombs pushed to the node (issue 14, item 1): 0xA700, nothing kept, memory flat.

The node runs as its own process (``python -m dicom_node serve``) so its peak RSS (VmHWM)
is its own; real DCMTK ``storescu`` sends. Before the limits, the deflated 12000 x 12000 CR
took the node from 0.23 to 1.81 GB and a private tag inflating to 1.5 GB to 3.0 GB, stored.
To keep the run short, the private-tag probes inflate to 160 MiB against a 64 MiB limit
(``MEDVISION_MAX_INFLATED_BYTES``); the issue's 1.5 GiB probe behaves the same against the
512 MiB default (0xA700, node peak 195 MB) but takes storescu 15 s to send.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import bombs
from tests.dicom_node.conftest import free_port, node_process, storescu

MiB = 1024 * 1024
NODE_PEAK_MB = 400  # an idle node is about 185 MB


@pytest.fixture
def bomb_node(home: Path, model_pack: Path, monkeypatch) -> tuple[object, int]:
    monkeypatch.setenv("MEDVISION_MAX_INFLATED_BYTES", str(64 * MiB))
    port = free_port()
    process = node_process(home, port, model_pack, "--no-analyze")
    yield process, port
    process.terminate()
    process.communicate(timeout=60)


def test_bombs_pushed_with_storescu_are_refused_and_nothing_is_kept(bomb_node, home: Path, tmp_path: Path) -> None:
    process, port = bomb_node
    private = bombs.deflated_private_bomb(tmp_path / "private.dcm", 160 * MiB)
    cases = {
        "private tag, sent deflated": ([private], ["-xd", "+cl", "1"]),
        "private tag, sent as storescu converts it (native)": ([private], []),
        "CR 12000 x 12000, storescu defaults": ([bombs.deflated_cr(tmp_path / "cr.dcm", 12000, 12000)], []),
    }
    for name, (files, flags) in cases.items():
        result = storescu(port, files, *flags, "-d", timeout=120)
        assert result.returncode != 0 and "0xa700" in result.stderr.lower(), (name, result.stderr[-800:])
        peak = bombs.vm_hwm_mb(process.pid)
        print(f"{name}: node peak RSS {peak:.0f} MB")  # noqa: T201 - the figure the issue asks for
        assert peak < NODE_PEAK_MB, name
    small = bombs.deflated_cr(tmp_path / "small.dcm", 300, 200)
    assert storescu(port, [small], "-xd").returncode == 0  # and the node still stores

    process.terminate()
    process.communicate(timeout=60)
    from engine.store import Store

    store = Store.open(home, use_keyring=False)
    try:
        rows = store.db.query("SELECT source_name, rows, columns FROM images")
        assert [(r["rows"], r["columns"]) for r in rows] == [(300, 200)]
        assert len(list(store.blobs.root.glob("*/*"))) == 1  # the small one's blob, nothing else
    finally:
        store.close()
