"""The openai backend (any OpenAI-compatible server) against a local stand-in with the real client; the settings
for it, several hosts and the checkpointer; and the rule that an API key is never written to files or logs."""

from __future__ import annotations

import logging
import time

import pytest
from conftest import closed_port
from fakes import plain_reply
from langchain_core.messages import HumanMessage
from servers import StandIn, said
from typer.testing import CliRunner

from luthitune.backends import make_chat_model
from luthitune.backends.openai import OpenAICompatibleChat, check
from luthitune.backends.structured import ask_structured, chat, generate_structured
from luthitune.cli import app
from luthitune.config import Config
from luthitune.configfiles import load_model
from luthitune.errors import BackendUnavailable, ConfigError, StructuredOutputError
from luthitune.schemas import CritiquedAnswer, ScenarioRequest
from luthitune.workspace import Workspace

MODEL = "Qwen/Qwen2.5-7B-Instruct"
KEY = "sk-test-DO-NOT-LEAK-7f3a9c"


def openai_ws(tmp_path, url: str, model: str = MODEL, **section) -> Workspace:
    return Workspace(tmp_path, Config(backend="openai", chat_model=model, openai={"base_url": url, **section}))


def test_structured_output_uses_the_servers_json_schema(tmp_path):
    with StandIn("openai", model=MODEL) as srv:
        llm = make_chat_model(openai_ws(tmp_path, srv.url, extra_body={"repetition_penalty": 1.1}))
        assert isinstance(llm, OpenAICompatibleChat)
        ans = ask_structured(llm, [HumanMessage("item 7")], CritiquedAnswer)
    assert ans.chosen == said("chosen", "item 7")
    body = srv.requests[0]
    assert body["model"] == MODEL and body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == CritiquedAnswer.model_json_schema()
    assert body["repetition_penalty"] == 1.1  # extra_body fields reach the server as they are
    assert body["max_tokens"] >= 1400  # room for the longest valid answer, as on the local backend


def test_invalid_answer_is_retried_with_its_error_then_quarantined_with_raw_text(tmp_path):
    from typing import Annotated

    from pydantic import AfterValidator, BaseModel

    def short(v: str) -> str:
        if len(v) > 10:
            raise ValueError("at most 10 characters")
        return v

    class Short(BaseModel):
        word: Annotated[str, AfterValidator(short)]

    with StandIn("openai", model=MODEL) as srv:
        llm = make_chat_model(openai_ws(tmp_path, srv.url))
        with pytest.raises(StructuredOutputError) as e:
            ask_structured(llm, [HumanMessage("say something long")], Short, retries=1)
    assert len(srv.requests) == 2 and len(e.value.errors) == 2
    retry = srv.requests[1]["messages"]
    assert retry[-2] == {
        "role": "assistant",
        "content": '{"word": "This is the word I would write for say something long"}',
    }
    assert "at most 10 characters" in retry[-1]["content"]  # the model sees its error
    assert e.value.raw.startswith(
        '{"word": "This is the word I would write for message '
    )  # raw text kept for quarantine


def test_plain_chat(tmp_path):
    with StandIn("openai", model=MODEL) as srv:
        msg = chat(make_chat_model(openai_ws(tmp_path, srv.url)), [HumanMessage("What is harm?")])
    assert msg.content == plain_reply("What is harm?") and "response_format" not in srv.requests[0]


def test_unreachable_server_is_one_clear_error(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    llm = make_chat_model(openai_ws(tmp_path, url))
    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailable) as e:
        chat(llm, [HumanMessage("hi")])
    assert time.perf_counter() - t0 < 10  # the client's two retries back off briefly
    msg = str(e.value)
    assert url in msg and MODEL in msg and "vllm serve" in msg and "openai.base_url" in msg
    with pytest.raises(BackendUnavailable):  # structured calls stop the run rather than quarantine items
        generate_structured(llm, [[HumanMessage("x")]] * 2, ScenarioRequest)


