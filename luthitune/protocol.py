"""Drive the protocol graph for one workspace: start, advance to the next interrupt, resume, inspect.

The CLI, the demo and (later) the web UI all go through this module, so there is one way to run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from langgraph.types import Command

from luthitune import answers, cancel, runlock, runs
from luthitune.errors import AnswerDue, BackendUnavailable, NotFound, RunElsewhere, RunFinished, UsageError
from luthitune.graph.builder import build_graph, checkpointer_for
from luthitune.graph.serde import UnsafeCheckpoint, locate
from luthitune.graph.state import Context
from luthitune.names import check_name
from luthitune.store import Store, storage_error
from luthitune.workspace import Workspace

RESUME = "__resume__"  # LangGraph's checkpoint channel for an interrupt's answer


class RunNotFound(NotFound):
    pass


# The run's own record of which model it talks to and which it trains (checked when the source run started).
IDENTITY_FIELDS = ("chat_identity_json", "train_identity_json", "identity_match", "identity_reason", "allow_mismatch")


def rebrand(value: Any, src: str, dst: str) -> Any:
    """``value`` with run ``src``'s ids (``src`` itself, ``src:...``) renamed to run ``dst``'s."""
    if isinstance(value, str):
        if value == src:
            return dst
        return dst + value[len(src) :] if value.startswith(src + ":") else value
    if isinstance(value, dict):
        return {k: rebrand(v, src, dst) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(rebrand(v, src, dst) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. a pending Interrupt
        return dataclasses.replace(
            value, **{f.name: rebrand(getattr(value, f.name), src, dst) for f in dataclasses.fields(value) if f.init}
        )
    return value


@dataclass
class RunStatus:
    run_id: str
    status: str  # waiting | done | ended
    next: list[str]
    interrupt: dict | None = None
    values: dict[str, Any] = field(default_factory=dict)
    # status "server": a run LangGraph's server started, whose checkpoints this workspace's checkpointer does not
    # hold; ``recorded`` is where the graph last said it stood (the runs table: "waiting:interview", "done"...)
    recorded: str | None = None
    thread_id: str | None = None


def _checkpoints_checked(fn: Callable) -> Callable:
    """A method on one run (its first argument) whose checkpoints may hold a refused value: the error then names
    the run's checkpoints that hold it, and the clean one to fork from."""

    @functools.wraps(fn)
    def wrapper(self: Protocol, run_id: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, run_id, *args, **kwargs)
        except UnsafeCheckpoint as exc:
            if exc.located:
                raise
            raise locate(self.graph.checkpointer, run_id, self.checkpoint_store()) from None

    return wrapper


