"""The graph as LangGraph's server drives it: input alone, a context from a mapping, its own checkpoints; the schemas
it publishes; the answers each interrupt says it takes."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
import yaml
from fakes import SchemaFakeModel, allow_small_runs, evaluator
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from pydantic import TypeAdapter
from typer.testing import CliRunner

from luthitune import answers
from luthitune import facilitator as A
from luthitune.cli import app
from luthitune.cli.runs import NEXT_STEP
from luthitune.errors import UsageError
from luthitune.graph.builder import build_graph, graph
from luthitune.graph.state import Context, RunInput, RunState
from luthitune.protocol import Protocol
from luthitune.training.dpo import TrainResult

runner = CliRunner()


def test_the_published_schemas_have_input_output_and_no_test_hooks():
    TypeAdapter(RunState).json_schema()  # typing.TypedDict would be refused by pydantic on Python < 3.12
    TypeAdapter(RunInput).json_schema()
    assert graph.get_input_jsonschema()["properties"] == {"run_id": {"title": "Run Id", "type": "string"}}
    assert "ended" in graph.get_output_jsonschema()["properties"]
    context = graph.get_context_jsonschema()
    assert {"autopilot", "n_scenarios", "workspace"} <= set(context["properties"])
    assert not {"llm", "trainer", "evaluator", "seams"} & set(context["properties"])
    assert "workspace" not in context.get("required", [])  # from LUTHITUNE_HOME, else the current directory


def test_seams_are_not_settings(tmp_path, monkeypatch):
    fake = object()
    ctx = Context.from_settings({"workspace": str(tmp_path), "autopilot": True}, llm=fake)
    assert ctx.seams.llm is fake and ctx.autopilot
    assert not {"llm", "trainer", "evaluator", "_seams"} & set(ctx.settings())
    assert Context(workspace=str(tmp_path)).seams.llm is None
    monkeypatch.setenv("LUTHITUNE_HOME", str(tmp_path / "ws"))
    assert Context().workspace == str(tmp_path / "ws")
    assert Context(autopilot=True, n_scenarios=7).given() == {"autopilot": True, "n_scenarios": 7}


@pytest.fixture
def seams(tmp_path):
    def trainer(pairs, name):
        path = tmp_path / "adapters" / name
        path.mkdir(parents=True, exist_ok=True)
        return TrainResult(str(path), {"loss": 0.5})

    return {"llm": SchemaFakeModel(), "trainer": trainer, "evaluator": evaluator}


def server_graph():
    """The graph as LangGraph's server holds it: compiled with a checkpointer of its own (not the workspace's)."""
    return build_graph(InMemorySaver())


def test_a_run_starts_from_input_alone_and_its_row_is_created_on_first_entry(workspace, seams):
    path = workspace.root / "luthitune.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg.setdefault("practice", {})["scenarios"] = 5
    path.write_text(yaml.safe_dump(cfg))
    g, thread = server_graph(), "0a1b2c3d-thread"
    config = {"configurable": {"thread_id": thread}}
    # what the server passes: the context built from the caller's mapping (here only one setting), injected parts aside
    ctx = Context(workspace=str(workspace.root), interview_turns=2).with_seams(**seams)
    out = g.invoke({}, config, context=ctx)
    [asked] = out["__interrupt__"]
    assert asked.value["type"] == "interview" and out["run_id"] == thread  # the thread's id names the run
    p = Protocol(workspace)
    row = p.run_row(thread)
    stored = json.loads(row["config_json"])
    assert stored["thread_id"] == thread and row["status"] == "waiting:interview"
    assert stored["context"]["n_scenarios"] == 5  # the workspace's practice.scenarios, as for `luthitune run`
    assert stored["context"]["interview_turns"] == 2  # what the caller gave
    assert stored["context"]["train"]["training"]["learning_rate"]  # hyperparameters.yaml, fixed at start
    assert row["identity_match"]
    assert p.store.count("messages", run_id=thread) == 3  # system, opening, the model's reply

    # A resume with another context, or none, goes on with the settings fixed at the start: still not on autopilot.
    out = g.invoke(
        Command(resume="What would you refuse?"),
        config,
        context=Context(str(workspace.root), autopilot=True).with_seams(**seams),
    )
    assert out["__interrupt__"][0].value["turn"] == 2
    assert p.store.count("messages", run_id=thread) == 5


def test_a_server_run_with_its_own_checkpoints_is_visible_to_status_and_refused_by_answer(workspace, seams):
    thread = "5e7f9a-thread"
    server_graph().invoke(
        {}, {"configurable": {"thread_id": thread}}, context=Context(str(workspace.root)).with_seams(**seams)
    )
    p = Protocol(workspace)
    st = p.status(thread)
    assert (st.status, st.recorded, st.thread_id) == ("server", "waiting:interview", thread)
    with pytest.raises(UsageError, match="LangGraph's server"):
        p.advance(thread, "hello")
    r = runner.invoke(app, ["status", thread, "-w", str(workspace.root)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "server" in r.output and "last recorded: waiting for interview" in r.output and "messages: 3" in r.output
    r = runner.invoke(app, ["answer", thread, "hello", "-w", str(workspace.root)], terminal_width=200)
    assert r.exit_code == 2 and "LangGraph" in r.output
    assert p.store.count("messages", run_id=thread) == 3  # nothing was run from the CLI
    r = runner.invoke(app, ["resume", "-w", str(workspace.root)], terminal_width=200)
    assert r.exit_code == 0 and "last recorded: waiting for interview" in r.output


def test_a_server_run_records_its_end(workspace, seams):
    allow_small_runs(workspace)
    g, config = server_graph(), {"configurable": {"thread_id": "full-run"}}
    ctx = Context(str(workspace.root), autopilot=True, n_scenarios=4, interview_turns=2).with_seams(**seams)
    out = g.invoke({"run_id": "studio-run"}, config, context=ctx)
    assert "__interrupt__" not in out and out["cycle"] == 1
    row = Protocol(workspace).run_row("studio-run")
    assert row["status"] == "done" and json.loads(row["config_json"])["thread_id"] == "full-run"
    assert Protocol(workspace).status("studio-run").recorded == "done"


def test_a_shared_checkpointer_makes_a_server_run_answerable_from_the_cli(workspace, seams, monkeypatch):
    """langgraph.json's checkpointer: the server keeps the run's checkpoints in the workspace's graph.db."""
    from luthitune.graph.checkpointer import workspace_checkpointer

    monkeypatch.setenv("LUTHITUNE_HOME", str(workspace.root))

    async def start():
        async with workspace_checkpointer() as saver:
            g = build_graph(saver)
            ctx = Context().with_seams(**seams)  # the workspace from LUTHITUNE_HOME
            return await g.ainvoke({"run_id": "shared"}, {"configurable": {"thread_id": "t-42"}}, context=ctx)

    out = asyncio.run(start())
    assert out["__interrupt__"][0].value["type"] == "interview"
    p = Protocol(workspace, **seams)
    st = p.status("shared")
    assert st.status == "waiting" and st.interrupt["turn"] == 1
    st = p.advance("shared", "What would you refuse?")
    assert st.status == "waiting" and st.interrupt["turn"] == 2
    # history and fork read the run's thread; a fork is a run of its own, under its own name
    earlier = p.history("shared")[1]  # the first question, before the CLI's answer
    fork = p.fork("shared", earlier["checkpoint_id"], "shared-fork")
    assert p.config(fork)["configurable"]["thread_id"] == "shared-fork"
    assert p.status(fork).interrupt["turn"] == 1 and p.status("shared").interrupt["turn"] == 2