def test_missing_model_names_it(tmp_path):
    with StandIn("openai", model="other-model") as srv:
        with pytest.raises(BackendUnavailable) as e:
            chat(make_chat_model(openai_ws(tmp_path, srv.url)), [HumanMessage("hi")])
        st = check(openai_ws(tmp_path, srv.url).config)
    assert MODEL in str(e.value) and "/models" in str(e.value)
    assert st.reachable and not st.model_present and st.models == ["other-model"]


def checks_by_name(ws_root) -> dict:
    from luthitune.doctor import backend_checks

    return {c.name: c for c in backend_checks(Workspace.open(ws_root))}


def test_doctor_reports_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with StandIn("openai", model=MODEL) as srv:
        (tmp_path / "luthitune.yaml").write_text(
            f"backend: openai\nchat_model: {MODEL}\nbase_model: {MODEL}\nopenai:\n  base_url: {srv.url}\n"
        )
        checks = checks_by_name(tmp_path)
        r = CliRunner().invoke(app, ["doctor", "-w", str(tmp_path)], terminal_width=250)
    assert checks["openai server"].ok and checks["openai server"].detail == f"serves {MODEL}"
    assert checks["API key"].detail == "from $OPENAI_API_KEY: set"
    assert f"serves {MODEL}" in r.output and KEY not in r.output
    down = checks_by_name(tmp_path)["openai server"]  # the server is gone
    assert not down.ok and down.required and srv.url in down.detail and "vllm serve" in down.detail


def test_doctor_checks_every_host(tmp_path):
    with StandIn("ollama", model="qwen2.5:7b") as up:
        down = f"http://127.0.0.1:{closed_port()}"
        (tmp_path / "luthitune.yaml").write_text(
            f"backend: ollama\nchat_model: qwen2.5:7b\nollama:\n  hosts: [{up.url}, {down}]\n"
        )
        checks = checks_by_name(tmp_path)
    assert checks[f"ollama host {up.url}"].ok
    dead = checks[f"ollama host {down}"]
    assert not dead.ok and not dead.required and down in dead.detail  # a warning while another host works
    assert checks["ollama hosts"].ok and checks["ollama hosts"].detail.startswith("1 of 2 hosts ready")


# -- the API key: read from the environment, never written to files or logs --


def test_key_is_read_from_the_environment_and_never_written(tmp_path, monkeypatch, caplog):
    from luthitune.protocol import Protocol
    from luthitune.workspace import init_workspace

    monkeypatch.setenv("MY_VLLM_KEY", "right-key")
    caplog.set_level(logging.DEBUG)  # every library's debug log, as with --verbose
    with StandIn("openai", model="needs-key") as srv:
        ws, _ = init_workspace(tmp_path / "ws")
        (ws.root / "luthitune.yaml").write_text(
            f"backend: openai\nchat_model: needs-key\nbase_model: needs-key\n"
            f"openai:\n  base_url: {srv.url}\n  api_key_env: MY_VLLM_KEY\n"
        )
        ws = Workspace.open(ws.root)
        llm = make_chat_model(ws)
        assert chat(llm, [HumanMessage("hi")]).content == plain_reply("hi")
        assert srv.headers_seen[-1]["authorization"] == "Bearer right-key"
        assert "right-key" not in repr(llm) and "right-key" not in str(llm.model_dump())
        # a wrong key: the error names the variable, never the key
        monkeypatch.setenv("MY_VLLM_KEY", KEY)
        with pytest.raises(BackendUnavailable) as e:
            chat(make_chat_model(ws), [HumanMessage("hi")])
        assert "MY_VLLM_KEY" in str(e.value) and KEY not in str(e.value)
        r = CliRunner().invoke(app, ["-v", "doctor", "-w", str(ws.root)], terminal_width=250)
        assert "MY_VLLM_KEY" in r.output
        run = Protocol(ws).start({"autopilot": True})  # stores the run's settings, luthitune.yaml's included
    assert KEY not in r.output and KEY not in caplog.text and "right-key" not in caplog.text
    files = [p for p in ws.root.rglob("*") if p.is_file()]
    assert files and not any(KEY.encode() in p.read_bytes() for p in files)  # config, database, checkpoints
    row = Protocol(ws).run_row(run)
    assert "MY_VLLM_KEY" in row["config_json"] and KEY not in row["config_json"]


