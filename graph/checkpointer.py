"""The workspace's own checkpointer for LangGraph's server, so the CLI and the web UI see a server run's checkpoints.

By default ``langgraph dev`` keeps checkpoints of its own (in ``.langgraph_api/``), and the CLI sees a run it started
only through the workspace's database: its status as the graph recorded it, its transcript, its records. With
``"checkpointer": {"backend": "custom", "path": "luthitune.graph.checkpointer.workspace_checkpointer"}`` in
langgraph.json the server keeps them in the workspace's ``checkpoints/graph.db`` instead, with the same strict
serializer: ``luthitune status`` then shows what the run waits for, and ``luthitune answer`` / ``approve`` / the web UI
can answer it too (one process at a time, as for any run).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from luthitune.errors import ConfigError


@asynccontextmanager
async def workspace_checkpointer() -> AsyncIterator:
    """An ``AsyncSqliteSaver`` on the checkpoint database of the workspace in ``LUTHITUNE_HOME`` (else the current
    directory), the one the CLI uses for that workspace."""
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from luthitune.graph.serde import ProjectSerializer
    from luthitune.graph.state import default_workspace
    from luthitune.workspace import Workspace

    ws = await asyncio.to_thread(Workspace.open, default_workspace())
    if ws.config.checkpointer != "sqlite":
        raise ConfigError(
            f"{ws.root / 'luthitune.yaml'} keeps checkpoints in PostgreSQL ({ws.config.checkpointer}): give "
            "LangGraph's server that database with its own Postgres support, or set `checkpointer: sqlite`."
        )
    path = ws.checkpoints_dir / "graph.db"
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    async with aiosqlite.connect(str(path)) as conn:
        saver = AsyncSqliteSaver(conn, serde=ProjectSerializer())
        await saver.setup()
        yield saver
