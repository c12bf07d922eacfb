"""Every step runs with its run's own settings, and the run's record follows the graph, whoever drives it.

The CLI and the web UI create a run's row first (``Protocol.start``) and pass its settings as the context.
LangGraph's server (``langgraph dev``, Studio) starts the graph directly, with a context built from whatever its
caller gave (maybe nothing) and a thread id for a name. On first entry the run's row is created from that context
(:func:`luthitune.runs.create`: the workspace's configuration fills in what was not given); from then on every node
and router runs with the settings stored on the row, so a resume that passes another context, or none, cannot change
how the run goes on. The row's status follows the graph (waiting for which answer, ended, done), which is how
``luthitune status`` and the web UI see a run whose checkpoints the server keeps.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from typing import Any

from langgraph.config import get_config
from langgraph.errors import GraphInterrupt
from langgraph.graph import END
from langgraph.runtime import Runtime

from luthitune.graph.state import Context, RunState


def _thread_id() -> str | None:
    try:
        return get_config().get("configurable", {}).get("thread_id")
    except RuntimeError:  # called outside a graph run
        return None


def enter(state: RunState, runtime: Runtime[Context]) -> tuple[RunState, Runtime[Context], bool]:
    """The state with its run id, the runtime with the run's stored settings, and whether the run id is new to the
    state (the caller gave none: the thread's id names the run). Creates the run's row on first entry."""
    from luthitune import runs
    from luthitune.names import check_name
    from luthitune.nodes import services

    ctx = runtime.context
    thread = _thread_id()
    run_id = state.get("run_id") or check_name(thread, "thread id (the run's name when the input gives none)")
    s = services.store(runtime)
    row = s.get("runs", run_id)
    if row is None:
        runs.create(services.workspace(runtime), s, run_id, ctx.given(), thread_id=thread)
        row = s.get("runs", run_id)
    stored = json.loads(row["config_json"])["context"]
    settled = Context.from_settings({**stored, "workspace": ctx.workspace}).with_seams(ctx.seams)
    return {**state, "run_id": run_id}, runtime.override(context=settled), not state.get("run_id")


def _record(runtime: Runtime[Context], run_id: str, **fields: Any) -> None:
    from luthitune.nodes import services

    services.store(runtime).upsert_run(run_id, **fields)


def node(fn: Callable[[RunState, Runtime[Context]], dict]) -> Callable[[RunState, Runtime[Context]], dict]:
    """``fn`` run with the run's settings; a question it asks is recorded on the run's row as ``waiting:TYPE``."""

    def step(state: RunState, runtime: Runtime[Context]) -> dict:
        from luthitune import runlock
        from luthitune.nodes import services

        state, runtime, named = enter(state, runtime)
        run_id = state["run_id"]
        with runlock.step(services.workspace(runtime).data_dir, run_id, f"LangGraph graph, thread {_thread_id()}"):
            _record(runtime, run_id, status="running", cycle=state.get("cycle", 0))
            try:
                update = fn(state, runtime) or {}
            except GraphInterrupt as exc:
                asked = exc.args[0][0].value if exc.args and exc.args[0] else {}
                kind = asked.get("type") if isinstance(asked, dict) else None
                _record(runtime, run_id, status=f"waiting:{kind}" if kind else "waiting")
                raise
        return {"run_id": run_id, **update} if named else update

    return _named(step, fn)


def router(fn: Callable[..., str]) -> Callable[[RunState, Runtime[Context]], str]:
    """``fn`` run with the run's settings; a run that reaches the end is recorded as ``done`` or ``ended``."""
    takes_runtime = len(inspect.signature(fn).parameters) > 1

    def route(state: RunState, runtime: Runtime[Context]) -> str:
        state, runtime, _ = enter(state, runtime)
        to = fn(state, runtime) if takes_runtime else fn(state)
        if to == END:
            ended = state.get("ended")
            _record(runtime, state["run_id"], status="ended" if ended else "done", note=ended)
        return to

    return _named(route, fn)


def _named(wrapper: Callable, fn: Callable) -> Callable:
    """``wrapper`` under ``fn``'s name, with ``fn``'s return type (a router's ``Literal[...]`` is how LangGraph knows
    where it may lead) but its own parameters (it always takes the runtime)."""
    wrapper.__name__ = wrapper.__qualname__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    wrapper.__module__ = fn.__module__
    hints = typing.get_type_hints(wrapper)
    hints["return"] = typing.get_type_hints(fn).get("return", hints.get("return"))
    wrapper.__annotations__ = hints
    return wrapper
