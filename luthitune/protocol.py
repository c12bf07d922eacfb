"""Drive the protocol graph for one workspace: start, advance to the next interrupt, resume, inspect.

The CLI, the demo and (later) the web UI all go through this module, so there is one way to run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langgraph.types import Command

from luthitune.config import Workspace
from luthitune.errors import LuthiTuneError
from luthitune.graph.builder import build_graph, sqlite_checkpointer
from luthitune.graph.state import Context
from luthitune.store import Store


class RunNotFound(LuthiTuneError):
    exit_code = 2


@dataclass
class RunStatus:
    run_id: str
    status: str  # waiting | done | ended
    next: list[str]
    interrupt: dict | None = None
    values: dict[str, Any] = field(default_factory=dict)


class Protocol:
    def __init__(self, ws: Workspace, **inject: Any):
        self.ws = ws
        ws.ensure_dirs()
        self.store = Store(ws.db_path)
        self.graph = build_graph(sqlite_checkpointer(ws.checkpoints_dir / "graph.db"))
        self.inject = inject

    # -- runs --

    def start(self, settings: dict[str, Any] | None = None, run_id: str | None = None) -> str:
        run_id = run_id or "run-" + uuid.uuid4().hex[:8]
        ctx = Context(workspace=str(self.ws.root), **(settings or {}))
        cfg = self.ws.config
        self.store.upsert_run(
            run_id,
            backend=cfg.backend,
            chat_model=cfg.chat_model,
            base_model=cfg.base_model,
            status="created",
            config_json=json.dumps({"context": ctx.settings(), "workspace": cfg.model_dump(mode="json")}),
        )
        return run_id

    def context(self, run_id: str) -> Context:
        row = self.run_row(run_id)
        settings = json.loads(row["config_json"])["context"]
        settings["workspace"] = str(self.ws.root)
        return Context.from_settings(settings, **self.inject)

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
        return {"configurable": {"thread_id": run_id}}

    def advance(
        self, run_id: str, resume: Any = None, on_update: Callable[[str, dict], None] | None = None
    ) -> RunStatus:
        """Run until the next interrupt or the end. ``resume`` answers the pending interrupt."""
        ctx = self.context(run_id)
        snapshot = self.graph.get_state(self.config(run_id))
        if not snapshot.values:
            payload: Any = {"run_id": run_id, "cycle": 0}
        elif not snapshot.next:
            return self.status(run_id)
        elif snapshot.interrupts and resume is not None:
            payload = Command(resume=resume)
        elif snapshot.interrupts:
            return self.status(run_id)
        else:
            payload = None  # crashed mid-step: continue from the last checkpoint
        self.store.upsert_run(run_id, status="running")
        for chunk in self.graph.stream(
            payload, self.config(run_id), context=ctx, durability="sync", stream_mode="updates"
        ):
            for node, update in chunk.items():
                if on_update and node != "__interrupt__":
                    on_update(node, update or {})
        return self.status(run_id)

    def status(self, run_id: str) -> RunStatus:
        self.run_row(run_id)
        snap = self.graph.get_state(self.config(run_id))
        values = dict(snap.values or {})
        if snap.interrupts:
            st = RunStatus(run_id, "waiting", list(snap.next), snap.interrupts[0].value, values)
        elif snap.next:
            st = RunStatus(run_id, "interrupted", list(snap.next), None, values)  # killed mid-step
        elif values:
            st = RunStatus(run_id, "ended" if values.get("ended") else "done", [], None, values)
        else:
            st = RunStatus(run_id, "created", [], None, values)
        label = f"waiting:{st.interrupt.get('type')}" if st.interrupt else st.status
        self.store.upsert_run(run_id, status=label, cycle=values.get("cycle", 0), note=values.get("ended"))
        return st

    def runs(self) -> list[dict]:
        return self.store.rows("runs", order_by="created_at desc")

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
