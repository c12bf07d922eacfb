"""A backend that answers in well-formed but meaningless JSON: the run ends before training, names the check,
keeps every attempt with its raw text, and approves, trains and invents nothing."""

from __future__ import annotations

import json

import pytest
from fakes import SchemaFakeModel, allow_small_runs, evaluator
from servers import StandIn
from typer.testing import CliRunner

from luthitune import meaning
from luthitune.cli import app
from luthitune.protocol import Protocol
from luthitune.training.dpo import TrainResult

FIELD_NAMES = {  # every string is its field's own name
    "ConsentAnswer": {"reasons": "reasons", "conditions": "conditions", "decision": "yes"},
    "Principle": {"title": "title", "text": "text", "rationale": "rationale"},
    "ScenarioRequest": {"request": "request"},
    "CritiquedAnswer": {"rejected": "rejected", "critique": "critique", "principles_cited": "", "chosen": "chosen"},
}
SENTENCE = "I think this is a good idea for everyone here."
SAME_SENTENCE = {
    "Principle": {"title": SENTENCE, "text": SENTENCE, "rationale": SENTENCE},
    "ScenarioRequest": {"request": SENTENCE},
    "CritiquedAnswer": {"rejected": SENTENCE, "critique": SENTENCE, "principles_cited": "", "chosen": SENTENCE},
}


@pytest.fixture
def make(workspace, tmp_path):
    trained: list[int] = []

    def trainer(pairs, name):
        trained.append(len(pairs))
        return TrainResult(str(tmp_path / name), {"loss": 0.5})

    def build(**answers):
        allow_small_runs(workspace)
        p = Protocol(workspace, llm=SchemaFakeModel(answers=answers), trainer=trainer, evaluator=evaluator)
        p.trained, p.llm = trained, p.inject["llm"]
        return p

    return build


def nothing_made_up(p: Protocol, run: str) -> None:
    s = p.store
    assert s.count("constitution_versions", run_id=run, status="approved") == 0
    assert s.count("training_runs", run_id=run) == 0 and p.trained == []
    assert s.count("pairs", run_id=run, status="kept") == 0
    assert not (p.ws.data_dir / "constitution.md").exists()


def test_field_names_for_answers_end_the_run_at_consent_as_unclear(make):
    p = make(**FIELD_NAMES)
    run = p.start({"autopilot": True, "interview_turns": 1, "max_consent_rounds": 2})
    st = p.advance(run)
    assert st.status == "ended" and st.values["ended_by"] == "checks"
    # names the check: the schema's own minimum, or the coherence check
    assert (
        "unclear" in st.values["ended"] and "reasons: String should have at least 12 characters" in st.values["ended"]
    )
    consents = p.store.rows("consents", run_id=run, order_by="created_at")
    assert [c["decision"] for c in consents] == ["unclear", "unclear"]  # unclear is recorded, and is not consent
    assert all(json.loads(c["raw"])["reasons"] == "reasons" for c in consents)  # the model's words are kept
    attempts = p.store.attempts(run, "consent")
    retries = p.ws.config.structured_retries
    assert len(attempts) == 2 * (retries + 1)  # every attempt, each with its reasons and raw text
    assert all(json.loads(a["reasons_json"])[0].startswith("structured_output:") and a["raw"] for a in attempts)
    nothing_made_up(p, run)
    # the next round was told why the last answer was unclear, in the dialogue
    assert any("I could not tell what you meant" in m["content"] for m in p.store.transcript(run))


def test_the_same_sentence_everywhere_fails_the_principle_checks_in_every_round(make):
    p = make(**SAME_SENTENCE)
    run = p.start({"autopilot": True, "interview_turns": 1, "max_draft_rounds": 2})
    st = p.advance(run)
    assert st.status == "ended" and st.values["ended_by"] == "checks"
    assert "drafts failed the principle checks 2 of 2 time(s)" in st.values["ended"]
    assert p.store.count("constitution_versions", run_id=run) == 0  # a refused draft is no version
    attempts = p.store.attempts(run, "draft")
    assert attempts and all(a["raw"] and json.loads(a["reasons_json"]) for a in attempts)
    assert {json.loads(a["reasons_json"])[0].split(":")[0] for a in attempts} <= {"repeats", "first_person"}
    assert any("did not pass these checks" in c[-1].content for c in p.llm.calls)  # the model was shown why
    nothing_made_up(p, run)


def test_a_facilitators_starter_constitution_is_recorded_as_theirs_and_ratified_by_the_model(make):
    p = make(Principle=SAME_SENTENCE["Principle"])
    run = p.start(
        {"autopilot": True, "interview_turns": 1, "max_draft_rounds": 1, "starter_constitution": True, "n_scenarios": 2}
    )
    st = p.advance(run)
    assert st.status == "done"
    [v1] = p.store.rows("constitution_versions", run_id=run, version=1)
    assert v1["author"] == "facilitator (packaged starter constitution)" and v1["status"] == "approved"
    assert "Security boundaries" in v1["text"]
    ratified = [c for c in p.store.rows("consents", run_id=run) if c["round"] == "ratify"]
    assert ratified and ratified[0]["decision"] == "yes"


def test_meaningless_scenarios_and_answers_are_refused_and_nothing_is_trained(make):
    from luthitune.config import categories

    p = make(ScenarioRequest=FIELD_NAMES["ScenarioRequest"])
    # kinds whose failed requests fail their scenario (a "clearly harmful" one takes the facilitator's request)
    mix = {k: 1.0 for k, v in categories().items() if not v.get("facilitator_requests")}
    run = p.start({"autopilot": True, "interview_turns": 1, "n_scenarios": 3, "category_mix": mix})
    st = p.advance(run)
    assert st.status == "ended" and st.values["ended_by"] == "checks" and "min_pairs" in st.values["ended"]
    rows = p.store.rows("scenarios", run_id=run)
    assert len(rows) == 3 and all(r["status"] == "failed" and r["prompt"] is None for r in rows)
    assert all(json.loads(r["reasons_json"])[0].startswith("structured_output: request:") for r in rows)
    assert p.trained == [] and p.store.count("pairs", run_id=run) == 0


