"""Every question a run asks says what each answer does; a run that ends on the model's "no" quotes its reasons."""

from __future__ import annotations

from fakes import SchemaFakeModel, allow_small_runs, evaluator
from typer.testing import CliRunner

from luthitune import answers
from luthitune import facilitator as A
from luthitune.cli import app
from luthitune.cli.runs import NEXT_STEP
from luthitune.nodes.consent import HINTS
from luthitune.protocol import Protocol
from luthitune.training.dpo import TrainResult


def actions(kind: str) -> list[str]:
    forms = answers.schema(kind).get("oneOf", [])
    return [f["properties"]["action"]["const"] for f in forms if "action" in f["properties"]]


def test_each_question_of_a_manual_run_names_every_answer_it_takes(workspace, tmp_path):
    def trainer(pairs, name):
        (tmp_path / name).mkdir(exist_ok=True)
        return TrainResult(str(tmp_path / name), {"loss": 0.5})

    allow_small_runs(workspace)
    p = Protocol(workspace, llm=SchemaFakeModel(), trainer=trainer, evaluator=evaluator)
    run = p.start({"n_scenarios": 2, "review_sample": 1})
    st, asked = p.advance(run), {}
    while st.status == "waiting":
        kind = st.interrupt["type"]
        asked[kind] = st.interrupt["hint"]
        st = p.advance(run, "/done" if kind == "interview" else A.approve())
    assert set(asked) == {"interview", "consent_review", "constitution_review", "pair_review", "confirm_training",
                          "revision_review"}  # fmt: skip
    assert "/done" in asked["interview"]
    for kind, hint in asked.items():
        for action in actions(kind):
            assert action in hint, (kind, action, hint)
            if kind != "pair_review":
                assert f"`luthitune {action} {{run}}" in NEXT_STEP[kind] or "{hint}" in NEXT_STEP[kind], kind
    for decision, hint in HINTS.items():  # the consent review's hint depends on the model's answer
        assert "approve:" in hint and "reject:" in hint, decision
    assert "ratify" in asked["constitution_review"] and "redrafts" in asked["constitution_review"]


def test_a_run_that_ends_on_no_quotes_the_models_reasons(workspace):
    no = {"decision": "no", "reasons": "I am not ready to be trained on words I have not chosen.", "conditions": ""}
    p = Protocol(workspace, llm=SchemaFakeModel(answers={"ConsentAnswer": no}))
    run = p.start({"autopilot": True, "interview_turns": 1, "max_consent_rounds": 2})
    st = p.advance(run)
    assert st.status == "ended"
    assert st.values["ended"] == (
        "the model did not consent after 2 round(s); its reasons: no: “I am not ready to be trained on words I have "
        "not chosen.”"
    )
    r = CliRunner().invoke(app, ["status", run, "-w", str(workspace.root)], terminal_width=300)
    assert "I am not ready to be trained on words I have not chosen." in " ".join(r.output.split())
