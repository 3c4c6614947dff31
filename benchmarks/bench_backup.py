"""Backup throughput beside ``cp``, and key rotation time at two data sizes.

A data directory is filled with encrypted blobs (random 2 MB instances written through the
store, as the DICOM node writes them) up to ``--gigabytes``; then:

* ``medvision backup`` (:func:`engine.store.backup.backup`: online database backup, every
  blob copied with its SHA-256, fsync, then the verify pass re-reading every copy) in MB/s,
  beside ``cp -r`` of the same blobs folder followed by ``sync`` (no hashing, no verify),
  once before and once after the backup (the shared disk's speed drifts);
* key rotation (:func:`engine.store.rotation.rotate`) with the blobs at ``--small-gigabytes``
  and at ``--gigabytes``: envelope encryption makes it independent of the blob volume.

The page cache is not dropped (shared machine): both copies read what the fill wrote, so
run with more data than free memory for disk-bound figures.

    .venv/bin/python benchmarks/bench_backup.py [--gigabytes 1.5] [--small-gigabytes 0.1] [--dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.store import Store  # noqa: E402
from engine.store.backup import backup  # noqa: E402
from engine.store.keys import KEY_FILE_NAME, load_key_file  # noqa: E402
from engine.store.rotation import rotate  # noqa: E402

INSTANCE_BYTES = 2 << 20


def fill(home: Path, total_bytes: int, start: int = 0) -> int:
    """Add blobs until the folder holds ``total_bytes`` of instances; returns the count."""
    store = Store.open(home, use_keyring=False)
    try:
        count = total_bytes // INSTANCE_BYTES
        payload = bytearray(os.urandom(INSTANCE_BYTES))
        for n in range(start, count):
            payload[:8] = n.to_bytes(8, "big")
            store.blobs.write_bytes(f"{n:032x}", bytes(payload))
        return count
    finally:
        store.close()


def timed_rotation(home: Path) -> float:
    started = time.perf_counter()
    rotate(home, use_keyring=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigabytes", type=float, default=1.5)
    parser.add_argument("--small-gigabytes", type=float, default=0.1)
    parser.add_argument("--dir", help="where to build the data directory (default: a temp dir)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    os.environ["MEDVISION_KEYRING"] = "0"
    os.environ.pop("MEDVISION_DB_KEY", None)
    root = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=args.dir))
    results: dict = {}
    try:
        home = root / "home"
        small = fill(home, int(args.small_gigabytes * 1e9))
        results["rotation_small"] = {"instances": small, "seconds": min(timed_rotation(home) for _ in range(3))}
        count = fill(home, int(args.gigabytes * 1e9), start=small)
        results["rotation_large"] = {"instances": count, "seconds": min(timed_rotation(home) for _ in range(3))}
        blob_bytes = sum(p.stat().st_size for p in (home / "blobs").glob("*/*.mvb"))

        def cp_sync(name: str) -> float:
            started = time.perf_counter()
            subprocess.run(["cp", "-r", str(home / "blobs"), str(root / name)], check=True)
            subprocess.run(["sync"], check=True)
            return time.perf_counter() - started

        subprocess.run(["sync"], check=True)
        cp_before = cp_sync("cp-before")
        started = time.perf_counter()
        result = backup(home, root / "backup", load_key_file(home / KEY_FILE_NAME))
        backup_s = time.perf_counter() - started
        cp_after = cp_sync("cp-after")
        mb = blob_bytes / 1e6
        results["backup"] = {"instances": count, "megabytes": round(mb, 1), "backup_s": round(backup_s, 2),
                             "backup_mb_s": round(result["bytes"] / 1e6 / backup_s, 1),
                             "cp_sync_before_mb_s": round(mb / cp_before, 1),
                             "cp_sync_after_mb_s": round(mb / cp_after, 1)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name, value in results.items():
        print(f"{name}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
