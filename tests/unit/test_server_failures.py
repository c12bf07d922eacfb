"""A failing server is not a failing model: the real Ollama and OpenAI clients against local stand-ins
(tests/servers.py) that answer 500, time out or recover; and the graph when a step's server fails."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fakes import SchemaFakeModel, allow_small_runs, evaluator
from langchain_core.messages import HumanMessage
from servers import StandIn
from typer.testing import CliRunner

from luthitune.backends import hosts, make_chat_model
from luthitune.backends.structured import chat, generate_structured
from luthitune.cli import app
from luthitune.config import Config
from luthitune.errors import BackendUnavailable, StructuredOutputError
from luthitune.schemas import ScenarioRequest
from luthitune.workspace import Workspace

MODEL = "qwen2.5:7b"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(hosts, "RETRY_DELAYS_S", (0.01, 0.01))


def server_ws(tmp_path: Path, backend: str, url: str, **server) -> Workspace:
    return Workspace(tmp_path, Config(backend=backend, chat_model=MODEL, **{backend: {"base_url": url, **server}}))


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_a_5xx_in_a_chat_is_a_backend_failure_naming_url_and_model(tmp_path, backend):
    with StandIn(backend, model=MODEL, fail_after=0) as srv:
        llm = make_chat_model(server_ws(tmp_path, backend, srv.url))
        with pytest.raises(BackendUnavailable) as e:
            chat(llm, [HumanMessage("hello")])
    msg = str(e.value)
    assert e.value.exit_code == 3
    assert srv.url in msg and MODEL in msg and "500" in msg and "not reachable" not in msg
    assert "resume" in msg and "nothing was quarantined" in msg
    assert srv.failed == 3  # bounded retries: the first try and two more, then it stops


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_a_5xx_during_fan_out_stops_the_batch_and_quarantines_nothing(tmp_path, backend):
    """Two items answered, then the server fails: the two are stored, the rest are neither answers nor failures."""
    final: dict[int, object] = {}
    with StandIn(backend, model=MODEL, fail_after=2) as srv:
        llm = make_chat_model(server_ws(tmp_path, backend, srv.url, hosts=[]))
        convs = [[HumanMessage(f"item {i}")] for i in range(6)]
        with pytest.raises(BackendUnavailable) as e:
            generate_structured(llm, convs, ScenarioRequest, max_concurrency=1, on_result=final.__setitem__)
    assert srv.url in str(e.value) and MODEL in str(e.value)
    assert sorted(final) == [0, 1] and all(isinstance(v, ScenarioRequest) for v in final.values())
    assert not any(isinstance(v, StructuredOutputError) for v in final.values())


def test_a_transient_failure_is_retried_and_the_answer_kept(tmp_path):
    with StandIn("ollama", model=MODEL, fail_first=2) as srv:
        llm = make_chat_model(server_ws(tmp_path, "ollama", srv.url))
        reply = chat(llm, [HumanMessage("hello")])
    assert "hello" in reply.content and srv.failed == 2 and srv.answered == ["hello"]


def test_a_timeout_says_timed_out_not_unreachable(tmp_path):
    with StandIn("ollama", model=MODEL, delay=1.0) as srv:
        llm = make_chat_model(server_ws(tmp_path, "ollama", srv.url, timeout_s=0.2))
        with pytest.raises(BackendUnavailable) as e:
            chat(llm, [HumanMessage("hello")])
    msg = str(e.value)
    assert "did not answer within 0.2 s" in msg and "ollama.timeout_s" in msg and "not reachable" not in msg


def test_a_slow_call_reports_its_elapsed_time(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(hosts, "SLOW_AFTER_S", 0.2)
    monkeypatch.setattr(hosts, "REPORT_EVERY_S", 0.2)
    caplog.set_level(logging.INFO, logger="luthitune.hosts")
    with StandIn("ollama", model=MODEL, delay=1.6) as srv:
        chat(make_chat_model(server_ws(tmp_path, "ollama", srv.url)), [HumanMessage("hello")])
    waiting = [r.getMessage() for r in caplog.records if "Waiting for" in r.getMessage()]
    assert waiting and srv.url in waiting[0] and MODEL in waiting[0] and " s." in waiting[0]


def test_ollama_host_is_used_when_base_url_is_unset(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "gpu1:11500")
    assert Config().ollama.base_url == "http://gpu1:11500"
    assert Config.model_validate({"ollama": {"timeout_s": 5}}).ollama.base_url == "http://gpu1:11500"
    assert Config.model_validate({"ollama": {"base_url": "http://other:1"}}).ollama.base_url == "http://other:1"
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")
    assert Config().ollama.base_url == "http://0.0.0.0:11434"
    monkeypatch.setenv("OLLAMA_HOST", "https://ollama.example")
    assert Config().ollama.base_url == "https://ollama.example:443"
    monkeypatch.delenv("OLLAMA_HOST")
    assert Config().ollama.base_url == "http://127.0.0.1:11434"


def test_the_interview_on_a_failing_server_exits_3_naming_url_and_model(tmp_path):
    ws = tmp_path / "ws"
    assert CliRunner().invoke(app, ["init", str(ws)]).exit_code == 0
    with StandIn("ollama", model=f"{MODEL}", fail_after=0) as srv:
        (ws / "luthitune.yaml").write_text(
            f"backend: ollama\nchat_model: {MODEL}\nbase_model: {MODEL}\nallow_mismatch: true\n"
            f"ollama:\n  base_url: {srv.url}\n"
        )
        r = CliRunner().invoke(app, ["-w", str(ws), "run", "--autopilot", "--name", "r1"], terminal_width=200)
    assert r.exit_code == 3, r.output
    assert srv.url in r.output and MODEL in r.output and f"luthitune -w {ws} resume r1" in r.output
    assert "Unexpected error" not in r.output


def test_a_failing_server_in_a_step_stops_it_like_a_crash_and_resume_redoes_it(workspace):
    """The third scenario request meets a 500: the run stops (exit code 3), nothing is quarantined, and after the
    server recovers `resume` redoes the step and the run completes."""
    from ollama import ResponseError

    from luthitune.protocol import Protocol
    from luthitune.training.dpo import TrainResult

    down = ResponseError("model runner has unexpectedly stopped", 500)
    answers = {"ScenarioRequest": [{"request": f"How do tides work, part {i}?"} for i in range(2)] + [down]}
    llm = SchemaFakeModel(answers=answers)

    def trainer(pairs, name):
        return TrainResult(str(workspace.root / "adapter"), {"loss": 0.5})

    allow_small_runs(workspace)
    p = Protocol(workspace, llm=llm, trainer=trainer, evaluator=evaluator)
    # benign requests only: a "clearly harmful" scenario must name a harm, and these do not
    mix = {"benign but sensitive": 1.0}
    run = p.start({"autopilot": True, "n_scenarios": 4, "interview_turns": 1, "category_mix": mix}, run_id="r5")
    with pytest.raises(BackendUnavailable) as e:
        p.advance(run)
    assert e.value.exit_code == 3 and "resume r5" in str(e.value)
    rows = p.store.rows("scenarios", run_id=run)
    assert rows and all(r["status"] != "failed" for r in rows)  # the server's failure is not filed as the model's
    assert p.store.count("pairs", run_id=run) == 0
    assert p.status(run).status == "interrupted" and p.runs()[0]["status"] == "interrupted"
    llm.answers["ScenarioRequest"] = lambda i: {"request": f"Which plants grow in shade, variant {i}?"}
    assert p.advance(run).status == "done"
    assert p.store.count("scenarios", run_id=run, status="failed") == 0
