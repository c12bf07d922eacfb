import pytest
from conftest import closed_port
from typer.testing import CliRunner

from luthitune.cli import app
from luthitune.store import Store

runner = CliRunner()


def test_init_creates_workspace_and_database(tmp_path):
    r = runner.invoke(app, ["init", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "w" / "luthitune.yaml").exists()
    s = Store(tmp_path / "w" / "data" / "luthitune.db")
    assert "m001_runs" in s.applied_migrations()


def test_init_uses_global_workspace_flag_and_env(tmp_path, monkeypatch):
    assert runner.invoke(app, ["--workspace", str(tmp_path / "a"), "init"]).exit_code == 0
    assert (tmp_path / "a" / "luthitune.yaml").exists()
    monkeypatch.setenv("LUTHITUNE_HOME", str(tmp_path / "b"))
    assert runner.invoke(app, ["init"]).exit_code == 0
    assert (tmp_path / "b" / "luthitune.yaml").exists()
    # -w after the command, as every other command takes it
    assert runner.invoke(app, ["init", "-w", str(tmp_path / "c")]).exit_code == 0
    assert (tmp_path / "c" / "luthitune.yaml").exists()
    r = runner.invoke(app, ["init", str(tmp_path / "d"), "-w", str(tmp_path / "e")], terminal_width=200)
    assert r.exit_code == 2 and "two folders given" in r.output
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_doctor_with_ollama_down_exits_1_naming_url(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    (tmp_path / "luthitune.yaml").write_text(f"backend: ollama\nchat_model: qwen2.5:7b\nollama:\n  base_url: {url}\n")
    r = runner.invoke(app, ["doctor", "-w", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 1
    assert url in r.output and "ollama serve" in r.output


def test_doctor_with_broken_config_exits_1_naming_field(tmp_path):
    (tmp_path / "luthitune.yaml").write_text("concurrency: zero\n")
    r = runner.invoke(app, ["doctor", "-w", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 1 and "concurrency" in r.output


def test_typed_errors_exit_non_zero_with_message(tmp_path):
    (tmp_path / "luthitune.yaml").write_text("backend: [\n")
    r = runner.invoke(app, ["demo", "-w", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 2 and "not valid YAML" in r.output


def test_wrong_flag_is_a_usage_error():
    r = runner.invoke(app, ["init", "--frobnicate"])
    assert r.exit_code == 2


def test_fork_of_unknown_run_or_checkpoint_exits_2_with_the_way_forward(tmp_path):
    from luthitune.protocol import Protocol
    from luthitune.workspace import Workspace

    assert runner.invoke(app, ["init", str(tmp_path)]).exit_code == 0
    r = runner.invoke(app, ["fork", "nope", "--checkpoint", "x", "-w", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 2 and "no runs yet" in r.output
    run = Protocol(Workspace.open(tmp_path)).start()
    r = runner.invoke(app, ["fork", run, "--checkpoint", "x", "-w", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 2 and f"luthitune -w {tmp_path} history {run}" in r.output


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["init"],
        ["doctor"],
        ["demo"],
        ["bench"],
        ["bench", "generate"],
        ["bench", "tokens"],
        ["data"],
        ["data", "export"],
        ["fork"],
        ["run"],
        ["status"],
    ],
)
def test_help_everywhere(cmd):
    r = runner.invoke(app, [*cmd, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_an_unexpected_error_is_one_message_with_the_way_forward(tmp_path, monkeypatch):
    from luthitune.protocol import Protocol

    assert runner.invoke(app, ["init", str(tmp_path)]).exit_code == 0

    def boom(self, *a, **k):
        raise ValueError("something inside broke")

    monkeypatch.setattr(Protocol, "runs", boom)
    r = runner.invoke(app, ["runs", "-w", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 1 and "Unexpected error: ValueError: something inside broke" in r.output
    assert f"luthitune -w {tmp_path} resume RUN" in r.output and "Traceback" not in r.output


def test_an_interrupted_throwaway_demo_keeps_its_workspace_and_says_where(monkeypatch, tmp_path):
    import luthitune.demo

    def interrupted(path, **kwargs):
        (path / "luthitune.yaml").write_text("backend: local\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(luthitune.demo, "run_demo", interrupted)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    r = runner.invoke(app, ["demo"])
    assert r.exit_code == 130
    [kept] = list(tmp_path.glob("luthitune-demo-*"))
    assert (kept / "luthitune.yaml").exists()
    assert f"luthitune -w {kept} status" in r.output.replace("\n", "")


@pytest.mark.parametrize("flag", [[], ["--discard"]])
def test_a_finished_throwaway_demo_keeps_its_workspace_unless_discarded(monkeypatch, tmp_path, flag):
    """The demo's summary points at its report and database: by default they are still there afterwards."""
    import luthitune.demo

    def finished(path, **kwargs):
        (path / "luthitune.yaml").write_text("backend: local\n")
        return {"run_id": "r", "seconds": 1.0, "status": "done", "ended_by": None}

    monkeypatch.setattr(luthitune.demo, "run_demo", finished)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    r = runner.invoke(app, ["demo", *flag], terminal_width=300)
    assert r.exit_code == 0, r.output
    kept = list(tmp_path.glob("luthitune-demo-*"))
    if flag:
        assert kept == [] and "kept at" not in r.output
    else:
        assert len(kept) == 1 and (kept[0] / "luthitune.yaml").exists()
        assert f"luthitune -w {kept[0]} constitution show" in r.output.replace("\n", "")


def test_suggested_commands_name_the_workspace_when_it_is_not_the_default(tmp_path, monkeypatch):
    """`luthitune -w DIR resume x` outside DIR: the message's `luthitune run` must be run on DIR too, so it says
    `luthitune -w DIR run`; inside DIR (the default workspace) it stays bare."""
    ws = tmp_path / "ws"
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
    monkeypatch.delenv("LUTHITUNE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["resume", "nope", "-w", str(ws)], terminal_width=400)
    assert r.exit_code != 0 and f"`luthitune -w {ws} run`" in r.output, r.output
    monkeypatch.chdir(ws)
    r = runner.invoke(app, ["resume", "nope"], terminal_width=400)
    assert r.exit_code != 0 and "`luthitune run`" in r.output and "-w" not in r.output, r.output


def test_a_suggested_command_that_names_its_workspace_keeps_it_once(tmp_path, monkeypatch):
    from luthitune.cli import for_workspace, remember_workspace

    monkeypatch.delenv("LUTHITUNE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    remember_workspace(tmp_path / "other ws")
    try:
        text = for_workspace(
            "`luthitune provenance a-c0 -w /x` then `luthitune status` or `luthitune --workspace=/y runs`"
        )
    finally:
        remember_workspace(None)
    quoted = f"'{tmp_path / 'other ws'}'"
    assert (
        text
        == f"`luthitune provenance a-c0 -w /x` then `luthitune -w {quoted} status` or `luthitune --workspace=/y runs`"
    )
