"""The web UI's side of a workspace: one ``Protocol`` per thread and background jobs that advance runs.

Long work (generation, training) never runs on a request thread: :meth:`Workbench.submit` starts a job thread in
the UI server process that calls ``Protocol.advance``, so closing the browser does not stop a run, and any page
(a reload, a second tab) reads the run's true state from the checkpoint and the database. A job keeps its latest
progress event per task in memory for the live views; everything that lasts is in the database.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from luthitune import cancel
from luthitune.errors import LuthiTuneError, UsageError
from luthitune.protocol import Protocol
from luthitune.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class Job:
    run_id: str
    what: str  # what the job was asked to do, in words
    started: float = field(default_factory=time.time)
    finished: float | None = None
    node: str | None = None  # the last node that finished
    progress: dict[str, dict] = field(default_factory=dict)  # latest event per task ("scenarios", "training"...)
    outcome: str | None = None  # waiting | done | ended | interrupted | cancelled | failed
    error: str | None = None
    cancel_requested: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.finished is None

    def describe(self) -> str:
        """One line for the status bar."""
        if self.active:
            parts = [f"working: {self.what}"]
            if self.node:
                parts.append(f"after {self.node}")
            for task, e in self.progress.items():
                line = f"{task} {e.get('done', 0)}/{e.get('total') or '?'}"
                metrics = [f"{k} {e[k]:.3f}" for k in ("loss", "margin", "acc") if isinstance(e.get(k), int | float)]
                parts.append(line + (f" ({', '.join(metrics)})" if metrics else ""))
            if self.cancel_requested:
                parts.append("cancelling at the next progress point…")
            return " · ".join(parts)
        took = f"{(self.finished or time.time()) - self.started:.0f} s"
        if self.outcome == "failed":
            return f"last job failed after {took}: {self.error}"
        if self.outcome == "cancelled":
            return f"last job cancelled after {took}; Resume continues from the last completed step"
        return f"last job: {self.what} → {self.outcome} ({took})"


class Workbench:
    """A workspace opened by the UI. ``inject`` (e.g. ``llm=``) is passed to every ``Protocol``, as in the tests."""

    def __init__(self, ws: Workspace, **inject: Any):
        self.ws = ws
        self.inject = inject
        self._local = threading.local()
        self._generation = 0  # bumped when the workspace configuration changes: protocols are rebuilt
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    # -- protocols (one per thread: each has its own database connections) --

    def protocol(self) -> Protocol:
        local = self._local
        if getattr(local, "protocol", None) is None or local.generation != self._generation:
            local.protocol = Protocol(self.ws, **self.inject)
            local.generation = self._generation
        return local.protocol

    def reopen(self, ws: Workspace) -> None:
        """Use ``ws`` (the same folder, its configuration changed) from now on."""
        self.ws = ws
        self._generation += 1

    # -- jobs --

    def job(self, run_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(run_id) if run_id else None

    def busy(self, run_id: str | None) -> bool:
        job = self.job(run_id)
        return job is not None and job.active

    def submit(self, run_id: str, resume: Any = None, what: str = "continue the run") -> Job:
        """Advance ``run_id`` in the background (answering its pending interrupt with ``resume``)."""
        with self._lock:
            current = self._jobs.get(run_id)
            if current is not None and current.active:
                raise UsageError(f"Run {run_id} is already working ({current.what}); wait for it or cancel it.")
            job = Job(run_id, what)
            self._jobs[run_id] = job
        job.thread = threading.Thread(target=self._work, args=(job, resume), name=f"luthitune-ui-{run_id}", daemon=True)
        job.thread.start()
        return job

    def _work(self, job: Job, resume: Any) -> None:
        p = self.protocol()

        def on_update(node: str, update: dict) -> None:
            job.node = node
            if job.cancel_requested:  # asked before the run had started: the run is registered by now
                cancel.request(job.run_id)

        def on_progress(event: dict) -> None:
            job.progress[event.get("task", "?")] = dict(event)
            if job.cancel_requested:
                cancel.request(job.run_id)

        try:
            st = p.advance(job.run_id, resume, on_update=on_update, on_progress=on_progress)
            job.outcome = st.status
        except cancel.Cancelled:
            job.outcome = "cancelled"
        except LuthiTuneError as exc:
            job.outcome, job.error = "failed", str(exc)
        except Exception as exc:  # a bug or an unforeseen failure: say what, keep the traceback in the log
            log.error("Run %s failed:\n%s", job.run_id, traceback.format_exc())
            job.outcome, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = time.time()

    def cancel(self, run_id: str) -> bool:
        """Ask the job of ``run_id`` to stop at its next progress point. False if nothing is running for it."""
        job = self.job(run_id)
        if job is None or not job.active:
            return False
        job.cancel_requested = True
        return cancel.request(run_id) or job.active

    def pending(self, run_id: str | None, kinds: Any) -> dict:
        """The run's pending question if it is one of ``kinds``; else a clear error (nothing is answered while the
        run is working)."""
        from luthitune import facilitator

        if not run_id:
            raise UsageError("Choose a run first (Runs tab).")
        if self.busy(run_id):
            raise UsageError(f"Run {run_id} is working; wait until it stops at its next question.")
        st = self.protocol().status(run_id, record=False)
        return facilitator.expect(st, kinds, "see the status line at the top for what it waits for.")

    def wait(self, run_id: str, timeout: float | None = None) -> Job | None:
        job = self.job(run_id)
        if job is not None and job.thread is not None:
            job.thread.join(timeout)
        return job

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every running job and wait a little for them to reach a progress point."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.active]
        for j in jobs:
            self.cancel(j.run_id)
        for j in jobs:
            if j.thread is not None:
                j.thread.join(timeout)
