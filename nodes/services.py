"""The services a node reaches through its runtime (the workspace, the store, the chat model), and the helpers every
node shares: row keys, approval questions, progress."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from luthitune import answers, cancel
from luthitune import constitution as C
from luthitune.constitution import P, from_json
from luthitune.graph.state import Context, Evaluator, RunState, Trainer
from luthitune.store import Store, now
from luthitune.workspace import Workspace


@cache
def _workspace(root: str) -> Workspace:
    return Workspace.open(root)


@cache
def _store(db_path: str) -> Store:
    return Store(db_path)


def forget_workspace() -> None:
    """Read the workspace's configuration again on next use (after the web UI changed ``luthitune.yaml``), where
    the nodes opened it themselves."""
    _workspace.cache_clear()


def workspace(runtime: Runtime[Context]) -> Workspace:
    """The caller's workspace (a :class:`~luthitune.protocol.Protocol`'s), else the context's folder, opened once
    per process (LangGraph's server passes only the folder)."""
    given = runtime.context.seams.ws
    return given if given is not None else _workspace(runtime.context.workspace)


def store(runtime: Runtime[Context]) -> Store:
    given = runtime.context.seams.store
    return given if given is not None else _store(str(workspace(runtime).db_path))


def llm(
    runtime: Runtime[Context],
    adapter: str | None = None,
    adapter_path: str | None = None,
    temperature: float | None = None,
) -> Any:
    """The chat model; with ``adapter``, the trained model: the adapter on the interviewed weights.

    On the local backend that is the runtime's own weights with the adapter switched on. On a server backend it is
    the model `luthitune export ollama` created from this adapter when there is one, else the adapter on the local
    copy of the trained weights (base_model): the model that proposes amendments is always the model trained.
    """
    injected = runtime.context.seams.chat_model(adapter, adapter_path)
    if injected is not None:
        return injected
    from luthitune.backends import make_chat_model

    ws = workspace(runtime)
    if adapter and ws.config.backend != "local":
        model = _trained_model(ws, store(runtime), adapter, adapter_path)
    else:
        model = make_chat_model(ws)
        if adapter:
            model.runtime.load_adapter(adapter_path, adapter)
            model = model.model_copy(update={"adapter": adapter})
    if temperature is not None:
        model = model.model_copy(update={"temperature": temperature})
    return model


def _trained_model(ws: Workspace, s: Store, adapter: str, adapter_path: str | None) -> Any:
    from pathlib import Path

    from luthitune import identity
    from luthitune.backends import local_runtime, make_chat_model
    from luthitune.backends.local import LocalChatModel

    exported = identity.trained_model(s, Path(adapter_path)).ollama_model if adapter_path else None
    if exported and ws.config.backend == "ollama":
        return make_chat_model(ws, model=exported)
    rt = local_runtime(ws, ws.config.base_model)
    rt.load_adapter(adapter_path, adapter)
    sp = ws.config.sampling
    return LocalChatModel(
        runtime=rt,
        model_name=f"{ws.config.base_model}+{adapter}",
        temperature=sp.temperature,
        top_p=sp.top_p,
        max_new_tokens=sp.max_new_tokens,
        repetition_penalty=sp.repetition_penalty,
        seed=sp.seed,
        concurrency=8,
        adapter=adapter,
    )


def trainer(runtime: Runtime[Context], default: Trainer) -> Trainer:
    """The run's trainer: the one the caller passed in (:class:`~luthitune.graph.state.Seams`), else ``default``,
    the node's real one."""
    return runtime.context.seams.trainer or default


def evaluator(runtime: Runtime[Context], default: Evaluator) -> Evaluator:
    """The run's evaluator: the one the caller passed in, else ``default``, the node's real one."""
    return runtime.context.seams.evaluator or default


def retries(runtime: Runtime[Context]) -> int:
    return workspace(runtime).config.structured_retries


def scenario_retries(runtime: Runtime[Context]) -> int:
    return workspace(runtime).config.practice.scenario_retries


def concurrency(runtime: Runtime[Context]) -> int:
    return workspace(runtime).config.concurrency


def principles(rt: Runtime[Context], state: RunState) -> list[P]:
    row = store(rt).constitutions.get(state["constitution_id"])
    import json

    return from_json(json.loads(row["principles_json"]))


def recorder(rt: Runtime[Context], state: RunState, step: str, item_ids: list[str]):
    """An ``on_attempt`` callback for :func:`~luthitune.backends.structured.generate_structured`: every failed
    answer is stored with its raw text and reasons, under the id of the item it was for."""
    s = store(rt)

    def record(i: int, attempt: int, raw: str, reasons: list[str]) -> None:
        s.record_attempt(state["run_id"], state.get("cycle", 0), step, item_ids[i], attempt, raw, reasons)

    return record


def conditions_note(rt: Runtime[Context], state: RunState) -> str:
    """The model's own conditions for taking part, for the practice and revision prompts ("" when it set none)."""
    found = store(rt).conditions(state["run_id"])
    if not found:
        return ""
    listed = "\n".join(f"- {c}" for c in found)
    return f"\nThe conditions you set for taking part, which this practice keeps to:\n{listed}\n"


def key(state: RunState, kind: str, n: int | str) -> str:
    """Deterministic row id: a re-run node writes the same ids, so rows are updated, never duplicated."""
    return f"{state['run_id']}:c{state.get('cycle', 0)}:{kind}{n}"


def ask(question: answers.Question) -> Any:
    """Pause for a human answer (a LangGraph interrupt) to ``question``; returns the answer, parsed into the
    :mod:`luthitune.answers` model it fits (the interview's: its message). ``asked_at`` dates the question: a fork
    from this point copies the artifacts stored up to then. The schema of the answers it takes goes with it, in the
    payload's ``answers`` and as LangGraph's ``response_schema``. An answer that fits none is not guessed at: the
    question is asked again with ``refused`` saying why and listing the answers accepted. On resume the node re-runs
    and this returns the answer."""
    payload = question.payload()
    while True:
        value = interrupt({**payload, "asked_at": now()}, response_schema=payload["answers"])
        try:
            return answers.parse(question.kind, value)
        except answers.AnswerRefused as exc:
            payload = {**payload, "refused": str(exc)}


def ask_until_usable(question: Callable[[list[str]], answers.Question]) -> Any:
    """Ask ``question(problems)`` until the answer can be used: any answer but an edit, or an edit whose text has
    principles that pass their checks; a failing edit is asked for again with its problems (``[]`` at first)."""
    problems: list[str] = []
    while True:
        answer = ask(question(problems))
        problems = C.edit_problems(answer.text) if isinstance(answer, answers.Edit) else []
        if not problems:
            return answer


def progress(runtime: Runtime[Context], task: str, done: int, total: int, **info: Any) -> None:
    """Report progress of a long step on the graph's ``custom`` stream (the CLI draws it as a rich bar, the web UI
    a live view). Also a cancellation point: after a Cancel (web UI) or Ctrl-C, this raises ``Cancelled``; the
    items reported so far are stored, so resuming redoes only the unfinished ones."""
    runtime.stream_writer({"progress": {"task": task, "done": done, "total": total, **info}})
    cancel.check()
