"""Conversation memory per session: the last N turns plus a running summary, persisted.

Every turn (the user's question or task, the agent's answer or run summary, with the
sources it cites) is a row of ``agent_turns``. :meth:`ConversationMemory.context`
returns the newest :data:`MAX_TURNS` turns and a summary of the older ones; the
summary is folded forward deterministically (one short line per turn, oldest lines
dropped beyond :data:`SUMMARY_MAX_CHARS`), so it needs no language model and cannot
invent anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.store import Store

#: Turns kept verbatim in the context (the spec's ``memory.max_turns``).
MAX_TURNS = 20
#: Longest running summary kept (characters); older lines go first.
SUMMARY_MAX_CHARS = 2000
#: Characters of one turn kept in a summary line.
SUMMARY_LINE_CHARS = 160


class ConversationMemory:
    """A session's conversation, over the store."""

    def __init__(self, store: Store, max_turns: int = MAX_TURNS) -> None:
        self.store = store
        self.max_turns = max_turns

    def add(self, session_id: str, role: str, kind: str, content: str, *, sources: list | None = None,
            run_id: str | None = None, image_id: str | None = None) -> int:
        """Append a turn and fold turns beyond the window into the summary (one transaction)."""
        with self.store.db.transaction():
            turn_id = self.store.add_agent_turn(session_id, role, kind, content, sources=sources, run_id=run_id,
                                                image_id=image_id)
            self._compact(session_id)
        return turn_id

    def _compact(self, session_id: str) -> None:
        memory = self.store.get_agent_memory(session_id)
        turns = self.store.list_agent_turns(session_id, after=int(memory["summarized_until"]))
        overflow = turns[:-self.max_turns] if len(turns) > self.max_turns else []
        if not overflow:
            return
        lines = [line for line in memory["summary"].splitlines() if line.strip()]
        lines += [_line(turn) for turn in overflow]
        summary = "\n".join(lines)
        while len(summary) > SUMMARY_MAX_CHARS and len(lines) > 1:
            lines.pop(0)
            summary = "\n".join(lines)
        self.store.set_agent_memory(session_id, summary[-SUMMARY_MAX_CHARS:], overflow[-1]["id"])

    def context(self, session_id: str) -> dict[str, Any]:
        """``{"summary", "turns"}``: the running summary and the newest turns, oldest first."""
        memory = self.store.get_agent_memory(session_id)
        turns = self.store.list_agent_turns(session_id, after=int(memory["summarized_until"]), limit=self.max_turns)
        return {"summary": memory["summary"],
                "turns": [{"role": t["role"], "kind": t["kind"], "content": t["content"], "sources": t["sources"],
                           "run_id": t["run_id"], "created_at": t["created_at"]} for t in turns]}


def _line(turn: dict[str, Any]) -> str:
    text = " ".join(str(turn["content"]).split())
    if len(text) > SUMMARY_LINE_CHARS:
        text = text[:SUMMARY_LINE_CHARS - 3] + "..."
    return f"{turn['role']} ({turn['kind']}): {text}"
