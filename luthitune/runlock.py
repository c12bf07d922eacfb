"""One process per run: an advisory lock on ``data/locks/RUN.lock``, shared by the CLI and the web UI's worker.

The lock is ``flock`` on an open file, so the operating system releases it the moment its process ends, however it
ends (a crash, ``kill -9``, a closed terminal): a lock left behind by a dead process never blocks a resume. The file
itself stays, holding the last holder's pid, host and command, which the next refusal names. Two open files in
one process exclude each other too, so two jobs of one web UI cannot share a run either.
"""

from __future__ import annotations

import contextvars
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from luthitune.errors import UsageError, WorkspaceError
from luthitune.names import inside

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are then not locked
    fcntl = None  # type: ignore[assignment]


class RunBusy(UsageError):
    """Another process is working on the run."""


# The locks this context holds (the graph's steps run in copies of the caller's context): a step that the CLI or the
# web UI runs finds its run already held, a step that LangGraph's server runs takes the lock itself.
_held: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("luthitune_run_locks", default=frozenset())


def lock_path(data_dir: Path, run_id: str) -> Path:
    return inside(data_dir / "locks", f"{run_id}.lock")


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def describe(info: dict[str, Any]) -> str:
    if not info.get("pid"):
        return "another process (it has not written its pid yet)"
    what = f" ({info['command']})" if info.get("command") else ""
    since = f", since {info['since'][:19].replace('T', ' ')}" if info.get("since") else ""
    return f"process {info['pid']} on {info.get('host', '?')}{what}{since}"


@contextmanager
def hold(data_dir: Path, run_id: str, what: str | None = None) -> Iterator[None]:
    """Hold run ``run_id`` for the duration of the block, or fail at once naming the holder."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    from luthitune.store import now

    path = lock_path(data_dir, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WorkspaceError(
            f"Cannot take the lock of run {run_id} at {path}: {exc.strerror}. The workspace must be writable to run "
            "a step (read-only commands such as `luthitune status` work without it): make it writable, or copy "
            "the workspace somewhere you can write."
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(
                f"Run {run_id} is in use by {describe(_read(path))}. Only one process may work on a run at a time: "
                f"wait for it to finish or stop it, then `luthitune resume {run_id}`. "
                f"(`luthitune status {run_id}` shows where it stands.)"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": now(),
            "command": what or " ".join(["luthitune", *sys.argv[1:]])[:200],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        token = _held.set(_held.get() | {str(path)})
        try:
            yield
        finally:
            _held.reset(token)
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def step(data_dir: Path, run_id: str, what: str) -> Iterator[None]:
    """Hold run ``run_id`` for one step of the graph, unless the caller already holds it (``Protocol.advance``)."""
    if str(lock_path(data_dir, run_id)) in _held.get():
        yield
        return
    with hold(data_dir, run_id, what):
        yield


def holder(data_dir: Path, run_id: str) -> dict[str, Any] | None:
    """Who holds run ``run_id`` now (pid, host, command, since), or None when no live process does."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        path = lock_path(data_dir, run_id)
        fd = os.open(path, os.O_RDONLY)
    except (OSError, UsageError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _read(path) or {"pid": None}
    finally:
        os.close(fd)
