"""A workspace is untrusted input: a planted checkpoint runs nothing, names cannot leave the workspace, one process
holds a run, and broken or read-only files give one message that names them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import ormsgpack
import pytest
from fakes import SchemaFakeModel
from typer.testing import CliRunner

from luthitune.cli import app
from luthitune.errors import UsageError
from luthitune.graph.serde import ProjectSerializer, UnsafeCheckpoint
from luthitune.protocol import Protocol
from luthitune.workspace import Workspace

runner = CliRunner()


def cli(ws: Workspace, *args: str):
    return runner.invoke(app, ["-w", str(ws.root), *args], terminal_width=200)


@pytest.fixture
def waiting_run(workspace):
    """A run stopped at its first interview question, as a fake model left it."""
    p = Protocol(workspace, llm=SchemaFakeModel())
    run = p.start({"interview_turns": 2}, run_id="r1")
    assert p.advance(run).status == "waiting"
    return p, run


# -- 1. a checkpoint runs no code --


def evil(marker: Path) -> ormsgpack.Ext:
    """What a hostile checkpoint holds: LangGraph's "call module.name(arg)" ext type, naming os.system."""
    return ormsgpack.Ext(0, ormsgpack.packb(("os", "system", f"touch {marker}")))


def plant(ws: Workspace, run: str, where: str, marker: Path) -> str:
    db = sqlite3.connect(ws.checkpoints_dir / "graph.db")
    [cid] = db.execute(
        "select checkpoint_id from checkpoints where thread_id = ? order by checkpoint_id desc limit 1", [run]
    ).fetchone()
    if where == "write":
        db.execute(
            "insert into writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, "
            "value) values (?, '', ?, 'planted', '', 0, 'turn', 'msgpack', ?)",
            [run, cid, ormsgpack.packb(evil(marker))],
        )
    else:  # inside the checkpoint's own channel values
        [blob] = db.execute("select checkpoint from checkpoints where checkpoint_id = ?", [cid]).fetchone()
        opt = ormsgpack.OPT_NON_STR_KEYS
        value = ormsgpack.unpackb(blob, ext_hook=lambda code, data: ormsgpack.Ext(code, data), option=opt)
        value["channel_values"]["turn"] = evil(marker)
        db.execute("update checkpoints set checkpoint = ? where checkpoint_id = ?", [ormsgpack.packb(value), cid])
    db.commit()
    db.close()
    return cid


@pytest.mark.parametrize("where", ["write", "checkpoint"])
@pytest.mark.parametrize("command", ["status", "resume", "history"])
def test_a_planted_checkpoint_runs_nothing_and_the_error_names_it(waiting_run, tmp_path, where, command):
    p, run = waiting_run
    marker = tmp_path / "pwned"
    cid = plant(p.ws, run, where, marker)
    r = cli(p.ws, command, run)
    assert not marker.exists()
    assert r.exit_code == 2, r.output
    assert f"checkpoint {cid}" in r.output and "os.system" in r.output and "nothing in them was run" in r.output
    assert (
        f"luthitune -w {p.ws.root} fork {run} --checkpoint" in r.output
    )  # what to do: start again from the last clean one


def test_the_clean_checkpoint_named_in_the_error_can_be_forked(waiting_run, tmp_path):
    p, run = waiting_run
    plant(p.ws, run, "write", tmp_path / "pwned")
    with pytest.raises(UnsafeCheckpoint) as e:
        p.status(run)
    clean = str(e.value).split("--checkpoint ")[1].split("`")[0]
    assert cli(p.ws, "fork", run, "--checkpoint", clean, "--name", "r2").exit_code == 0
    assert p.status("r2").status in {"interrupted", "waiting"} and not (tmp_path / "pwned").exists()


def test_a_checkpoint_naming_another_run_is_not_advanced(waiting_run):
    """A plain string is an allowed value, but the nodes build paths from the state's run_id: a planted
    "../../x" there must not reach them."""
    p, run = waiting_run
    # the state is changed the way a hand-edited database would change it
    db = sqlite3.connect(p.ws.checkpoints_dir / "graph.db")
    [(cid, blob)] = db.execute(
        "select checkpoint_id, checkpoint from checkpoints where thread_id = ? order by checkpoint_id desc limit 1",
        [run],
    ).fetchall()
    value = ormsgpack.unpackb(blob, option=ormsgpack.OPT_NON_STR_KEYS)
    value["channel_values"]["run_id"] = "../../x"
    db.execute("update checkpoints set checkpoint = ? where checkpoint_id = ?", [ormsgpack.packb(value), cid])
    db.commit()
    with pytest.raises(UnsafeCheckpoint, match="names another run"):
        p.advance(run, "hello")
    assert p.store.count("messages", run_id=run) == 3


