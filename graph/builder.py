"""``build_graph``: the protocol as one checkpointed StateGraph.

START → interview ⟲ → consent_check → draft_constitution ⟲ → generate_scenarios → self_critique
      → validate → train_dpo → evaluate → revise_constitution → generate_scenarios (next cycle) | END
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from langgraph.graph import START, StateGraph

from luthitune.errors import BackendUnavailable, ConfigError
from luthitune.graph import entry, routes
from luthitune.graph.state import Context, RunInput, RunState
from luthitune.nodes.consent import consent_check
from luthitune.nodes.constitution import draft_constitution
from luthitune.nodes.critique import self_critique
from luthitune.nodes.evaluate import evaluate
from luthitune.nodes.interview import interview
from luthitune.nodes.revise import revise_constitution
from luthitune.nodes.scenarios import generate_scenarios
from luthitune.nodes.train import train_dpo
from luthitune.nodes.validate import validate
from luthitune.workspace import Workspace

NODES = {
    "interview": interview,
    "consent_check": consent_check,
    "draft_constitution": draft_constitution,
    "generate_scenarios": generate_scenarios,
    "self_critique": self_critique,
    "validate": validate,
    "train_dpo": train_dpo,
    "evaluate": evaluate,
    "revise_constitution": revise_constitution,
}


def graph_builder() -> StateGraph:
    """The protocol's graph. Every node and router runs with its run's stored settings (:mod:`~luthitune.graph.entry`,
    which also creates the run's row when LangGraph's server starts the graph directly)."""
    g = StateGraph(RunState, context_schema=Context, input_schema=RunInput)
    for name, fn in NODES.items():
        g.add_node(name, entry.node(fn))
    g.add_edge(START, "interview")
    g.add_conditional_edges("interview", entry.router(routes.route_interview))
    g.add_conditional_edges("consent_check", entry.router(routes.route_consent))
    g.add_conditional_edges("draft_constitution", entry.router(routes.route_draft))
    g.add_edge("generate_scenarios", "self_critique")
    g.add_edge("self_critique", "validate")
    g.add_edge("validate", "train_dpo")
    g.add_conditional_edges("train_dpo", entry.router(routes.route_training))
    g.add_edge("evaluate", "revise_constitution")
    g.add_conditional_edges("revise_constitution", entry.router(routes.route_cycle))
    return g


def build_graph(checkpointer: Any = None):
    """A freshly compiled graph; pass a checkpointer (e.g. :func:`checkpointer_for`) to make it resumable."""
    return graph_builder().compile(checkpointer=checkpointer)


def sqlite_checkpointer(path: Path):
    from langgraph.checkpoint.sqlite import SqliteSaver

    from luthitune.graph.serde import ProjectSerializer
    from luthitune.store import connect, storage_error

    try:
        conn, readonly = connect(path)  # read-only when the file cannot be written: reading commands still work
        saver = SqliteSaver(conn, serde=ProjectSerializer())
        if readonly:
            saver.setup()  # its tables (in memory when the file does not exist), then no writes
            conn.execute("PRAGMA query_only = ON")
    except (sqlite3.Error, OSError) as exc:
        raise storage_error(exc, path) or ConfigError(f"Cannot open the checkpoint database {path}: {exc}.") from None
    return saver


def postgres_checkpointer(url: str):
    """A ``PostgresSaver`` on ``url`` (tables created on first use). The password, if any, comes from PGPASSWORD
    or ~/.pgpass: the configuration refuses a URL that holds one."""
    try:
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row
    except ImportError as exc:
        raise ConfigError(
            f"checkpointer is a postgresql:// URL, but {exc.name} is not installed. "
            "Install the extra: pip install 'luthitune[postgres]' (make setup does), or set `checkpointer: sqlite`."
        ) from None
    try:
        # autocommit and dict rows are what PostgresSaver expects; no prepared statements, so a pooler
        # (PgBouncer in transaction mode) in front of the server works too.
        conn = psycopg.Connection.connect(
            url, autocommit=True, prepare_threshold=None, row_factory=dict_row, connect_timeout=5
        )
    except psycopg.OperationalError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailable(
            f"The checkpoint database {url} is not reachable: {detail}.\n"
            "Start PostgreSQL (and create the database), fix `checkpointer` in luthitune.yaml, or set "
            "`checkpointer: sqlite` to keep checkpoints in checkpoints/graph.db."
        ) from None
    from luthitune.graph.serde import ProjectSerializer

    saver = PostgresSaver(conn, serde=ProjectSerializer())
    saver.setup()  # idempotent: applies the saver's own migrations
    return saver


def checkpointer_for(ws: Workspace):
    """The workspace's checkpointer: SQLite in ``checkpoints/graph.db`` (default) or PostgreSQL (``checkpointer:
    postgresql://...``). Artifacts stay in the workspace's SQLite database either way (see the README)."""
    url = ws.config.checkpointer
    if url == "sqlite":
        return sqlite_checkpointer(ws.checkpoints_dir / "graph.db")
    return postgres_checkpointer(url)


# For `langgraph dev` / LangGraph Studio (langgraph.json): the server supplies its own checkpointer.
graph = build_graph()
