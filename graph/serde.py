"""Checkpoints hold only this project's types: LangGraph's serializer with a strict allow-list.

A workspace is untrusted input (a colleague's folder, a downloaded run). LangGraph's ``JsonPlusSerializer`` rebuilds
msgpack "ext" values by importing ``module.name`` and calling it, and by default it allows any name with a warning,
so a checkpoint row holding ``("os", "system", ["touch pwned"])`` would run a command on ``luthitune status``.

:class:`ProjectSerializer` allows only LangGraph's own safe types (datetimes, ``Interrupt``, ``Command``, ``Send``,
messages...) plus :data:`PROJECT_TYPES`: the run state is plain values (ids, counters, strings), so nothing else is
ever stored. Anything else is blocked *before* it is called, and, instead of the library's silent fallback to the
raw value, loading fails with :class:`UnsafeCheckpoint`. :func:`locate` then finds which checkpoint (and which
pending write) holds it, so the error can name it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from typing import Any

from langgraph.checkpoint.serde.event_hooks import register_serde_event_listener
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from luthitune.errors import WorkspaceError

# Types of this project's own that may appear in a checkpoint, beyond LangGraph's safe list. The state is plain
# values and interrupts carry dicts, so there are none; add a (module, name) here if the state ever holds one.
PROJECT_TYPES: tuple[tuple[str, str], ...] = ()

_blocked: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("luthitune_blocked_types", default=None)


def _on_serde_event(event: dict) -> None:
    found = _blocked.get()
    if found is not None and event.get("kind", "").endswith("blocked"):
        name = ".".join(str(event.get(k)) for k in ("module", "name", "method") if event.get(k))
        found.append(name)


register_serde_event_listener(_on_serde_event)
# The library logs each refusal as a warning; UnsafeCheckpoint says it once, with the checkpoint and what to do.
logging.getLogger("langgraph.checkpoint.serde.jsonplus").setLevel(logging.ERROR)


class UnsafeCheckpoint(WorkspaceError):
    """A checkpoint holds a type this project never stores; nothing from it was run."""

    def __init__(self, types: list[str], where: str = ""):
        self.types = sorted(set(types))
        self.located = bool(where)
        super().__init__(
            where or f"A checkpoint holds values of type {', '.join(self.types)}, which LuthiTune never stores."
        )


class ProjectSerializer(JsonPlusSerializer):
    """``JsonPlusSerializer`` in strict mode, which refuses (rather than skips) a value of a type not allowed."""

    def __init__(self) -> None:
        super().__init__(pickle_fallback=False, allowed_msgpack_modules=PROJECT_TYPES)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind = data[0]
        if kind not in ("null", "bytes", "bytearray", "json", "msgpack"):
            raise UnsafeCheckpoint([f"{kind} data"])  # e.g. pickle: never written by this project
        token = _blocked.set([])
        try:
            value = super().loads_typed(data)
            blocked = _blocked.get() or []
        finally:
            _blocked.reset(token)
        if blocked:
            raise UnsafeCheckpoint(blocked)
        return value


# -- which checkpoint --


def _rows(saver: Any, thread_id: str) -> Iterator[tuple[str, str, tuple[str, bytes]]]:
    """(checkpoint id, what, serialized value) of every stored value of ``thread_id``, newest checkpoint first."""
    conn = saver.conn
    if hasattr(saver, "jsonplus_serde"):  # SqliteSaver
        cur = conn.execute(
            "select checkpoint_id, type, checkpoint from checkpoints where thread_id = ? order by checkpoint_id desc",
            [thread_id],
        )
        for cid, kind, blob in cur.fetchall():
            yield cid, "the checkpoint", (kind, blob)
        cur = conn.execute(
            "select checkpoint_id, task_id, channel, type, value from writes where thread_id = ? "
            "order by checkpoint_id desc",
            [thread_id],
        )
        for cid, task, channel, kind, blob in cur.fetchall():
            yield cid, f"a pending write (task {task}, channel {channel})", (kind, blob)
        return
    # PostgresSaver: channel values live in checkpoint_blobs, keyed by channel and version
    with conn.cursor() as cur:
        cur.execute(
            "select c.checkpoint_id, b.channel, b.type, b.blob from checkpoint_blobs b join checkpoints c "
            "on c.thread_id = b.thread_id and c.checkpoint_ns = b.checkpoint_ns "
            "and c.checkpoint -> 'channel_versions' ->> b.channel = b.version "
            "where b.thread_id = %s order by c.checkpoint_id desc",
            [thread_id],
        )
        for row in cur.fetchall():
            yield row["checkpoint_id"], f"the value of channel {row['channel']}", (row["type"], bytes(row["blob"]))
        cur.execute(
            "select checkpoint_id, task_id, channel, type, blob from checkpoint_writes where thread_id = %s "
            "order by checkpoint_id desc",
            [thread_id],
        )
        for row in cur.fetchall():
            yield (
                row["checkpoint_id"],
                f"a pending write (task {row['task_id']}, channel {row['channel']})",
                (row["type"], bytes(row["blob"])),
            )


def _parents(saver: Any, thread_id: str) -> dict[str, str | None]:
    conn = saver.conn
    sql = "select checkpoint_id, parent_checkpoint_id from checkpoints where thread_id = {}"
    if hasattr(saver, "jsonplus_serde"):
        return dict(conn.execute(sql.format("?"), [thread_id]).fetchall())
    with conn.cursor() as cur:
        cur.execute(sql.format("%s"), [thread_id])
        return {r["checkpoint_id"]: r["parent_checkpoint_id"] for r in cur.fetchall()}


def locate(saver: Any, thread_id: str, store: str) -> UnsafeCheckpoint:
    """The error for run ``thread_id``: which checkpoints hold a refused value, and where to start over from.
    ``store`` names the checkpoint database (a file or a URL) in the message."""
    serde = ProjectSerializer()
    bad: dict[str, list[str]] = {}
    types: list[str] = []
    for cid, what, data in _rows(saver, thread_id):
        try:
            serde.loads_typed(data)
        except UnsafeCheckpoint as exc:
            bad.setdefault(cid, []).append(f"{what}: {', '.join(exc.types)}")
            types += exc.types
        except Exception as exc:  # unreadable for another reason: still not to be trusted
            bad.setdefault(cid, []).append(f"{what}: unreadable ({type(exc).__name__})")
    parents = _parents(saver, thread_id)
    lines = [f"  - checkpoint {cid}: {'; '.join(v)}" for cid, v in bad.items()]
    # The newest checkpoint below every bad one whose own chain is clean: a fork from it leaves the bad ones behind.
    clean = None
    oldest = min(bad) if bad else None
    cur = parents.get(oldest) if oldest else None
    while cur is not None and clean is None:
        chain, node = [], cur
        while node is not None:
            chain.append(node)
            node = parents.get(node)
        clean = cur if not any(c in bad for c in chain) else None
        cur = parents.get(cur)
    way = (
        f"To continue the work from before it, fork a new run from the last clean checkpoint: "
        f"`luthitune fork {thread_id} --checkpoint {clean}`."
        if clean
        else f"No earlier checkpoint of {thread_id} is clean: start a new run (`luthitune run`)."
    )
    return UnsafeCheckpoint(
        types,
        f"Run {thread_id}'s checkpoints in {store} hold values of a type LuthiTune never stores "
        f"({', '.join(sorted(set(types))) or 'unreadable data'}); they were refused, nothing in them was run:\n"
        + ("\n".join(lines) if lines else "  (the refused value is in a checkpoint of this run)")
        + "\nThe checkpoint database was changed outside LuthiTune: treat this workspace as untrusted and check "
        f"where it came from. {way}",
    )