def test_the_types_the_project_stores_round_trip_and_nothing_else_loads():
    from datetime import datetime, timezone

    from langgraph.types import Command, Interrupt, Send

    serde = ProjectSerializer()
    values = [
        Interrupt(value={"type": "interview", "turn": 1}, id="abc"),
        Command(resume={"action": "approve", "by": "human"}),
        Send("self_critique", {"i": 3}),
        datetime(2025, 1, 2, tzinfo=timezone.utc),
        {"run_id": "r1", "cycle": 0, "evaluation": {"reward_acc": 0.5}},
    ]
    for v in values:
        out = serde.loads_typed(serde.dumps_typed(v))
        assert type(out) is type(v)
        assert (out.resume, list(out.goto)) == (v.resume, list(v.goto)) if isinstance(v, Command) else out == v
    with pytest.raises(UnsafeCheckpoint):
        serde.loads_typed(("msgpack", ormsgpack.packb({"nested": [evil(Path("/tmp/never"))]})))
    with pytest.raises(UnsafeCheckpoint):
        serde.loads_typed(("pickle", b"cos\nsystem\n."))


# -- 2. names that become paths --

BAD_NAMES = ["../../outside/x", "/abs/path", "..", "a\nb", "x" * 300]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_run_and_fork_names_cannot_leave_the_workspace(waiting_run, name):
    p, run = waiting_run
    r = cli(p.ws, "run", "--name", name)
    assert r.exit_code == 2 and "cannot be used" in r.output, r.output
    [cid] = [h["checkpoint_id"] for h in p.history(run)][:1]
    r = cli(p.ws, "fork", run, "--checkpoint", cid, "--name", name)
    assert r.exit_code == 2 and "cannot be used" in r.output, r.output
    assert [x["id"] for x in p.runs()] == [run]  # nothing was created


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_web_ui_start_refuses_the_same_names(workspace, name):
    import gradio as gr

    from luthitune.ui.app import build_app
    from luthitune.ui.jobs import Workbench

    wb = Workbench(workspace, llm=SchemaFakeModel())
    [start] = [f.fn for f in build_app(wb).fns.values() if f.api_name == "start_run"]
    with pytest.raises(gr.Error, match="cannot be used"):
        start(name, None, 2, 1, 2, 3, False, False)
    assert wb.protocol().runs() == []


def test_the_graph_input_refuses_a_path_as_run_id(workspace):
    from langgraph.checkpoint.memory import InMemorySaver

    from luthitune.graph.builder import build_graph
    from luthitune.graph.state import Context

    graph = build_graph(InMemorySaver())
    ctx = Context(workspace=str(workspace.root)).with_seams(llm=SchemaFakeModel())
    with pytest.raises(UsageError, match="cannot be used"):
        graph.invoke({"run_id": "../../x", "cycle": 0}, {"configurable": {"thread_id": "t"}}, context=ctx)
    from luthitune.store import Store

    assert Store(workspace.db_path).count("messages") == 0  # refused before the first node ran


def test_an_export_of_a_run_named_like_a_path_writes_and_deletes_nothing_outside(workspace, tmp_path):
    """A copied luthitune.db can hold any run name: `data export --run /abs/v` must not write /abs/v-c0."""
    from luthitune.store import Store

    outside = tmp_path / "outside" / "v"
    (outside.parent / "v-c0").mkdir(parents=True)
    (outside.parent / "v-c0" / "keep.txt").write_text("mine")
    s = Store(workspace.db_path)
    s.upsert_run(str(outside), status="done", config_json=json.dumps({"context": {}}))
    s.upsert("scenarios", {"id": "sc", "run_id": str(outside), "cycle": 0, "idx": 0, "status": "generated"})
    s.db["pairs"].insert(
        {"id": "p", "run_id": str(outside), "cycle": 0, "status": "kept", "prompt": "a", "chosen": "b", "rejected": "c"}
    )
    r = cli(workspace, "data", "export", "--run", str(outside))
    assert r.exit_code == 2 and "cannot be used" in r.output, r.output
    assert sorted(os.listdir(outside.parent)) == ["v-c0"] and os.listdir(outside.parent / "v-c0") == ["keep.txt"]


