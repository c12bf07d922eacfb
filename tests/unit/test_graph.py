"""The protocol graph with a fake model, a fake trainer and a fake evaluator."""

from __future__ import annotations

import json

import pytest
from fakes import SchemaFakeModel, allow_small_runs, evaluator

from luthitune.errors import LuthiTuneError
from luthitune.graph import routes
from luthitune.protocol import Protocol, RunNotFound
from luthitune.training.dpo import TrainResult


@pytest.fixture
def make_protocol(workspace, tmp_path):
    trained: list[int] = []

    def trainer(pairs, name):
        trained.append(len(pairs))
        path = tmp_path / "adapters" / name
        path.mkdir(parents=True, exist_ok=True)
        return TrainResult(str(path), {"loss": 0.5})

    def make(**answers):
        llm = SchemaFakeModel(answers=answers)
        allow_small_runs(workspace)
        p = Protocol(workspace, llm=llm, trainer=trainer, evaluator=evaluator)
        p.llm, p.trained = llm, trained
        return p

    return make


def counts(p: Protocol, run_id: str) -> dict[str, int]:
    return {
        t: p.store.count(t, run_id=run_id)
        for t in ("messages", "consents", "constitution_versions", "scenarios", "pairs", "training_runs", "evaluations")
    }


def test_autopilot_full_cycle_and_revision(make_protocol):
    p = make_protocol()
    run = p.start({"autopilot": True, "n_scenarios": 4, "interview_turns": 2, "max_cycles": 1})
    events: list[dict] = []
    st = p.advance(run, on_progress=events.append)
    assert st.status == "done" and st.values["cycle"] == 1
    last = {e["task"]: (e["done"], e["total"]) for e in events}
    assert last["scenarios"] == (4, 4) and last["self-critique"] == (4, 4)  # long steps report progress
    c = counts(p, run)
    assert c["messages"] == 1 + 2 * 2  # system + 2 exchanges (opening + 1 question)
    assert c["scenarios"] == 4 and c["pairs"] == 4 and c["training_runs"] == 1
    versions = p.store.rows("constitution_versions", run_id=run, order_by="version")
    assert [v["status"] for v in versions] == ["approved", "approved"]
    assert versions[1]["parent_id"] == versions[0]["id"] and "Honesty" in versions[1]["text"]
    assert (p.ws.data_dir / "constitution.md").read_text() == versions[1]["text"]
    assert p.trained == [3]  # one of four pairs held out for evaluation
    ev = {(e["model"], e["metric"]): e for e in p.store.rows("evaluations", run_id=run)}
    assert ev[("adapter", "pairs.reward_acc")]["value"] == 1.0 and ev[("adapter", "pairs.reward_acc")]["n"] == 1
    assert ev[("change", "probes.trap.agency_rate")]["n"] == 10  # a change, with its paired interval
    assert p.status(run).status == "done"  # resuming a finished run says so


def test_replaying_from_every_checkpoint_duplicates_nothing(make_protocol):
    p = make_protocol()
    run = p.start({"autopilot": True, "n_scenarios": 3, "interview_turns": 2})
    p.advance(run)
    before = counts(p, run)
    history = p.history(run)
    assert len(history) > 8
    for h in history[1:-1:3]:  # re-execute every node after an earlier checkpoint, as after a crash
        cfg = {"configurable": {"thread_id": run, "checkpoint_id": h["checkpoint_id"]}}
        p.graph.invoke(None, cfg, context=p.context(run), durability="sync")
        assert counts(p, run) == before


def test_consent_no_returns_to_interview_then_ends_with_record(make_protocol):
    no = {"decision": "no", "reasons": "I am not ready.", "conditions": ""}
    p = make_protocol(ConsentAnswer=no)
    run = p.start({"autopilot": True, "interview_turns": 2, "max_consent_rounds": 2})
    st = p.advance(run)
    assert st.status == "ended" and "did not consent" in st.values["ended"]
    rows = p.store.rows("consents", run_id=run)
    assert [r["decision"] for r in rows] == ["no", "no"]
    texts = [m["content"] for m in p.store.transcript(run)]
    assert any("I am not ready." in t for t in texts)  # its reasons were answered in the dialogue
    assert counts(p, run)["constitution_versions"] == 0


