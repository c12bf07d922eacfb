"""A run's record: the settings fixed when it starts, and where its checkpoints are.

The CLI and the web UI start a run with :meth:`luthitune.protocol.Protocol.start`; LangGraph's server (``langgraph
dev``, Studio) starts the graph directly, and the graph creates the run's row on first entry
(:mod:`luthitune.graph.entry`). Both go through :func:`create`, so a run's settings are the same whichever way it
started: the workspace's configuration (``practice:``, ``sampling:``, ``evaluation:``, config/hyperparameters.yaml),
with what the caller asked for on top.
"""

from __future__ import annotations

import json
from typing import Any

from luthitune import identity
from luthitune.config import EvaluationConfig
from luthitune.store import Store
from luthitune.training.config import check_trained_model, merge
from luthitune.workspace import HYPERPARAMETERS_FILE, Workspace


def context_for(ws: Workspace, settings: dict[str, Any] | None = None):
    """The context of a new run in ``ws``: the workspace's defaults, then ``settings`` (Context fields, with
    ``train`` and ``evaluation`` as overrides of the configured sections), validated."""
    from luthitune.graph.state import Context

    cfg = ws.config
    practice = cfg.practice.model_dump()
    defaults = {
        "deliberate_temperature": cfg.sampling.deliberate_temperature,
        "n_scenarios": practice.pop("scenarios"),
        **{k: v for k, v in practice.items() if k in Context.__dataclass_fields__},
    }
    settings = dict(settings or {})
    # The training hyperparameters in force: config/hyperparameters.yaml with the run's overrides, fixed now.
    hp = merge(ws.hyperparameters(), settings.pop("train", None))
    check_trained_model(hp, cfg.base_model, ws.root / HYPERPARAMETERS_FILE)
    evaluation = {**cfg.evaluation.model_dump(mode="json"), **(settings.pop("evaluation", None) or {})}
    evaluation = EvaluationConfig.model_validate(evaluation)
    settings.pop("workspace", None)
    settings.pop("probes", None)  # the probe sets come from evaluation.probes, read and checked now
    return Context(
        workspace=str(ws.root),
        **{**defaults, **settings, "train": hp.model_dump(mode="json")},
        evaluation=evaluation.model_dump(mode="json"),
        probes=ws.probe_sets(evaluation.probes),  # fixed for the run
    )


def create(
    ws: Workspace, store: Store, run_id: str, settings: dict[str, Any] | None = None, thread_id: str | None = None
):
    """Record a new run ``run_id`` and return its context. The model identity is checked first: a mismatch stops
    the run here unless the configuration says allow_mismatch (and then the run records that it did).

    ``thread_id``: the LangGraph thread that holds the run's checkpoints, recorded for a run the graph started on
    its first entry (LangGraph's server: the thread may hold another name than the run's); the CLI reads that
    thread."""
    ctx = context_for(ws, settings)
    ids = identity.check(ws)
    identity.enforce(ws, ids)
    cfg = ws.config
    record: dict[str, Any] = {"context": ctx.settings(), "workspace": cfg.model_dump(mode="json")}
    if thread_id is not None:
        record["thread_id"] = thread_id
    store.upsert_run(
        run_id,
        backend=cfg.backend,
        chat_model=cfg.chat_model,
        base_model=cfg.base_model,
        status="created",
        config_json=json.dumps(record),
    )
    identity.record_run(store, run_id, ids)
    return ctx


def recorded_thread(row: dict) -> str | None:
    """The LangGraph thread a run started by the graph itself (LangGraph's server) recorded; None for the CLI's."""
    return json.loads(row.get("config_json") or "{}").get("thread_id")


def thread_of(row: dict) -> str:
    """The LangGraph thread that holds run ``row``'s checkpoints (the run's own name unless it recorded one)."""
    return recorded_thread(row) or row["id"]


def server_note(st: Any) -> str:
    """Where a run LangGraph's server started stands (a ``RunStatus`` of status ``server``), as the graph last
    recorded it, and where to answer it."""
    recorded = (st.recorded or "created").replace("waiting:", "waiting for ").replace("_", " ")
    return (
        f"Started by LangGraph's server (thread {st.thread_id}), which keeps its checkpoints; last recorded: "
        f"{recorded}. Answer and resume it there (LangGraph Studio, or langgraph-sdk); its transcript and records "
        "are in this workspace's database."
    )