class Protocol:
    def __init__(self, ws: Workspace, **inject: Any):
        self.ws = ws
        ws.ensure_dirs()
        self.store = Store(ws.db_path)
        self.graph = build_graph(checkpointer_for(ws))
        self.inject = inject

    # -- runs --

    def checkpoint_store(self) -> str:
        """Where this workspace's checkpoints are, for messages: the SQLite file or the PostgreSQL URL."""
        url = self.ws.config.checkpointer
        return str(self.ws.checkpoints_dir / "graph.db") if url == "sqlite" else url

    def start(self, settings: dict[str, Any] | None = None, run_id: str | None = None) -> str:
        run_id = check_name(run_id) if run_id is not None else "run-" + uuid.uuid4().hex[:8]
        existing = self.store.get("runs", run_id)
        if existing is not None:
            raise UsageError(
                f"A run named {run_id} already exists ({existing['status']}, started {existing['created_at'][:19]}); "
                f"its settings were fixed when it started. `luthitune resume {run_id}` continues it; choose another "
                "--name to start a new run."
            )
        runs.create(self.ws, self.store, run_id, settings)
        return run_id

    def context(self, run_id: str) -> Context:
        row = self.run_row(run_id)
        settings = json.loads(row["config_json"])["context"]
        settings["workspace"] = str(self.ws.root)
        return Context.from_settings(settings, ws=self.ws, store=self.store, **self.inject)

    def run_row(self, run_id: str) -> dict:
        row = self.store.get("runs", run_id)
        if row is None:
            known = [r["id"] for r in self.store.rows("runs", order_by="created_at desc")][:20]
            raise RunNotFound(
                f"No run named {run_id!r} in {self.ws.root}. "
                + (f"Runs: {', '.join(known)}." if known else "There are no runs yet: `luthitune run`.")
            )
        return row

    def config(self, run_id: str) -> dict:
        row = self.store.get("runs", run_id)
        return {"configurable": {"thread_id": runs.thread_of(row) if row else run_id}}

    def elsewhere(self, run_id: str, snapshot: Any) -> str | None:
        """The thread of a run LangGraph's server started and whose checkpoints are not in this workspace's
        checkpointer (the server keeps its own unless langgraph.json configures this one); else None."""
        row = self.store.get("runs", run_id)
        thread = runs.recorded_thread(row) if row else None
        return None if snapshot.values or snapshot.next else thread

    @_checkpoints_checked
    def advance(
        self,
        run_id: str,
        resume: Any = None,
        on_update: Callable[[str, dict], None] | None = None,
        on_progress: Callable[[dict], None] | None = None,
    ) -> RunStatus:
        """Run until the next interrupt or the end. ``resume`` answers the pending interrupt.

        ``on_update(node, update)`` is called as each node finishes; ``on_progress(event)`` with the progress
        events long steps emit (``{"task", "done", "total", ...metrics}``).

        One process at a time: another process working on the run makes this fail at once, naming it
        (:mod:`luthitune.runlock`); nothing is written before the lock is held.
        """
        check_name(run_id)
        ctx = self.context(run_id)
        thread = self.elsewhere(run_id, self.graph.get_state(self.config(run_id)))
        if thread is not None:
            raise UsageError(
                f"Run {run_id} was started by LangGraph's server (thread {thread}), which keeps its checkpoints: "
                "answer and resume it there (LangGraph Studio, or langgraph-sdk). To work on server runs from the CLI "
                'too, give the server this workspace\'s checkpointer (README, "LangGraph Studio").'
            )
        with runlock.hold(self.ws.data_dir, run_id):
            try:
                st = self._advance(run_id, ctx, resume, on_update, on_progress)
                self._record(st)
            except BackendUnavailable as exc:  # the step stopped like a crash: say which run to resume
                if "resume RUN" not in str(exc):
                    raise
                raise type(exc)(str(exc).replace("resume RUN", f"resume {run_id}")) from exc.__cause__
            except (sqlite3.Error, OSError) as exc:  # a full disk, a read-only file: say which, and what to do
                found = storage_error(exc, f"{self.checkpoint_store()} or {self.ws.db_path}")
                if found is None:
                    raise
                raise found from None
        return st

    def _advance(self, run_id: str, ctx: Context, resume: Any, on_update, on_progress) -> RunStatus:
        snapshot = self.graph.get_state(self.config(run_id))
        stored = (snapshot.values or {}).get("run_id", run_id)
        if stored != run_id:  # the nodes build paths from the state's run_id: it must be this run's own name
            raise UnsafeCheckpoint(
                [],
                f"Run {run_id}'s newest checkpoint in {self.checkpoint_store()} names another run ({stored!r}): it "
                "was changed outside LuthiTune, and nothing was run from it. Treat this workspace as untrusted; "
                f"`luthitune history {run_id}` lists earlier checkpoints to fork from.",
            )
        if not snapshot.values:
            payload: Any = {"run_id": run_id}
        elif not snapshot.next:
            return self.status(run_id)
        elif snapshot.interrupts and self.answered(run_id):
            payload = None  # answered, then killed while working on the answer: continue with the stored answer
        elif snapshot.interrupts and resume is not None:
            asked = snapshot.interrupts[0].value
            if isinstance(asked, dict) and "type" in asked:
                answers.parse(asked["type"], resume)  # an answer its question does not accept: refused, nothing run
            payload = Command(resume=resume)
        elif snapshot.interrupts:
            return self.status(run_id)
        else:
            payload = None  # crashed mid-step: continue from the last checkpoint
        self.store.upsert_run(run_id, status="running")
        # Cancellation (the web UI's Cancel, the CLI's Ctrl-C) stops the step at its next progress point, like a
        # crash: the checkpoint stays at the last completed step and what finished is stored.
        with cancel.scope(run_id):
            try:
                for mode, chunk in self.graph.stream(
                    payload, self.config(run_id), context=ctx, durability="sync", stream_mode=["updates", "custom"]
                ):
                    if mode == "custom":
                        if on_progress and isinstance(chunk, dict) and "progress" in chunk:
                            on_progress(chunk["progress"])
                        continue
                    for node, update in chunk.items():
                        if on_update and node != "__interrupt__":
                            on_update(node, update or {})
            except (cancel.Cancelled, KeyboardInterrupt):
                cancel.request(run_id)  # Ctrl-C: also stop generation still running on a worker thread
                self.store.upsert_run(run_id, status="cancelled")
                raise
        return self.status(run_id)

    @_checkpoints_checked
    def status(self, run_id: str, record: bool = False) -> RunStatus:
        """Where ``run_id`` stands, from its checkpoint. Reading writes nothing (it works on a read-only workspace,
        and while another process advances the run); ``record=True`` also stores it in the runs table."""
        row = self.run_row(run_id)
        snap = self.graph.get_state(self.config(run_id))
        values = dict(snap.values or {})
        thread = self.elsewhere(run_id, snap)
        if thread is not None:  # the graph keeps the runs table up to date: say what it last recorded
            values = {"cycle": row["cycle"] or 0, **({"ended": row["note"]} if row["note"] else {})}
            return RunStatus(run_id, "server", [], None, values, recorded=row["status"], thread_id=thread)
        if snap.interrupts and not self.answered(run_id):
            st = RunStatus(run_id, "waiting", list(snap.next), snap.interrupts[0].value, values)
        elif snap.next:
            st = RunStatus(run_id, "interrupted", list(snap.next), None, values)  # killed mid-step
        elif values:
            st = RunStatus(run_id, "ended" if values.get("ended") else "done", [], None, values)
        else:
            st = RunStatus(run_id, "created", [], None, values)
        if record:
            self._record(st)
        return st

    def _record(self, st: RunStatus) -> None:
        label = f"waiting:{st.interrupt.get('type')}" if st.interrupt else st.status
        values = st.values
        self.store.upsert_run(st.run_id, status=label, cycle=values.get("cycle", 0), note=values.get("ended"))

    def resumable(self, run_id: str) -> RunStatus:
        """Where ``run_id`` stands, when ``resume`` can continue it: stopped inside a step (a crash, Ctrl-C, a Cancel)
        or never started. Otherwise raises why not: :class:`RunFinished`, :class:`AnswerDue` (an answer continues
        it) or :class:`RunElsewhere` (LangGraph's server holds it). Every client asks this one question."""
        st = self.status(run_id)
        if st.status in {"done", "ended"}:
            raise RunFinished(f"Run {run_id} has already finished ({st.status}); nothing to resume.", st)
        if st.status == "waiting":
            kind = (st.interrupt or {}).get("type", "an answer")
            raise AnswerDue(
                f"Run {run_id} waits for an answer ({kind}); answering it continues the run "
                f"(`luthitune status {run_id}` shows the question).",
                st,
            )
        if st.status == "server":
            raise RunElsewhere(
                f"Run {run_id} was started by LangGraph's server, which holds its checkpoints: resume it there.", st
            )
        return st

    def answered(self, run_id: str) -> bool:
        """Whether the pending interrupt already has its answer stored in the checkpoint (the process was killed
        after the answer was given, while the node worked on it)."""
        tup = self.graph.checkpointer.get_tuple(self.config(run_id))
        return bool(tup) and any(channel == RESUME for _, channel, _ in tup.pending_writes or [])

    @_checkpoints_checked
    def fork(self, run_id: str, checkpoint_id: str, new_id: str | None = None) -> str:
        """Start a new run from checkpoint ``checkpoint_id`` of ``run_id``.

        The new run gets the checkpoint chain up to that point (so ``history`` and resume work on it) and a copy
        of every artifact the source run had stored by then, renamed to the new run id. Rows the source wrote
        later are not copied, so the fork redoes that work, e.g. new scenarios after an edited constitution.
        Adapters on disk are shared, not copied.
        """
        src_row = self.run_row(run_id)
        saver = self.graph.checkpointer
        chain = []
        thread = runs.thread_of(src_row)  # a run LangGraph's server started keeps its checkpoints under its thread
        cfg: dict | None = {"configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": checkpoint_id}}
        while cfg is not None:
            tup = saver.get_tuple(cfg)
            if tup is None:
                if not chain:
                    raise NotFound(
                        f"Run {run_id} has no checkpoint {checkpoint_id!r}; `luthitune history {run_id}` lists them."
                    )
                break
            chain.append(tup)
            cfg = tup.parent_config
        new_id = check_name(new_id, "fork name") if new_id is not None else "run-" + uuid.uuid4().hex[:8]
        if self.store.get("runs", new_id) is not None:
            raise UsageError(f"A run named {new_id!r} already exists; choose another --name.")
        # Artifacts stored by then belong to the fork: the checkpoint's time or, when it waits for an answer, the
        # time the question was asked (the node ran on, up to its interrupt, after the checkpoint was saved).
        asked = [
            i.value["asked_at"]
            for _, channel, value in chain[0].pending_writes or []
            if channel == "__interrupt__"
            for i in value
            if isinstance(i.value, dict) and "asked_at" in i.value
        ]
        cutoff = max(datetime.fromisoformat(t) for t in [chain[0].checkpoint["ts"], *asked])

        settings = json.loads(src_row["config_json"])
        settings.pop("thread_id", None)  # the fork's checkpoints are its own, under its own name
        settings["forked_from"] = {"run": run_id, "checkpoint": checkpoint_id}
        fields = {k: src_row[k] for k in ("backend", "chat_model", "base_model", *IDENTITY_FIELDS)}
        self.store.upsert_run(new_id, **fields, status="created", config_json=json.dumps(settings))
        self.store.copy_run(run_id, new_id, until=cutoff, rename=lambda row: rebrand(row, run_id, new_id))

        parent: dict = {"configurable": {"thread_id": new_id, "checkpoint_ns": ""}}
        for tup in reversed(chain):
            # At the fork point keep only the pending interrupt: the source may have answered it since, and that
            # answer (and the work it led to) belongs to the source run, not the fork.
            head = tup is chain[0]
            checkpoint = {**tup.checkpoint, "channel_values": rebrand(tup.checkpoint["channel_values"], run_id, new_id)}
            metadata = {**tup.metadata, "forked_from": f"{run_id}@{tup.config['configurable']['checkpoint_id']}"}
            # Every channel's version as "new": PostgresSaver writes only these channels' values apart from the
            # checkpoint (dicts, lists), so an empty mapping would leave them behind. SqliteSaver ignores it.
            parent = saver.put(parent, checkpoint, metadata, checkpoint["channel_versions"])
            by_task: dict[str, list] = {}
            for task_id, channel, value in tup.pending_writes or []:
                if head and channel != "__interrupt__":
                    continue
                by_task.setdefault(task_id, []).append((channel, rebrand(value, run_id, new_id)))
            for task_id, writes in by_task.items():
                saver.put_writes(parent, writes, task_id)
        self.status(new_id, record=True)
        return new_id

    def runs(self) -> list[dict]:
        """Every run, newest first. A run stored as running whose process has ended (killed, crashed) is shown as
        interrupted: no live process holds its lock."""
        rows = self.store.rows("runs", order_by="created_at desc")
        for r in rows:
            if r["status"] == "running" and runlock.holder(self.ws.data_dir, r["id"]) is None:
                r["status"] = "interrupted"
        return rows

    @_checkpoints_checked
    def history(self, run_id: str) -> list[dict]:
        self.run_row(run_id)
        out = []
        for snap in self.graph.get_state_history(self.config(run_id)):
            out.append(
                {
                    "checkpoint_id": snap.config["configurable"]["checkpoint_id"],
                    "step": snap.metadata.get("step"),
                    "next": list(snap.next),
                    "created_at": snap.created_at,
                    "interrupt": snap.interrupts[0].value.get("type") if snap.interrupts else None,
                }
            )
        return out
