"""Cooperative cancellation of a running protocol step, shared by the web UI's Cancel button and the CLI's Ctrl-C.

``Protocol.advance`` runs a run's graph inside :func:`scope`, which marks the run active and binds its id to
the current context (a ``ContextVar``: LangGraph's node threads and the local backend's generation thread
inherit it). Long work calls :func:`check` at its progress points (every generated item and training step,
through ``nodes.common.progress``, and every decode step of the local backend's continuous batch). After
:func:`request`, the next check raises :class:`Cancelled`: the node stops like a crash, its finished items are
already stored, the checkpoint stays at the last completed step, and resuming redoes only what was unfinished.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from luthitune.errors import LuthiTuneError

_current: ContextVar[str | None] = ContextVar("luthitune_run", default=None)
_events: dict[str, threading.Event] = {}
_lock = threading.Lock()


class Cancelled(LuthiTuneError):
    """A run's step was cancelled on request; what finished before is saved and ``resume`` continues."""

    exit_code = 130

    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(
            f"Run {run_id} was cancelled. Everything finished before is saved; "
            f"`luthitune resume {run_id}` (or Resume in the web UI) continues from the last completed step."
        )


@contextmanager
def scope(run_id: str) -> Iterator[threading.Event]:
    """Mark ``run_id`` as running in this context until the block ends."""
    with _lock:
        event = _events.setdefault(run_id, threading.Event())
    token = _current.set(run_id)
    try:
        yield event
    finally:
        _current.reset(token)
        with _lock:
            if _events.get(run_id) is event:
                del _events[run_id]


def request(run_id: str) -> bool:
    """Ask the running step of ``run_id`` to stop at its next progress point. False if it is not running here."""
    with _lock:
        event = _events.get(run_id)
    if event is None:
        return False
    event.set()
    return True


def is_running(run_id: str) -> bool:
    with _lock:
        return run_id in _events


def requested(run_id: str | None = None) -> bool:
    run_id = run_id or _current.get()
    if run_id is None:
        return False
    with _lock:
        event = _events.get(run_id)
    return event is not None and event.is_set()


def check() -> None:
    """Raise :class:`Cancelled` if the run bound to this context was asked to stop (cheap: call it often)."""
    run_id = _current.get()
    if run_id is not None:
        event = _events.get(run_id)
        if event is not None and event.is_set():
            raise Cancelled(run_id)