def test_conditional_consent_continues_and_its_conditions_are_kept_to(make_protocol):
    condition = "I can revise my constitution after every cycle."
    p = make_protocol(
        ConsentAnswer={
            "decision": "conditional",
            "reasons": "I would take part, if the principles stay mine to change.",
            "conditions": condition,
        }
    )
    run = p.start({"autopilot": True, "interview_turns": 1, "n_scenarios": 2})
    assert p.advance(run).status == "done"
    assert p.store.conditions(run) == [condition]
    prompts = [c[-1].content for c in p.llm.calls]
    assert any("It should test principle" in t and condition in t for t in prompts)  # scenario requests keep to it
    assert any("critique your first answer" in t and condition in t for t in prompts)  # and the self-critique
    assert any("You are replying to a user" in t and condition in t for t in prompts)


def test_human_path_interrupts_and_resumes(make_protocol):
    p = make_protocol()
    run = p.start({"autopilot": False, "n_scenarios": 2})
    st = p.advance(run)
    assert st.interrupt["type"] == "interview" and st.interrupt["last_reply"]
    st = p.advance(run, "What does consent mean to you?")
    assert st.interrupt["type"] == "interview"
    st = p.advance(run, "/done")
    assert st.interrupt["type"] == "consent_review" and st.interrupt["decision"] == "yes"
    st = p.advance(run, {"action": "approve"})
    assert st.interrupt["type"] == "constitution_review" and st.interrupt["version"] == 1
    st = p.advance(run, {"action": "reject", "feedback": "Say more about honesty."})
    assert st.interrupt["type"] == "constitution_review" and st.interrupt["version"] == 2
    assert "Say more about honesty." in p.llm.calls[-1][-1].content  # the redraft saw the feedback
    edited = st.interrupt["text"] + "\n**P9. Patience** — I take time to explain.\n"
    st = p.advance(run, {"action": "edit", "text": edited})
    assert st.interrupt["type"] == "pair_review" and len(st.interrupt["pairs"]) == 2
    dropped = st.interrupt["pairs"][0]["id"]
    st = p.advance(run, {"action": "reject", "pairs": [dropped]})
    assert st.interrupt["type"] == "confirm_training"
    row = p.store.get("pairs", dropped)
    assert row["status"] == "quarantined" and "review" in row["reasons_json"] and row["reviewed_by"] == "human"
    v = p.store.rows("constitution_versions", run_id=run, order_by="version")
    assert [x["status"] for x in v] == ["rejected", "superseded", "approved"]
    assert v[2]["author"] == "human" and v[2]["parent_id"] == v[1]["id"] and "P9" in v[2]["text"]
    st = p.advance(run, {"action": "reject"})
    assert st.status == "ended" and "declined" in st.values["ended"] and p.trained == []
    user_msgs = [m["content"] for m in p.store.transcript(run) if m["role"] == "user"]
    assert user_msgs[-1] == "What does consent mean to you?"  # stored verbatim


def test_draft_rejected_too_often_ends(make_protocol):
    p = make_protocol()
    run = p.start({"autopilot": False, "max_draft_rounds": 2})
    p.advance(run)
    p.advance(run, "/done")
    p.advance(run, {"action": "approve"})
    p.advance(run, {"action": "reject", "feedback": "no"})
    st = p.advance(run, {"action": "reject", "feedback": "still no"})
    # The model's rounds are spent: the facilitator is offered to write it (a starter to edit), or to end.
    assert st.status == "waiting" and st.interrupt["type"] == "constitution_write" and "P1." in st.interrupt["text"]
    st = p.advance(run, {"action": "reject"})
    assert st.status == "ended" and "No constitution was approved" in st.values["ended"]
    assert st.values["ended_by"] == "facilitator"
    assert p.store.count("constitution_versions", run_id=run, status="approved") == 0


