"""``luthitune bench generate --vs URL``: the same pairs on the workspace's engine and on an OpenAI-compatible peer,
alternating in one run, against local stand-in servers (the real clients talk to them)."""

from __future__ import annotations

import json

from conftest import closed_port
from servers import StandIn
from typer.testing import CliRunner

from luthitune.cli import app
from luthitune.config import Config
from luthitune.workspace import init_workspace

MODEL = "Qwen/Qwen2.5-7B-Instruct"
PEER = "SmolLM2-135M-Instruct.Q4_1.gguf"


def openai_ws(tmp_path, url: str):
    ws, _ = init_workspace(tmp_path / "ws")
    ws.config = Config(backend="openai", chat_model=MODEL, openai={"base_url": url})
    (ws.root / "luthitune.yaml").write_text(
        f"backend: openai\nchat_model: {MODEL}\nopenai: {{base_url: '{url}'}}\n", encoding="utf-8"
    )
    return ws


def test_vs_runs_every_mode_on_both_engines_alternating_and_prints_the_ratio(tmp_path):
    with StandIn("openai", model=MODEL) as mine, StandIn("openai", model=PEER) as peer:
        ws = openai_ws(tmp_path, mine.url)
        args = ["bench", "generate", "-w", str(ws.root), "--pairs", "3", "--batch", "2", "--repeats", "2"]
        r = CliRunner().invoke(app, [*args, "--vs", peer.url, "--json"], terminal_width=200)
        assert r.exit_code == 0, r.output
        out = json.loads(r.output[r.output.index("{") :])
    rows = [(row["engine"], row["mode"]) for row in out["runs"]]
    # interleaved: in each mode the workspace's engine, then the peer
    assert rows == [("openai", "sequential"), ("vs", "sequential"), ("openai", "concurrent"), ("vs", "concurrent")]
    assert all(len(row["runs"]) == 2 and row["pairs"] == 3 for row in out["runs"])
    # the same pairs on both: one warm-up, then 3 pairs x 2 modes x 2 rounds each
    assert len(mine.requests) == len(peer.requests) == 1 + 3 * 2 * 2
    # (compared as sets: concurrent requests arrive in any order)
    asked = [sorted(json.dumps(r["messages"]) for r in srv.requests[1:]) for srv in (mine, peer)]
    assert asked[0] == asked[1]
    assert {b["model"] for b in peer.requests} == {PEER}  # the one model the peer serves
    assert peer.requests[1]["top_k"] == 50 and peer.requests[1]["min_p"] == 0.0  # sampling as the local engine
    assert set(out["vs"]["ratio"]) == {"sequential", "concurrent"} and out["vs"]["model"] == PEER
    assert all(row["load_average"] is not None for row in out["runs"])


def test_the_table_shows_both_engines_and_the_ratio(tmp_path, monkeypatch):
    from luthitune.logs import console

    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(console, "width", 250)  # another test in this process may have set it narrower
    with StandIn("openai", model=MODEL) as mine, StandIn("openai", model=PEER) as peer:
        ws = openai_ws(tmp_path, mine.url)
        args = ["bench", "generate", "-w", str(ws.root), "--pairs", "2", "--batch", "2", "--vs", peer.url]
        r = CliRunner().invoke(app, args, terminal_width=250)
    assert r.exit_code == 0, r.output
    assert "openai / vs: sequential" in r.output and f"model {PEER}" in r.output
    lines = r.output.splitlines()
    engines = [ln.split("│")[1].strip() for ln in lines if ln.startswith("│") and ln.split("│")[1].strip()]
    assert engines.count("vs") == 2 and engines.count("openai") == 2


def test_an_unreachable_peer_is_a_backend_error_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with StandIn("openai", model=MODEL) as mine:
        ws = openai_ws(tmp_path, mine.url)
        r = CliRunner().invoke(app, ["bench", "generate", "-w", str(ws.root), "--pairs", "1", "--vs", url])
    assert r.exit_code == 3 and url in r.output and not mine.requests


def test_a_peer_model_it_does_not_serve_is_a_usage_error(tmp_path):
    with StandIn("openai", model=MODEL) as mine, StandIn("openai", model=PEER) as peer:
        ws = openai_ws(tmp_path, mine.url)
        args = ["bench", "generate", "-w", str(ws.root), "--pairs", "1", "--vs", peer.url, "--vs-model", "other"]
        r = CliRunner().invoke(app, args, terminal_width=200)
    assert r.exit_code == 2 and "does not serve 'other'" in r.output and PEER in r.output


def test_bench_matmul_times_each_format_on_the_models_own_shapes(tmp_path):
    """One row per decode width, each format's milliseconds for the embedded model's 211 linear products (30 layers
    of seven, and the output layer), and the speed-ups printed beside them."""
    ws, _ = init_workspace(tmp_path / "ws")
    r = CliRunner().invoke(app, ["bench", "matmul", "-w", str(ws.root), "--rows", "1", "--json"], terminal_width=200)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)  # stdout alone: a first run logs the dequantization to stderr
    [row] = data["runs"]
    assert data["products"] == 211 and row["rows"] == 1
    assert row["fp32"] > 0 and row["bf16"] > 0 and (row["int8"] is None or row["int8"] > 0)
    table = CliRunner().invoke(app, ["bench", "matmul", "-w", str(ws.root), "--rows", "1"], terminal_width=200)
    assert table.exit_code == 0 and "bf16 speed-up" in table.output and "int8 weight-only" in table.output