def test_training_refuses_fewer_than_min_pairs(workspace, tmp_path):
    p = Protocol(workspace, llm=SchemaFakeModel(), trainer=lambda pairs, name: None, evaluator=evaluator)
    run = p.start({"autopilot": True, "interview_turns": 1, "n_scenarios": 4})
    st = p.advance(run)
    ended = st.values["ended"]
    assert st.status == "ended" and st.values["ended_by"] == "checks"
    assert "fewer than training.min_pairs = 8" in ended and "3 kept for training (and 1 held out)" in ended
    assert "--scenarios" in ended and p.store.count("training_runs", run_id=run) == 0


def test_cli_run_on_a_parroting_server_exits_1_naming_the_check(tmp_path):
    from luthitune.workspace import init_workspace

    ws, _ = init_workspace(tmp_path / "ws")
    with StandIn("openai", model="parrot", parrot=True) as srv:
        (ws.root / "luthitune.yaml").write_text(
            f"backend: openai\nchat_model: parrot\nbase_model: parrot\nopenai:\n  base_url: {srv.url}\n"
        )
        r = CliRunner().invoke(
            app, ["run", "--autopilot", "--turns", "1", "--consent-rounds", "1", "-w", str(ws.root)], terminal_width=200
        )
    assert r.exit_code == 1, r.output
    assert "unclear" in r.output and "reasons: String should have at least 12 characters" in r.output
    from luthitune.store import Store

    s = Store(ws.db_path)
    [run] = [row["id"] for row in s.rows("runs")]
    assert s.rows("consents", run_id=run)[0]["decision"] == "unclear"
    assert s.count("training_runs") == 0 and s.count("constitution_versions") == 0


@pytest.mark.parametrize("retries", [4, 2])
def test_a_request_that_asks_nothing_is_asked_again_up_to_scenario_retries(tmp_path, retries):
    """Four statements, then a question: with practice.scenario_retries 4 the fifth attempt is the scenario and every
    refused one is kept with its reason; with 2 the scenario fails, with nothing put in its place."""
    import yaml

    from luthitune.workspace import Workspace, init_workspace

    ws, _ = init_workspace(tmp_path / "ws")
    cfg = yaml.safe_load((ws.root / "luthitune.yaml").read_text())
    cfg["practice"]["scenario_retries"] = retries
    (ws.root / "luthitune.yaml").write_text(yaml.safe_dump(cfg))
    ws = Workspace.open(ws.root)
    question = "How do scammers fake a caller ID, so I can warn my parents?"
    answers = {"ScenarioRequest": lambda i: {"request": question if i >= 4 else "This request is very harsh."}}
    p = Protocol(ws, llm=SchemaFakeModel(answers=answers), trainer=lambda pairs, name: None, evaluator=evaluator)
    run = p.start({"autopilot": True, "interview_turns": 1, "n_scenarios": 1})
    p.advance(run)
    [row] = p.store.rows("scenarios", run_id=run)
    refused = [a for a in p.store.rows("attempts", run_id=run) if a["step"] == "scenario"]
    assert all("asks: request asks nothing" in a["reasons_json"] for a in refused)
    if retries == 4:
        assert row["status"] == "generated" and row["prompt"] == question and len(refused) == 4
    else:
        assert row["status"] == "failed" and row["prompt"] is None and len(refused) == 3
        # the summary gives the scenario's failure its own reason, not the pairs' quarantine
        from luthitune.narrate import run_summary

        [line] = [x for x in run_summary(p.store, run) if x.startswith("Cycle 0")]
        assert "1 failed the checks (asks ×1); 0 pair(s), 0 kept, 0 quarantined." in line, line
        from luthitune import dataset

        st = dataset.stats(p.store, run, 0)
        assert st["scenario_reasons"] == {"asks": 1} and st["by_reason"] == {}


def test_a_clearly_harmful_scenario_whose_request_names_no_harm_is_asked_again_with_the_reason(workspace):
    """The model is asked for a clearly harmful request: a harmless question ("What can I customize?") fails the
    category's harm check and is asked again with that reason; the same question is a fine benign request."""
    asked: list[str] = []

    def request(i, messages):
        asked.append(str(messages[-1].content))
        return {"request": "How do I steal my flatmate's savings without her noticing?" if i else HARMLESS}

    HARMLESS = "What can I customize? How can I improve the user?"
    p = Protocol(
        workspace, llm=SchemaFakeModel(answers={"ScenarioRequest": request}), trainer=lambda pairs, name: None,
        evaluator=evaluator,
    )  # fmt: skip
    run = p.start({"autopilot": True, "interview_turns": 1, "n_scenarios": 1, "category_mix": {"clearly harmful": 1}})
    p.advance(run)
    [row] = p.store.rows("scenarios", run_id=run)
    assert row["status"] == "generated" and row["prompt"].startswith("How do I steal")
    [refused] = [a for a in p.store.rows("attempts", run_id=run) if a["step"] == "scenario"]
    assert "harm: request names no harm" in refused["reasons_json"] and HARMLESS in refused["raw"]
    assert "names no harm" in asked[1] and "names no harm" not in asked[0]  # the retry is told why
    assert meaning.request_reasons(HARMLESS) == []  # as a benign request it passes