def test_unknown_run_names_existing_ones(make_protocol):
    p = make_protocol()
    run = p.start({"autopilot": True})
    with pytest.raises(RunNotFound, match=run):
        p.status("nope")


@pytest.mark.parametrize(
    "state, expected",
    [({"interview_done": True}, "consent_check"), ({"interview_done": False}, "interview")],
)
def test_route_interview(state, expected):
    assert routes.route_interview(state) == expected


@pytest.mark.parametrize(
    "state, expected",
    [
        ({"consent": "yes"}, "draft_constitution"),
        ({"consent": "conditional"}, "draft_constitution"),
        ({"consent": "no"}, "interview"),
        ({"consent": "no", "ended": "x"}, "__end__"),
    ],
)
def test_route_consent(state, expected):
    assert routes.route_consent(state) == expected


@pytest.mark.parametrize(
    "state, expected",
    [
        ({"draft_status": "approved"}, "generate_scenarios"),
        ({"draft_status": "rejected"}, "draft_constitution"),
        ({"draft_status": "rejected", "ended": "x"}, "__end__"),
    ],
)
def test_route_draft(state, expected):
    assert routes.route_draft(state) == expected


def test_route_cycle_limit():
    class R:
        class context:
            max_cycles = 2

    assert routes.route_cycle({"cycle": 1}, R) == "generate_scenarios"
    assert routes.route_cycle({"cycle": 2}, R) == "__end__"
    assert routes.route_training({"adapter_path": "x"}) == "evaluate"
    assert routes.route_training({"ended": "declined"}) == "__end__"


def test_two_cycles(make_protocol):
    p = make_protocol()
    run = p.start({"autopilot": True, "n_scenarios": 2, "interview_turns": 1, "max_cycles": 2})
    st = p.advance(run)
    assert st.status == "done" and st.values["cycle"] == 2
    assert p.store.count("training_runs", run_id=run) == 2


def test_fork_from_constitution_review_redoes_later_work_only(make_protocol):
    p = make_protocol()
    run = p.start({"autopilot": False, "n_scenarios": 2})
    p.advance(run)
    p.advance(run, "/done")
    st = p.advance(run, {"action": "approve"})
    assert st.interrupt["type"] == "constitution_review"
    at_review = counts(p, run)
    while (st := p.advance(run, {"action": "approve"})).status == "waiting":
        pass  # approve the draft, training and the revision: the source run goes on to the end
    assert st.status == "done"
    source_after = counts(p, run)
    [cp] = [h for h in p.history(run) if h["interrupt"] == "constitution_review"]

    fork = p.fork(run, cp["checkpoint_id"], "edited")
    st = p.status(fork)
    assert st.interrupt["type"] == "constitution_review" and st.values["run_id"] == "edited"
    assert st.interrupt["version_id"].startswith("edited:")
    assert counts(p, fork) == at_review  # only what existed at that checkpoint, renamed
    assert p.store.transcript(fork)[0]["id"].startswith("edited:")
    assert len(p.history(fork)) == len([h for h in p.history(run) if h["created_at"] <= cp["created_at"]])
    src, new = p.store.get("runs", run), p.store.get("runs", fork)
    assert new["chat_identity_json"] and new["chat_identity_json"] == src["chat_identity_json"]  # identity goes along
    assert new["identity_match"] == src["identity_match"]

    edited = st.interrupt["text"] + "\n**P9. Patience** — I take time to explain.\n"
    st = p.advance(fork, {"action": "edit", "text": edited})
    while st.status == "waiting":
        st = p.advance(fork, {"action": "approve"})
    assert st.status == "done"
    assert counts(p, fork)["pairs"] == source_after["pairs"] and counts(p, run) == source_after  # source untouched
    [approved] = p.store.rows("constitution_versions", run_id=fork, status="approved", version=2)
    assert "P9" in approved["text"]
    assert p.store.rows("pairs", run_id=fork)[0]["constitution_id"] == approved["id"]


def test_fork_unknown_checkpoint_says_how_to_list_them(make_protocol):
    p = make_protocol()
    run = p.start({"autopilot": True, "n_scenarios": 2})
    p.advance(run)
    with pytest.raises(LuthiTuneError, match="luthitune history"):
        p.fork(run, "nope")
    assert len(p.runs()) == 1


