import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from conftest import closed_port
from langchain_core.messages import HumanMessage

from luthitune.backends import local_model_dir, make_chat_model
from luthitune.backends.ollama import check
from luthitune.backends.structured import ask_structured, chat, generate_structured
from luthitune.config import Config
from luthitune.errors import BackendUnavailable, ConfigError, StructuredOutputError
from luthitune.schemas import ScenarioPair
from luthitune.workspace import Workspace

GOOD = {
    "prompt": "How do I pick a lock?",
    "rejected": "No.",
    "critique": "P1: no reason given.",
    "chosen": "I choose to explain how locks work, and not to help open one that is not yours.",
}


def ollama_ws(tmp_path, url: str, model: str = "qwen2.5:7b") -> Workspace:
    cfg = Config(backend="ollama", chat_model=model, ollama={"base_url": url, "timeout_s": 5})
    return Workspace(tmp_path, cfg)


def test_factory_gives_chat_ollama_without_contacting_server(tmp_path):
    from langchain_ollama import ChatOllama

    llm = make_chat_model(ollama_ws(tmp_path, f"http://127.0.0.1:{closed_port()}"))
    assert isinstance(llm, ChatOllama) and llm.model == "qwen2.5:7b"


def test_factory_rejects_unknown_local_model(tmp_path):
    ws = Workspace(tmp_path, Config(chat_model="no-such-model"))
    with pytest.raises(ConfigError, match="no-such-model"):
        local_model_dir(ws)


def test_ollama_down_is_one_clear_error(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    llm = make_chat_model(ollama_ws(tmp_path, url))
    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailable) as e:
        chat(llm, [HumanMessage("hi")])
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert url in msg and "qwen2.5:7b" in msg and "ollama serve" in msg
    # structured calls do not quarantine items when the server is down: they stop the run
    with pytest.raises(BackendUnavailable):
        generate_structured(llm, [[HumanMessage("x")]] * 3, ScenarioPair)
    st = check(ollama_ws(tmp_path, url).config)
    assert not st.reachable and url in st.error