def test_other_names_are_checked_where_they_enter(workspace):
    r = cli(workspace, "export", "ollama", "../../x", "--adapter", "nope")
    assert r.exit_code == 2 and "Ollama model name" in r.output, r.output
    assert cli(workspace, "export", "ollama", "library/llama3:8b", "--adapter", "nope").exit_code == 2  # not found
    r = cli(workspace, "train", "--name", "../x")
    assert r.exit_code == 2 and "adapter name" in r.output, r.output


def test_run_name_existing_refuses_and_points_at_resume(waiting_run):
    p, run = waiting_run
    before = p.run_row(run)["config_json"]
    r = cli(p.ws, "run", "--name", run, "--scenarios", "77")
    assert r.exit_code == 2 and f"luthitune -w {p.ws.root} resume {run}" in r.output, r.output
    assert p.run_row(run)["config_json"] == before


# -- 3. one process per run --


@contextlib.contextmanager
def holder(ws: Workspace, run: str):
    """Another process holding the run, as a second `luthitune resume` would."""
    code = (
        "import sys, time; from pathlib import Path; from luthitune.runlock import hold\n"
        "with hold(Path(sys.argv[1]), sys.argv[2], 'luthitune resume (the other one)'):\n"
        "    print('held', flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(ws.data_dir), run], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def counts(p: Protocol, run: str) -> tuple[int, int]:
    db = sqlite3.connect(p.ws.checkpoints_dir / "graph.db")
    n = db.execute("select count(*) from checkpoints where thread_id = ?", [run]).fetchone()[0]
    return p.store.count("messages", run_id=run), n


def test_a_second_process_on_a_run_fails_at_once_naming_the_holder(waiting_run):
    import socket

    p, run = waiting_run
    before = counts(p, run)
    with holder(p.ws, run) as other:
        t0 = time.perf_counter()
        r = cli(p.ws, "answer", run, "What do you value?")
        assert time.perf_counter() - t0 < 10
        assert r.exit_code == 2, r.output
        assert (
            f"process {other.pid} on {socket.gethostname()}" in r.output
            and f"luthitune -w {p.ws.root} resume" in r.output
        )
        assert counts(p, run) == before  # no damage: nothing written, the checkpoint chain did not fork
        assert [x["status"] for x in p.runs()] == ["waiting:interview"]
        os.kill(other.pid, signal.SIGKILL)  # the holder dies without releasing anything by hand
        other.wait()
    st = p.advance(run, "What do you value?")  # a lock left by a killed process does not block
    assert st.status == "waiting" and st.values["turn"] == 2


def test_the_web_ui_worker_shares_the_lock(waiting_run):
    from luthitune.ui.jobs import Workbench

    p, run = waiting_run
    wb = Workbench(p.ws, llm=SchemaFakeModel())
    with holder(p.ws, run) as other:
        job = wb.submit(run, "What do you value?")
        wb.wait(run, 30)
        assert job.outcome == "failed" and f"process {other.pid}" in job.error
    assert counts(p, run)[0] == 3


def test_runs_shows_a_run_whose_process_died_as_interrupted(waiting_run):
    p, run = waiting_run
    p.store.upsert_run(run, status="running")  # what a killed process leaves behind
    with holder(p.ws, run):
        assert "running" in cli(p.ws, "runs").output
    out = cli(p.ws, "runs").output
    assert "interrupted" in out and "running" not in out


# -- 6. errors that name the file; a read-only workspace --


def test_non_utf8_files_are_errors_naming_them(workspace):
    (workspace.root / "luthitune.yaml").write_bytes(b"backend: local\nchat_model: caf\xe9\n")
    r = cli(workspace, "status")
    assert r.exit_code == 2 and str(workspace.root / "luthitune.yaml") in r.output and "UTF-8" in r.output, r.output
    (workspace.root / "luthitune.yaml").write_text("backend: local\n")
    (workspace.root / "config" / "lyra_dossier.txt").write_bytes(b"Bonjour, \xe9t\xe9")
    from luthitune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lyra_dossier\.txt is not UTF-8"):
        Workspace.open(workspace.root).invitation()


@pytest.mark.parametrize("where", ["/proc/no-such-dir/data", "FILE/data"])
def test_an_unreachable_data_folder_is_an_error_naming_it(workspace, where):
    (workspace.root / "afile").write_text("")
    where = where.replace("FILE", str(workspace.root / "afile"))
    (workspace.root / "luthitune.yaml").write_text(f"paths:\n  data: {where}\n")
    r = cli(workspace, "runs")
    assert r.exit_code == 2 and where in r.output and "paths.data" in r.output, r.output


def test_the_unexpected_error_footer_reads_right(workspace, monkeypatch):
    def boom(self, *a, **k):
        raise ValueError("inside")

    monkeypatch.setattr(Protocol, "runs", boom)
    r = cli(workspace, "runs")
    assert "Everything that finished before the error is saved" in r.output


def test_status_writes_nothing(waiting_run):
    p, run = waiting_run
    before = p.run_row(run)
    cli(p.ws, "status", run)
    p.status(run)
    assert p.run_row(run) == before


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only for this process: a read-only bind mount as root (root ignores permissions), else
    permissions. Skips where neither is possible."""
    if os.geteuid() == 0:
        ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
        if not ok or subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode:
            if ok:
                subprocess.run(["umount", str(folder)])
            pytest.skip("cannot make a read-only mount here")
        try:
            yield
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=True)  # -l: connections still open in this process
        return
    paths = [folder, *folder.rglob("*")]
    modes = {q: q.stat().st_mode for q in paths}
    for q in paths:
        q.chmod(modes[q] & ~0o222)
    try:
        yield
    finally:
        for q in reversed(paths):
            q.chmod(modes[q])


def test_reading_commands_work_on_a_read_only_workspace(waiting_run):
    p, run = waiting_run
    adapter = p.ws.models_dir / "adapters" / f"{run}-c0"
    adapter.mkdir(parents=True)
    (adapter / "luthitune-manifest.json").write_text(json.dumps({"run_id": run, "cycle": 0}))
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    p.store.close()
    with read_only(p.ws.root):
        for command in (["status", run], ["runs"], ["history", run]):
            r = cli(p.ws, *command)
            assert r.exit_code == 0, (command, r.output)
        r = cli(p.ws, "provenance", f"{run}-c0")  # its chain is incomplete (exit 1), but it is read and shown
        assert r.exit_code == 1 and "missing: consents" in r.output and "Error" not in r.output, r.output
        r = cli(p.ws, "answer", run, "hello")
        assert r.exit_code == 2 and "read-only" in r.output.lower() and str(p.ws.root) in r.output, r.output


def test_a_fresh_read_only_workspace_lists_no_runs(workspace):
    assert not (workspace.checkpoints_dir / "graph.db").exists()
    with read_only(workspace.root):
        assert cli(workspace, "runs").exit_code == 0
        r = cli(workspace, "status")
        assert r.exit_code == 1 and "no runs in this workspace yet" in r.output, r.output


# -- 8. the original tool's configuration file --

ORIGINAL = """\
model:
  name: "unsloth/llama-3-8b-bnb-4bit"
  max_seq_length: 2048
  load_in_4bit: true

lora:
  r: 16
  lora_alpha: 16
  lora_dropout: 0.0
  target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

training:
  learning_rate: 5e-5
  num_train_epochs: 3
  batch_size: 4
  gradient_accumulation_steps: 4
  warmup_steps: 10
  max_grad_norm: 0.3
  seed: 3407

dpo:
  beta: 0.1
  max_prompt_length: 1024
  max_length: 2048
"""


def test_the_original_hyperparameters_file_loads_with_one_note(workspace, caplog):
    path = workspace.root / "config" / "hyperparameters.yaml"
    path.write_text(ORIGINAL.replace('  name: "unsloth/llama-3-8b-bnb-4bit"\n', ""))
    with caplog.at_level("WARNING", logger="luthitune"):
        hp = workspace.hyperparameters()
        workspace.hyperparameters()
        run = Protocol(workspace, llm=SchemaFakeModel()).start()
    notes = [r.getMessage() for r in caplog.records if "max_prompt_length" in r.getMessage()]
    assert len(notes) == 1 and str(path) in notes[0] and "not used" in notes[0] and "dpo.max_length" in notes[0]
    assert hp.dpo.max_length == 2048 and hp.training.seed == 3407 and run


def test_the_original_model_name_shows_the_one_line_to_change(workspace):
    from luthitune.errors import ConfigError

    (workspace.root / "config" / "hyperparameters.yaml").write_text(ORIGINAL)
    with pytest.raises(ConfigError) as e:
        Protocol(workspace).start()
    msg = str(e.value)
    assert 'line 2:\n    name: "unsloth/llama-3-8b-bnb-4bit"' in msg
    assert f"Change that one line to\n    name: {workspace.config.base_model}" in msg
