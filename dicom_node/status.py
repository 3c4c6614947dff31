"""``dicom-node status``: what the node is doing, read from the store (works while it runs).

A node is *listening* when it registered and its heartbeat is younger than
:data:`HEARTBEAT_STALE_S` and it has not recorded a stop.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from engine.store import Store

HEARTBEAT_S = 5.0
HEARTBEAT_STALE_S = 3 * HEARTBEAT_S


def node_status(store: Store) -> dict[str, Any]:
    """Listening nodes, associations (open: accepted and not yet ended; rejected today),
    instances received today, resends with other content today (``duplicates_today``,
    the latest in ``latest_duplicates``), queue depth, failures."""
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0).isoformat(timespec="milliseconds")
    fresh = (now - timedelta(seconds=HEARTBEAT_STALE_S)).isoformat(timespec="milliseconds")
    status = store.dicom_status(midnight, alive_after=fresh)
    status["listening"] = [
        {k: n[k] for k in ("node", "ae_title", "host", "port", "pid", "started_at", "heartbeat_at")}
        for n in status.pop("nodes") if n["stopped_at"] is None and n["heartbeat_at"] >= fresh]
    status["events_last_id"] = store.last_event_id()
    return status


def format_status(status: dict[str, Any]) -> str:
    """Human-readable lines for the terminal."""
    nodes = [f"{n['ae_title']}@{n['host']}:{n['port']} (pid {n['pid']})" for n in status["listening"]]
    lines = [f"listening: {', '.join(nodes) or 'no'}"]
    for key, value in status.items():
        if key == "latest_duplicates":
            lines += [f"  {d['at']} {d['outcome'].replace('_', ' ')} ({d['policy']}): image {d['image_id']}"
                      + (f" supersedes {d['supersedes']}" if d.get("supersedes") else "")
                      + f", association {d['association_id']}" for d in value]
        elif key != "listening":
            lines.append(f"{key.replace('_', ' ')}: {value}")
    return "\n".join(lines)