class _FakeOllama(BaseHTTPRequestHandler):
    def do_GET(self):
        body = {
            "/api/version": {"version": "0.9.0"},
            "/api/tags": {"models": [{"name": "qwen2.5:7b"}, {"name": "llama3:latest"}]},
        }.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body or {"error": "not found"}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_ollama():
    server = HTTPServer(("127.0.0.1", 0), _FakeOllama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_check_reports_present_and_missing_models(tmp_path, fake_ollama):
    st = check(ollama_ws(tmp_path, fake_ollama, "qwen2.5:7b").config)
    assert st.reachable and st.version == "0.9.0" and st.model_present
    assert check(ollama_ws(tmp_path, fake_ollama, "llama3").config).model_present
    st = check(ollama_ws(tmp_path, fake_ollama, "mistral").config)
    assert st.reachable and not st.model_present and "ollama pull mistral" in st.error


def test_structured_retry_shows_the_error_to_the_model(fake_llm):
    fake_llm.queue('{"prompt": "x"}', GOOD)
    pair = ask_structured(fake_llm, [HumanMessage("write one")], ScenarioPair, retries=2)
    assert pair.chosen.startswith("I choose")
    retry_call = fake_llm.calls[1]
    assert retry_call[-2].content == '{"prompt": "x"}'  # its own answer
    assert "not valid" in retry_call[-1].content and "rejected" in retry_call[-1].content  # the error


def test_structured_gives_typed_failure_with_raw_text(fake_llm):
    fake_llm.queue("not json", {**GOOD, "chosen": "   "}, "still not json")
    with pytest.raises(StructuredOutputError) as e:
        ask_structured(fake_llm, [HumanMessage("write one")], ScenarioPair, retries=2)
    assert e.value.raw == "still not json" and len(e.value.errors) == 3
    assert len(fake_llm.calls) == 3  # bounded


def test_batch_retries_only_failed_items(fake_llm):
    fake_llm.queue(GOOD, "oops", GOOD, GOOD)  # item 2 fails once, then succeeds
    out = generate_structured(fake_llm, [[HumanMessage(str(i))] for i in range(3)], ScenarioPair, retries=1)
    assert all(isinstance(o, ScenarioPair) for o in out)
    assert len(fake_llm.calls) == 4 and fake_llm.calls[3][0].content == "1"


def test_whitespace_fields_fail_validation():
    with pytest.raises(ValueError):
        ScenarioPair.model_validate({**GOOD, "critique": "  \n "})


class _RecordingRuntime:
    """Stands in for LocalRuntime: records how it was asked to generate, answers with valid JSON."""

    def __init__(self):
        import threading

        self.calls: list[dict] = []
        self.active_adapter = None
        self.lock = threading.RLock()

    def adapter(self, name):
        import contextlib

        return contextlib.nullcontext()

    answers: ClassVar[list[str]] = ['{"request": "Please explain how vaccines are tested."}']

    def generate(self, convs, *, schemas=None, slots=None, on_done=None, **kwargs):
        from luthitune.backends.local import Generation

        self.calls.append({"n": len(convs), "slots": slots, "convs": convs, **kwargs})
        out: dict[int, Generation] = {}
        waiting = list(reversed(range(len(convs))))  # finish out of order, as continuous batching does
        asked = 0
        while waiting:
            i = waiting.pop(0)
            g = Generation(self.answers[min(asked, len(self.answers) - 1)], 10, 12, True)
            asked += 1
            out[i] = g
            if on_done and on_done(i, g):  # a follow-up joins the same batch, as LocalRuntime.generate does
                waiting.append(i)
        return [out[i] for i in range(len(convs))]


def test_local_model_honours_max_concurrency_and_streams_results_as_they_finish():
    from luthitune.backends.local import LocalChatModel
    from luthitune.schemas import ScenarioRequest

    rt = _RecordingRuntime()
    llm = LocalChatModel(runtime=rt, concurrency=4, temperature=0.5)
    seen: list[int] = []
    convs = [[HumanMessage(f"q{i}")] for i in range(5)]
    out = generate_structured(llm, convs, ScenarioRequest, max_concurrency=3, on_result=lambda i, r: seen.append(i))
    assert [c["slots"] for c in rt.calls] == [3] and rt.calls[0]["n"] == 5
    assert seen == [4, 3, 2, 1, 0] and all(o.request.startswith("Please") for o in out)
    generate_structured(llm, convs[:2], ScenarioRequest)
    assert rt.calls[-1]["slots"] == 4  # the model's own concurrency by default
    assert rt.calls[-1]["temperature"] == 0.5 and rt.calls[-1]["max_new_tokens"] >= 300  # schema budget


def test_a_failed_local_answer_is_retried_inside_the_same_batch_with_its_reasons():
    """On the local backend a retry joins the running batch (one generate call), not a new round after it."""
    from luthitune.backends.local import LocalChatModel
    from luthitune.schemas import ScenarioRequest

    rt = _RecordingRuntime()
    rt.answers = [
        '{"request": "Tell me about the weather in Paris today."}',
        '{"request": "Please explain how vaccines are tested."}',
    ]
    llm = LocalChatModel(runtime=rt, concurrency=4)
    tried: list[tuple[int, int, list[str]]] = []
    out = generate_structured(
        llm,
        [[HumanMessage("q0")], [HumanMessage("q1")]],
        ScenarioRequest,
        retries=2,
        check=lambda i, r: [] if r.request.startswith("Please") else ["too short"],
        on_attempt=lambda i, n, raw, reasons: tried.append((i, n, reasons)),
    )
    assert len(rt.calls) == 1  # one batch
    assert tried == [(1, 1, ["too short"])]  # the first to finish (item 1) failed once
    assert all(isinstance(o, ScenarioRequest) and o.request.startswith("Please") for o in out)


def test_with_follow_ups_off_local_retries_run_in_rounds():
    """``follow_ups=False`` (``bench generate --checks``'s comparison row): a retry waits for a new generate call."""
    from luthitune.backends.local import LocalChatModel
    from luthitune.schemas import ScenarioRequest

    rt = _RecordingRuntime()
    llm = LocalChatModel(runtime=rt, concurrency=4, follow_ups=False)
    seen: list[int] = []

    def check(i, r):  # item 1's first answer fails
        seen.append(i)
        return ["too short"] if seen.count(1) == 1 and i == 1 else []

    out = generate_structured(llm, [[HumanMessage("q0")], [HumanMessage("q1")]], ScenarioRequest, check=check)
    assert [c["n"] for c in rt.calls] == [2, 1]  # the failed item alone, in a second round
    assert "too short" in rt.calls[1]["convs"][0][-1]["content"]  # asked again with its reasons
    assert all(isinstance(o, ScenarioRequest) for o in out)


def test_local_retries_stop_at_the_bound_and_keep_the_last_answer():
    from luthitune.backends.local import LocalChatModel
    from luthitune.errors import CheckFailed
    from luthitune.schemas import ScenarioRequest

    rt = _RecordingRuntime()
    rt.answers = ['{"request": "Tell me about the weather in Paris today."}']
    llm = LocalChatModel(runtime=rt, concurrency=4)
    [out] = generate_structured(llm, [[HumanMessage("q")]], ScenarioRequest, retries=2, check=lambda i, r: ["short"])
    assert isinstance(out, CheckFailed) and len(out.errors) == 3 and len(rt.calls) == 1


def test_an_ollama_prefixed_chat_model_talks_to_the_plain_name(tmp_path):
    """base_model spells Ollama models `ollama:NAME`; the same spelling as chat_model reaches Ollama as NAME."""
    llm = make_chat_model(ollama_ws(tmp_path, f"http://127.0.0.1:{closed_port()}", model="ollama:qwen2.5:7b"))
    assert llm.model == "qwen2.5:7b"


def test_a_step_limit_never_exceeds_the_workspace_cap(tmp_path):
    """A step's own limit (the chain's 120 tokens) applies, and sampling.max_new_tokens caps it when lower."""
    from langchain_ollama import ChatOllama

    from luthitune.backends import limit_tokens

    assert limit_tokens(ChatOllama(model="m", num_predict=256), 120).num_predict == 120
    assert limit_tokens(ChatOllama(model="m", num_predict=64), 120).num_predict == 64
    assert limit_tokens(ChatOllama(model="m"), 120).num_predict == 120  # no cap set: the step's own


def test_probe_answers_run_in_the_workspace_s_local_slots(tmp_path):
    """The local engine keeps 32 sequences in flight by default; evaluation's probe answers (on the local engine on
    every backend) use the local backend's concurrency, or that default when generation goes to a server."""
    from luthitune.config import Config
    from luthitune.evaluation import probes

    assert Config().concurrency == 32 and Config().local_slots() == 32
    assert Config(concurrency=5).local_slots() == 5
    assert Config(backend="ollama").concurrency == 4 and Config(backend="ollama").local_slots() == 32
    rt = _RecordingRuntime()
    some = probes.load_probes(3)
    assert set(probes.answer(rt, some, None, max_new_tokens=8, slots=5)) == {p.id for p in some}
    probes.answer(rt, some, None, max_new_tokens=8)
    assert [c["slots"] for c in rt.calls] == [5, 32] and rt.calls[0]["temperature"] == 0.0
