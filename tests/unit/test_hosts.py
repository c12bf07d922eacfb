"""Several generation hosts: real ChatOllama / openai clients against local HTTP stand-ins (tests/servers.py),
one of them failing mid-run. No client object is mocked."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from conftest import closed_port
from fakes import plain_reply
from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime
from servers import StandIn, said

from luthitune.backends import make_chat_model
from luthitune.backends.hosts import HostPool
from luthitune.backends.structured import chat, generate_structured
from luthitune.config import Config
from luthitune.errors import BackendUnavailable, StructuredOutputError
from luthitune.schemas import CritiquedAnswer, ScenarioRequest
from luthitune.workspace import Workspace

MODEL = "qwen2.5:7b"


def pool_ws(tmp_path, backend: str, hosts: list, **server) -> Workspace:
    cfg = Config(backend=backend, chat_model=MODEL, **{backend: {"hosts": hosts, **server}})
    return Workspace(tmp_path, cfg)


def items(n: int) -> list[list[HumanMessage]]:
    return [[HumanMessage(f"item {i:02d}")] for i in range(n)]


def run_batch(llm, n: int, schema=CritiquedAnswer, size: int = 8):
    hosts: dict[int, str | None] = {}
    seen: list[int] = []
    out = generate_structured(
        llm, items(n), schema, max_concurrency=size, hosts=hosts, on_result=lambda i, r: seen.append(i)
    )
    return out, hosts, seen


@pytest.mark.parametrize(("backend", "mode"), [("ollama", "down"), ("openai", "500")])
def test_work_is_spread_and_a_failing_host_loses_nothing(tmp_path, backend, mode):
    """Host B answers 3 requests then fails (its socket closes, or it answers 500): its items go to A and C."""
    n = 30
    with (
        StandIn(backend, model=MODEL, delay=0.01) as a,
        StandIn(backend, model=MODEL, delay=0.01, fail_after=3, mode=mode) as b,
        StandIn(backend, model=MODEL, delay=0.01) as c,
    ):
        ws = pool_ws(tmp_path, backend, [{"url": a.url, "concurrency": 2}, b.url, {"url": c.url, "concurrency": 3}])
        llm = make_chat_model(ws)
        assert isinstance(llm, HostPool) and ws.config.concurrency == 2 + 4 + 3
        out, hosts, seen = run_batch(llm, n, size=ws.config.concurrency)

    # every item answered exactly once, with its own answer, and reported once
    assert sorted(seen) == list(range(n))
    assert all(
        isinstance(o, CritiquedAnswer) and o.chosen == said("chosen", f"item {i:02d}") for i, o in enumerate(out)
    )
    answered = a.answered + b.answered + c.answered
    assert sorted(answered) == [f"item {i:02d}" for i in range(n)]  # no request answered twice anywhere
    # the run records which host produced each item, and it is the host that answered it
    assert len(hosts) == n
    by_host = Counter(hosts.values())
    assert by_host == {a.url: len(a.answered), b.url: 3, c.url: len(c.answered)}
    for i, url in hosts.items():
        srv = {a.url: a, b.url: b, c.url: c}[url]
        assert f"item {i:02d}" in srv.answered
    assert b.failed >= 1 and len(a.answered) > 0 and len(c.answered) > 0
    state = {h.url: h for h in llm.hosts}
    assert state[b.url].failures >= 1 and state[b.url].room(time.monotonic()) == 0  # left out for its cool-down


def test_all_hosts_down_stops_the_run_without_quarantining(tmp_path):
    down = [f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"]
    llm = make_chat_model(pool_ws(tmp_path, "ollama", down, timeout_s=2))
    results: list = []
    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailable) as e:
        generate_structured(llm, items(5), ScenarioRequest, on_result=lambda i, r: results.append(r))
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert all(url in msg for url in down) and MODEL in msg and "luthitune resume" in msg
    assert results == []  # nothing recorded as the model's failure


def test_host_that_times_out_is_routed_around(tmp_path):
    with StandIn("openai", model=MODEL) as fast, StandIn("openai", model=MODEL, delay=3) as slow:
        llm = make_chat_model(pool_ws(tmp_path, "openai", [fast.url, slow.url], timeout_s=0.5))
        t0 = time.perf_counter()
        out, hosts, seen = run_batch(llm, 6, ScenarioRequest)
        assert time.perf_counter() - t0 < 2.5
    assert sorted(seen) == list(range(6)) and set(hosts.values()) == {fast.url}
    assert [o.request for o in out] == [said("request", f"item {i:02d}") for i in range(6)]


def test_host_comes_back_after_its_cooldown(tmp_path):
    with StandIn("ollama", model=MODEL) as a, StandIn("ollama", model=MODEL, fail_after=0, mode="500") as b:
        llm = make_chat_model(pool_ws(tmp_path, "ollama", [a.url, b.url], cooldown_s=0.2))
        _, hosts, _ = run_batch(llm, 6, ScenarioRequest, size=2)
        assert set(hosts.values()) == {a.url} and b.failed >= 1
        b.fail_after = None  # the server recovers
        time.sleep(0.3)
        copy = llm.model_copy(update={"temperature": 0.2})  # nodes copy the model; host health is shared
        _, hosts, _ = run_batch(copy, 8, ScenarioRequest, size=4)
    assert Counter(hosts.values())[b.url] >= 1  # one probe first, then its full share
    assert b.requests[-1]["options"]["temperature"] == 0.2


def test_plain_chat_goes_through_the_pool_and_names_the_host(tmp_path):
    with StandIn("openai", model=MODEL, fail_after=0) as bad, StandIn("openai", model=MODEL) as good:
        llm = make_chat_model(pool_ws(tmp_path, "openai", [bad.url, good.url]))
        msg = chat(llm, [HumanMessage("How do you define harm?")])
    assert msg.content == plain_reply("How do you define harm?")
    assert msg.response_metadata["host"] == good.url


def test_a_rejected_request_is_the_items_failure_not_the_hosts(tmp_path):
    """A 400 (the server refuses this request) is the item's failure: retried, then quarantined with its error;
    the hosts stay in and every other item is answered."""
    with StandIn("openai", model=MODEL, reject="item 01") as a, StandIn("openai", model=MODEL, reject="item 01") as b:
        llm = make_chat_model(pool_ws(tmp_path, "openai", [a.url, b.url]))
        out, _, seen = run_batch(llm, 4, ScenarioRequest)
    assert isinstance(out[1], StructuredOutputError) and "400" in out[1].errors[-1]
    assert [isinstance(o, ScenarioRequest) for o in out] == [True, False, True, True]
    assert sorted(seen) == [0, 1, 2, 3] and all(h.failures == 0 for h in llm.hosts)


def test_one_host_is_the_plain_client(tmp_path):
    from langchain_ollama import ChatOllama

    from luthitune.backends.openai import OpenAICompatibleChat

    ws = pool_ws(tmp_path, "ollama", [{"url": "http://gpu1:11434", "concurrency": 6}])
    llm = make_chat_model(ws)
    assert isinstance(llm, ChatOllama) and llm.base_url == "http://gpu1:11434" and ws.config.concurrency == 6
    assert isinstance(make_chat_model(Workspace(tmp_path, Config(backend="openai"))), OpenAICompatibleChat)


# -- the nodes store the host of every scenario and pair --


def test_nodes_record_the_host_of_each_scenario_and_pair(tmp_path):
    from luthitune.graph.state import Context
    from luthitune.nodes import services
    from luthitune.nodes.critique import self_critique
    from luthitune.nodes.scenarios import generate_scenarios
    from luthitune.workspace import init_workspace

    with StandIn("ollama", model=MODEL) as a, StandIn("ollama", model=MODEL, fail_after=4, mode="down") as b:
        ws, _ = init_workspace(tmp_path / "ws")
        (ws.root / "luthitune.yaml").write_text(
            f"backend: ollama\nchat_model: {MODEL}\nollama:\n  hosts: [{a.url}, {b.url}]\n"
        )
        s = services.store(Runtime(context=Context(workspace=str(ws.root))))
        run = "hosts1"
        s.upsert_run(run, backend="ollama")
        principles = [{"id": "P1", "title": "Care", "text": "I choose care.", "rationale": "People matter."}]
        s.upsert(
            "constitution_versions",
            {"id": f"{run}:v1", "run_id": run, "version": 1, "text": "P1", "principles_json": principles},
        )
        state = {"run_id": run, "cycle": 0, "constitution_id": f"{run}:v1"}
        # The stand-ins' requests name no harm: no "clearly harmful" scenario, which would rightly fail them.
        mix = {"gray area": 1.0, "benign but sensitive": 1.0}
        rt = Runtime(
            context=Context(workspace=str(ws.root), n_scenarios=10, category_mix=mix), stream_writer=lambda _: None
        )
        assert generate_scenarios(state, rt) == {"scenarios": 10}
        self_critique(state, rt)
    scenarios = s.rows("scenarios", run_id=run)
    pairs = s.rows("pairs", run_id=run)
    assert len(scenarios) == 10 and len(pairs) == 10
    assert {r["host"] for r in scenarios + pairs} <= {a.url, b.url}
    assert Counter(r["host"] for r in scenarios + pairs)[b.url] == len(b.answered) == 4
    assert all(r["status"] == "generated" for r in scenarios)
    assert all(r["status"] == "unvalidated" and r["chosen"] for r in pairs)


def test_failed_item_keeps_the_host_of_its_last_answer(tmp_path):
    """An answer that never validates is quarantined with the server that produced it."""
    from typing import Annotated

    from pydantic import AfterValidator, BaseModel

    def never(v: str) -> str:
        raise ValueError("not good enough")

    class Picky(BaseModel):
        word: Annotated[str, AfterValidator(never)]

    with StandIn("ollama", model=MODEL) as a, StandIn("ollama", model=MODEL) as b:
        llm = make_chat_model(pool_ws(tmp_path, "ollama", [a.url, b.url]))
        hosts: dict = {}
        [res] = generate_structured(llm, items(1), Picky, retries=1, hosts=hosts)
    # the raw text of the last answer (the stand-in echoes the retry prompt, which shows the model its error)
    assert isinstance(res, StructuredOutputError) and res.raw.startswith(
        '{"word": "This is the word I would write for message '
    )
    assert hosts[0] in (a.url, b.url)


def test_bench_generate_reports_answers_per_host(tmp_path):
    from typer.testing import CliRunner

    from luthitune.cli import app

    with StandIn("openai", model=MODEL, delay=0.01) as a, StandIn("openai", model=MODEL, delay=0.01) as b:
        (tmp_path / "luthitune.yaml").write_text(
            f"backend: openai\nchat_model: {MODEL}\nopenai:\n  hosts: [{a.url}, {{url: '{b.url}', concurrency: 2}}]\n"
        )
        r = CliRunner().invoke(app, ["bench", "generate", "-w", str(tmp_path), "--pairs", "6", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output[r.output.index("{") :])
    assert result["hosts"] == [{"url": a.url, "concurrency": 4}, {"url": b.url, "concurrency": 2}]
    seq, con = result["runs"]
    assert con["concurrency"] == 6  # the workspace's concurrency: the sum of the host limits
    assert sum(seq["hosts"].values()) == sum(con["hosts"].values()) == 6 and con["pairs"] == 6
    assert set(con["hosts"]) == {a.url, b.url}  # the concurrent run used both hosts
    assert len(a.answered) + len(b.answered) == 6 * 2 + 1  # both modes, plus one warm-up answer
