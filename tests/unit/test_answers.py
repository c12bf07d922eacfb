"""Approval points are typed: an answer that fits none of the forms its question accepts is refused, with the
accepted answers listed, by every client; nothing is taken as an approval by default."""

from __future__ import annotations

import pytest
from fakes import SchemaFakeModel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from luthitune import answers
from luthitune import facilitator as A
from luthitune.graph.builder import build_graph
from luthitune.graph.state import Context
from luthitune.protocol import Protocol


def at_consent_review(workspace) -> tuple[Protocol, str]:
    p = Protocol(workspace, llm=SchemaFakeModel())
    run = p.start({"interview_turns": 1})
    st = p.advance(run)
    while st.status == "waiting" and st.interrupt["type"] == "interview":
        st = p.advance(run, "/done")
    assert st.interrupt["type"] == "consent_review", st
    return p, run


@pytest.mark.parametrize("value", ["aprove", "end", "stop", {"action": "edit", "text": "x"}, 3])
def test_an_answer_no_form_fits_is_refused_before_the_graph_runs(workspace, value):
    p, run = at_consent_review(workspace)
    before = p.history(run)
    with pytest.raises(answers.AnswerRefused, match="consent review takes approve, reject; got") as refused:
        p.advance(run, value)
    assert refused.value.exit_code == 2
    assert p.history(run) == before and p.status(run).interrupt["type"] == "consent_review"  # nothing ran
    assert p.advance(run, "reject").status == "ended"  # a bare action word is that action


def test_each_question_says_which_answers_it_takes():
    for kind in answers.ACCEPTS:
        assert answers.accepted(kind)  # every approval point can say it
    assert answers.accepted("constitution_review") == "approve, edit (with text), reject"
    assert answers.accepted("pair_review") == "approve, reject (with pairs), decisions (with decisions)"


def test_a_refused_answer_from_the_server_is_asked_again_with_the_reason(workspace):
    """LangGraph's server passes answers straight to the graph: the node asks again, saying why and what it takes."""
    g, config = build_graph(InMemorySaver()), {"configurable": {"thread_id": "typed-run"}}
    ctx = Context(str(workspace.root), interview_turns=1).with_seams(llm=SchemaFakeModel())
    out = g.invoke({}, config, context=ctx)
    while out["__interrupt__"][0].value["type"] == "interview":
        out = g.invoke(Command(resume="/done"), config, context=ctx)
    out = g.invoke(Command(resume={"action": "aprove"}), config, context=ctx)
    [asked] = out["__interrupt__"]
    assert asked.value["type"] == "consent_review" and "takes approve, reject" in asked.value["refused"]
    assert asked.value["answers"] == answers.schema("consent_review") == asked.response_schema
    out = g.invoke(Command(resume=A.approve()), config, context=ctx)
    assert out.get("__interrupt__", [None])[0] is None or out["__interrupt__"][0].value["type"] != "consent_review"


def test_every_question_model_makes_the_payload_its_clients_read():
    q = answers.ConfirmTraining(pairs=3, held_out=1, conditions=[], settings={}, hint="approve or reject")
    payload = q.payload()
    assert payload["type"] == "confirm_training" and payload["answers"] == answers.schema("confirm_training")
    with pytest.raises(ValueError):
        answers.ConfirmTraining(pairs=3, held_out=1, conditions=[], settings={}, hint="h", extra=1)
    assert isinstance(answers.parse("pair_review", A.drop_pairs(["a"])), answers.DropPairs)
    assert isinstance(answers.parse("pair_review", {"decisions": {"a": "reject"}}), answers.PairDecisions)
    with pytest.raises(answers.AnswerRefused):
        answers.parse("pair_review", {"action": "reject"})  # which pairs?