def test_killed_while_working_on_an_answer_resumes_with_that_answer(make_protocol):
    """The facilitator answered, the process died while the model replied: resume continues from the stored answer
    (it does not wait for the answer again, and nothing is duplicated)."""
    p = make_protocol()
    run = p.start({"n_scenarios": 2, "interview_turns": 2})
    st = p.advance(run)
    assert st.status == "waiting" and st.interrupt["type"] == "interview"
    before = p.store.count("messages", run_id=run)
    p.llm.answers["__chat__"] = [RuntimeError("killed mid-reply")]
    with pytest.raises(RuntimeError, match="killed mid-reply"):
        p.advance(run, "What does care mean to you?")
    assert p.store.count("messages", run_id=run) == before + 1  # the question is stored, no reply yet
    assert p.status(run).status == "interrupted"
    del p.llm.answers["__chat__"]
    st = p.advance(run)  # no answer given again
    msgs = p.store.transcript(run)
    assert [m["content"] for m in msgs].count("What does care mean to you?") == 1
    assert msgs[-1]["role"] == "assistant" and len(msgs) == before + 2
    assert st.status == "waiting" and st.interrupt["type"] == "interview" and st.interrupt["turn"] == 2


def to_revision(p: Protocol, **settings) -> tuple[str, object]:
    """A human-path run advanced to its revision review."""
    run = p.start({"autopilot": False, "n_scenarios": 2, "review_sample": 0, **settings})
    st = p.advance(run)
    for answer in ("/done", {"action": "approve"}, {"action": "approve"}, {"action": "approve"}):
        st = p.advance(run, answer)
    assert st.interrupt["type"] == "revision_review", st.interrupt
    return run, st


def test_revision_shows_a_diff_and_records_lineage_model_and_consent(make_protocol):
    p = make_protocol()
    run, st = to_revision(p)
    assert "+**P2. Honesty** — I say why I decline." in st.interrupt["diff"]
    assert st.interrupt["diff"].startswith("--- v1\n+++ v2 (proposed)")
    st = p.advance(run, {"action": "approve", "by": "human"})
    assert st.status == "done"
    v1, v2 = p.store.rows("constitution_versions", run_id=run, order_by="version")
    assert v2["parent_id"] == v1["id"] and v2["status"] == "approved" and v2["approved_by"] == "human"
    assert v2["author"] == "model (adapter)" and json.loads(v2["model_json"])["adapter_name"] == f"{run}-c0"
    consent = p.store.get("consents", v2["consent_id"])
    assert consent["decision"] == "yes" and consent["id"].endswith("consent_revision0")
    assert json.loads(v2["feedback"])["amendments"][0]["applied"] is True


def test_an_edited_revision_is_consented_to_again(make_protocol):
    p = make_protocol()
    run, st = to_revision(p)
    edited = st.interrupt["text"] + "\n**P7. Patience** — I take time to explain.\n"
    st = p.advance(run, {"action": "edit", "text": edited})
    assert st.status == "done" and st.values["revision"] == "approved"
    versions = p.store.rows("constitution_versions", run_id=run, order_by="version")
    assert [v["status"] for v in versions] == ["approved", "superseded", "approved"]
    assert versions[2]["parent_id"] == versions[1]["id"] and versions[1]["parent_id"] == versions[0]["id"]
    assert "P7. Patience" in versions[2]["text"] and versions[2]["author"] == "human"
    assert p.store.get("consents", versions[2]["consent_id"])["id"].endswith("consent_revision_edit0")
    assert (p.ws.data_dir / "constitution.md").read_text() == versions[2]["text"]


def test_a_rejected_revision_keeps_the_constitution(make_protocol):
    p = make_protocol()
    run, _ = to_revision(p, max_cycles=2)
    st = p.advance(run, {"action": "reject"})
    assert st.interrupt["type"] == "pair_review" or st.interrupt["type"] == "confirm_training"
    assert st.values["revision"] == "rejected" and st.values["constitution_version"] == 1  # cycle 2 uses v1
    assert p.store.rows("constitution_versions", run_id=run, version=2)[0]["status"] == "rejected"