def test_a_thread_id_that_is_not_a_safe_name_is_refused(workspace, seams):
    with pytest.raises(UsageError, match="thread id"):
        server_graph().invoke(
            {}, {"configurable": {"thread_id": "../x"}}, context=Context(str(workspace.root)).with_seams(**seams)
        )


# -- the answers each interrupt takes --


def test_every_interrupt_type_describes_its_answers():
    kinds = {"interview", *answers.ACCEPTS}
    assert kinds == set(NEXT_STEP)  # every approval point the CLI knows
    for kind in kinds:
        s = answers.schema(kind)
        jsonschema.Draft202012Validator.check_schema(s)
        forms = s.get("oneOf", [s])
        assert all(f.get("description") for f in forms), kind  # each form says what it does


SAMPLE = [{"id": "r:c0:p0001"}, {"id": "r:c0:p0002"}]
TEXT = "**P1. Care** — I choose to avoid harm, because harm matters to me."


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("interview", "What does harm mean to you?"),
        ("consent_review", A.approve()),
        ("consent_review", A.reject()),
        ("constitution_review", A.reject("Say more about honesty.")),
        ("constitution_review", {"action": "edit", "text": TEXT, "by": "human"}),
        ("constitution_write", {"action": "edit", "text": TEXT, "by": "human"}),
        ("pair_review", A.approve()),
        ("pair_review", A.drop_pairs(["r:c0:p0001"])),
        ("pair_review", A.review_pairs({"r:c0:p0002": "reject"}, SAMPLE)),
        ("confirm_training", A.approve(by="autopilot")),
        ("revision_review", A.reject()),
    ],
)
def test_the_answers_the_cli_and_ui_send_match_the_schema(kind, value):
    jsonschema.validate(value, answers.schema(kind))


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("consent_review", {"action": "edit", "text": TEXT}),  # a consent record is not edited
        ("constitution_review", {"action": "edit"}),  # an edit without its text
        ("pair_review", {"action": "reject"}),  # which pairs?
        ("pair_review", {"decisions": {"r:c0:p0001": "maybe"}}),
        ("interview", {"action": "approve"}),
    ],
)
def test_answers_that_would_not_work_do_not_match(kind, value):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(value, answers.schema(kind))