def test_a_key_in_the_config_file_is_refused_without_echoing_it(tmp_path):
    p = tmp_path / "luthitune.yaml"
    p.write_text(f"backend: openai\nopenai:\n  api_key: {KEY}\n")
    with pytest.raises(ConfigError) as e:
        load_model(Config, p)
    assert "openai.api_key" in str(e.value) and "environment variable" in str(e.value) and KEY not in str(e.value)
    p.write_text(f"backend: openai\nopenai:\n  api_key_env: {KEY}\n")  # the key pasted in place of the name
    with pytest.raises(ConfigError) as e:
        load_model(Config, p)
    assert "openai.api_key_env" in str(e.value) and "NAME" in str(e.value) and KEY not in str(e.value)


# -- settings: several hosts, the checkpointer --


def load(tmp_path, text: str) -> Config:
    p = tmp_path / "luthitune.yaml"
    p.write_text(text)
    return load_model(Config, p)


def test_hosts_settings(tmp_path):
    cfg = load(
        tmp_path,
        "backend: openai\nopenai:\n  hosts:\n    - http://a:8000/v1/\n"
        "    - {url: 'http://b:8000/v1', concurrency: 16}\n",
    )
    assert [(h.url, h.concurrency) for h in cfg.hosts()] == [("http://a:8000/v1", 4), ("http://b:8000/v1", 16)]
    assert cfg.concurrency == 20  # default: the sum of the hosts' limits
    assert (
        load(tmp_path, "backend: openai\nconcurrency: 6\nopenai: {hosts: [http://a:1, http://b:2]}\n").concurrency == 6
    )
    single = load(tmp_path, "backend: ollama\n")
    assert [(h.url, h.concurrency) for h in single.hosts()] == [("http://127.0.0.1:11434", 4)]
    assert load(tmp_path, "backend: openai\n").concurrency == 8 and Config().hosts() == []


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("ollama:\n  base_url: http://a:1\n  hosts: [http://b:2]\n", "ollama", "not both"),
        ("ollama:\n  hosts: [http://b:2, http://b:2/]\n", "ollama", "twice"),
        ("openai:\n  hosts: [ftp://b:2]\n", "openai.hosts.0.url", "http://"),
        ("openai:\n  hosts: [{url: 'http://b:2', concurrency: 0}]\n", "openai.hosts.0.concurrency", "greater"),
        ("openai:\n  cooldown_s: -1\n", "openai.cooldown_s", "greater"),
        ("backend: vllm\n", "backend", "openai"),
        ("checkpointer: mysql://db/x\n", "checkpointer", "postgresql://"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, text, field, words):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert f"'{field}'" in str(e.value) and words in str(e.value)


def test_checkpointer_url_without_password(tmp_path):
    url = "postgresql://luthitune@db:5432/luthitune"
    assert load(tmp_path, f"checkpointer: {url}\n").checkpointer == url
    with pytest.raises(ConfigError) as e:
        load(tmp_path, "checkpointer: postgresql://me:hunter2@db/x\n")
    assert "PGPASSWORD" in str(e.value) and "hunter2" not in str(e.value)


def test_default_config_documents_the_new_settings():
    from luthitune.config import default_config_yaml

    text = default_config_yaml()
    for words in ("backend: local", "openai:", "api_key_env: OPENAI_API_KEY", "# hosts:", "checkpointer: sqlite"):
        assert words in text