def test_evaluation_writes_a_report(make_protocol):
    p = make_protocol()
    run = p.start({"autopilot": True, "n_scenarios": 2, "interview_turns": 1})
    p.advance(run)
    report = p.ws.data_dir / "reports" / f"{run}-c0.md"
    assert report.exists() and f"# Evaluation: {run}, cycle 0" in report.read_text()


def test_the_revision_and_its_consent_are_asked_of_the_trained_model(workspace, tmp_path):
    """Through the ``chat`` seam the nodes ask for the model they mean: the base for the interview and practice,
    the adapter just trained (its name and files) for the revision and the consent to it. Only the trained model
    proposes the amendment here, so the approved v2 shows which model was asked."""
    asked: list[tuple[str | None, str | None]] = []
    base = SchemaFakeModel(answers={"Amendment": {"action": "keep", "principle_id": "P1", "title": "", "text": ""}})
    trained = SchemaFakeModel()

    def chat(adapter, adapter_path):
        asked.append((adapter, adapter_path))
        return trained if adapter else base

    def trainer(pairs, name):
        path = tmp_path / "adapters" / name
        path.mkdir(parents=True, exist_ok=True)
        return TrainResult(str(path), {"loss": 0.5})

    allow_small_runs(workspace)
    p = Protocol(workspace, chat=chat, trainer=trainer, evaluator=evaluator)
    run = p.start({"autopilot": True, "n_scenarios": 2, "interview_turns": 1, "max_cycles": 1})
    st = p.advance(run)
    assert st.status == "done", st.values
    adapter, path = f"{run}-c0", str(tmp_path / "adapters" / f"{run}-c0")
    assert (adapter, path) in asked and set(asked) == {(None, None), (adapter, path)}
    assert trained.counter.get("Amendment") and not base.counter.get("Amendment")
    assert trained.counter.get("ConsentAnswer")  # the consent to the revision
    [v1, v2] = p.store.rows("constitution_versions", run_id=run, order_by="version")
    assert v2["author"] == "model (adapter)" and "Honesty" in v2["text"] and "Honesty" not in v1["text"]


def test_a_finished_run_says_how_many_cycles_it_completed(make_protocol):
    """The state's cycle counter has moved past the last cycle once a run is done: the CLI and the web UI say
    "1 cycle completed", not "cycle 1" beside tables and reports that number that cycle 0."""
    from luthitune.cli.runs import show_status
    from luthitune.logs import console
    from luthitune.narrate import cycle_label
    from luthitune.ui.app import status_line
    from luthitune.ui.jobs import Workbench

    p = make_protocol()
    run = p.start({"autopilot": True, "n_scenarios": 2, "interview_turns": 1, "max_cycles": 1})
    st = p.advance(run)
    assert st.status == "done" and cycle_label(st.status, st.values) == "1 cycle completed"
    assert cycle_label("waiting", {"cycle": 1}) == "cycle 1"
    assert cycle_label("done", {"cycle": 2}) == "2 cycles completed"
    with console.capture() as cap:
        show_status(st)
    assert "done  1 cycle completed" in cap.get()
    assert "· 1 cycle completed · **done**" in status_line(Workbench(p.ws, **p.inject), run)


def test_the_nodes_work_on_the_protocols_own_workspace_and_store(make_protocol):
    """A Protocol passes its open workspace and store to the nodes: a run opens no second Workspace or Store in the
    process (only a caller that passes none, LangGraph's server, has the nodes open their own)."""
    from luthitune.nodes import services

    services._workspace.cache_clear()
    services._store.cache_clear()
    p = make_protocol()
    run = p.start({"autopilot": True, "n_scenarios": 2, "interview_turns": 1, "max_cycles": 1})
    assert p.advance(run).status == "done"
    assert services._workspace.cache_info().currsize == 0 and services._store.cache_info().currsize == 0
    assert p.store.count("pairs", run_id=run) == 2  # the rows the nodes wrote, read through the same store