def test_an_interrupt_carries_its_answers_in_the_payload_and_as_response_schema(workspace, seams):
    g, config = server_graph(), {"configurable": {"thread_id": "schema-run"}}
    out = g.invoke({}, config, context=Context(str(workspace.root)).with_seams(**seams))
    [asked] = out["__interrupt__"]
    assert asked.value["answers"] == answers.schema("interview") == asked.response_schema
    assert asked.value["hint"] and asked.value["last_reply"]  # the fields the CLI and the web UI read stay


def test_a_step_the_server_runs_holds_the_run_and_a_step_under_advance_does_not_lock_twice(tmp_path):
    from luthitune import runlock

    with runlock.step(tmp_path, "r1", "LangGraph graph, thread t"):  # the server: no caller holds the run
        assert runlock.holder(tmp_path, "r1")["command"] == "LangGraph graph, thread t"
        with pytest.raises(runlock.RunBusy, match="LangGraph graph"), runlock.hold(tmp_path, "r1"):  # the CLI
            pass
    assert runlock.holder(tmp_path, "r1") is None
    # Protocol.advance, then its steps
    with runlock.hold(tmp_path, "r1", "luthitune answer"), runlock.step(tmp_path, "r1", "LangGraph graph, thread t"):
        assert runlock.holder(tmp_path, "r1")["command"] == "luthitune answer"


def test_no_node_knows_whether_its_parts_are_injected():
    """Nodes reach the chat model, trainer and evaluator through luthitune.nodes.services, which falls back to the
    real parts: no node module reads the injected parts itself, so the fakes enter where the real parts do."""
    from importlib import resources

    nodes = resources.files("luthitune.nodes")
    readers = [
        f.name
        for f in nodes.iterdir()
        if f.name.endswith(".py") and f.name != "services.py" and ".seams" in f.read_text(encoding="utf-8")
    ]
    assert readers == []
    from luthitune.graph.builder import build_graph

    fields = set(build_graph(InMemorySaver()).get_context_jsonschema()["properties"])
    assert not {"llm", "trainer", "evaluator", "seams", "_seams"} & fields and "interview_turns" in fields
