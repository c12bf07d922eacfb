"""LangGraph's own server (`langgraph dev`, what LangGraph Studio talks to) on the project's langgraph.json, driven with
langgraph-sdk: a run started from input alone, its first interview question, an answer, then `luthitune status`.

The real embedded model answers; replies are kept short (sampling.max_new_tokens) and the run is not on autopilot,
so it stops at the first interview turn.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
LANGGRAPH = Path(sys.executable).with_name("langgraph")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`langgraph dev` on a copy of the project's langgraph.json whose env names a fresh workspace."""
    from luthitune.workspace import init_workspace

    ws, _ = init_workspace(tmp_path / "ws")
    path = ws.root / "luthitune.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["sampling"]["max_new_tokens"] = 24
    path.write_text(yaml.safe_dump(cfg))
    config = json.loads((ROOT / "langgraph.json").read_text())
    config["dependencies"] = [str(ROOT)]
    config["graphs"] = {k: str(ROOT / v.removeprefix("./")) for k, v in config["graphs"].items()}
    config["env"] = {**config.get("env", {}), "LUTHITUNE_HOME": str(ws.root)}
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "langgraph.json").write_text(json.dumps(config))
    port = free_port()
    env = {**os.environ, "LANGGRAPH_NO_VERSION_CHECK": "true", "LANGSMITH_TRACING": "false", "OMP_NUM_THREADS": "1"}
    env.pop("LUTHITUNE_HOME", None)  # the workspace comes from langgraph.json's env
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--port", str(port)],
        cwd=tmp_path / "server",
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"langgraph dev did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, ws, tmp_path / "server"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_studio_starts_a_run_from_input_alone_and_the_cli_sees_and_answers_it(server):
    from langgraph_sdk import get_client

    from luthitune import answers
    from luthitune.cli import app
    from luthitune.protocol import Protocol

    url, ws, folder = server

    async def drive() -> tuple[str, dict, dict, dict]:
        client = get_client(url=url)
        [assistant] = await client.assistants.search(graph_id="luthitune")
        schemas = await client.assistants.get_schemas(assistant["assistant_id"])
        thread = (await client.threads.create())["thread_id"]
        first = await client.runs.wait(thread, "luthitune", input={})  # no context: the workspace from env
        second = await client.runs.wait(thread, "luthitune", command={"resume": "What would you refuse, and why?"})
        return thread, schemas, first, second

    thread, schemas, first, second = asyncio.run(drive())
    assert schemas["input_schema"] and schemas["output_schema"]
    assert not {"llm", "trainer", "evaluator"} & set(schemas["context_schema"]["properties"])
    [asked] = first["__interrupt__"]
    assert asked["value"]["type"] == "interview" and asked["value"]["turn"] == 1
    assert asked["response_schema"] == answers.schema("interview") == asked["value"]["answers"]
    assert first["run_id"] == thread  # the run is named after its thread
    assert second["__interrupt__"][0]["value"]["turn"] == 2

    runner = CliRunner()
    r = runner.invoke(app, ["status", thread, "-w", str(ws.root)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "waiting" in r.output and "interview" in r.output and "turn: 2" in r.output and "messages: 5" in r.output
    [row] = Protocol(ws).runs()  # what `luthitune runs` and the web UI's runs table list
    assert (row["id"], row["status"]) == (thread, "waiting:interview")
    # The server keeps the run's checkpoints in the workspace (langgraph.json's checkpointer): the CLI answers it, and
    # the server sees the answer.
    r = runner.invoke(app, ["answer", thread, "Say more about that.", "-w", str(ws.root)], terminal_width=200)
    assert r.exit_code == 0, r.output

    async def state() -> dict:
        return await get_client(url=url).threads.get_state(thread)

    assert asyncio.run(state())["interrupts"][0]["value"]["turn"] == 3
    assert (folder / ".langgraph_api").is_dir()  # the server's own store of threads, which .gitignore names
    assert ".langgraph_api/" in (ROOT / ".gitignore").read_text().splitlines()
