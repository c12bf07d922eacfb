"""Cooperative cancellation of a running protocol step, shared by the web UI's Cancel button and the CLI's Ctrl-C.

``Protocol.advance`` runs a run's graph inside :func:`scope`, which marks the run active and binds its stop event
to the current context (a ``ContextVar``: LangGraph's node threads and the local backend's generation thread
inherit it). Long work calls :func:`check` at its progress points (every generated item and training step,
through ``nodes.services.progress``; every decode step of the local backend's continuous batch; every transformer
block of a local model's forward pass, so a long prefill stops too). After :func:`request`, the next check raises
:class:`Cancelled`: the node stops like a crash, its finished items are already stored, the checkpoint stays at the
last completed step, and resuming redoes only what was unfinished.

A thread keeps the event it inherited, so a request made while the scope is open still reaches a worker thread
after the scope has closed (the caller gave up waiting): the worker stops at its next check instead of running on.

:func:`ctrl_c` turns SIGINT into such a request while a command drives runs in the main thread: the first Ctrl-C
stops every run active in this process at its next check, the second calls the caller's ``force`` (the CLI exits
at once).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from luthitune.errors import LuthiTuneError

_current: ContextVar[tuple[str, threading.Event] | None] = ContextVar("luthitune_run", default=None)
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
    token = _current.set((run_id, event))
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


def active() -> list[str]:
    """The runs running in this process now."""
    with _lock:
        return sorted(_events)


def is_running(run_id: str) -> bool:
    with _lock:
        return run_id in _events


def requested(run_id: str | None = None) -> bool:
    if run_id is None:
        bound = _current.get()
        return bound is not None and bound[1].is_set()
    with _lock:
        event = _events.get(run_id)
    return event is not None and event.is_set()


def check() -> None:
    """Raise :class:`Cancelled` if the run bound to this context was asked to stop (cheap: call it often)."""
    bound = _current.get()
    if bound is not None and bound[1].is_set():
        raise Cancelled(bound[0])


@contextmanager
def ctrl_c(notify: Callable[[list[str]], None], force: Callable[[list[str]], None]) -> Iterator[None]:
    """While the block runs in the main thread, Ctrl-C (SIGINT) cancels the runs active in this process.

    The first Ctrl-C requests every active run to stop and calls ``notify(run_ids)``; the work stops at its next
    check and :class:`Cancelled` comes out of ``Protocol.advance``. A second Ctrl-C calls ``force(run_ids)``
    (which may exit the process) and then raises ``KeyboardInterrupt``. With no run active, Ctrl-C raises
    ``KeyboardInterrupt`` as usual. Elsewhere than the main thread (a web UI worker), nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = threading.Event()

    def on_sigint(signum, frame) -> None:
        runs = active()
        if pressed.is_set():
            force(runs)
            raise KeyboardInterrupt
        if not runs:
            raise KeyboardInterrupt
        pressed.set()
        for run_id in runs:
            request(run_id)
        notify(runs)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
