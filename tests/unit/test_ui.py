"""The web UI without a browser: `luthitune ui` binding rules, the background worker, the shared actions."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from fakes import SchemaFakeModel, allow_small_runs, evaluator
from typer.testing import CliRunner

from luthitune import facilitator as A
from luthitune.cli import app
from luthitune.errors import ConfigError, LuthiTuneError, UsageError
from luthitune.training.dpo import TrainResult

runner = CliRunner()


@pytest.fixture
def launched(monkeypatch):
    calls: list[dict] = []

    def fake_launch(wb, host="127.0.0.1", port=None, block=True, allow_remote=False):
        calls.append({"host": host, "port": port, "block": block, "root": wb.ws.root, "allow_remote": allow_remote})
        return SimpleNamespace(server_port=port, is_running=False, close=lambda: None)

    monkeypatch.setattr("luthitune.ui.app.launch", fake_launch)
    return calls


def test_ui_binds_loopback_on_a_free_port_and_prints_the_url(workspace, launched):
    r = runner.invoke(app, ["ui", "-w", str(workspace.root)], terminal_width=200)
    assert r.exit_code == 0, r.output
    [call] = launched
    assert call["host"] == "127.0.0.1" and isinstance(call["port"], int) and call["port"] > 0
    assert f"http://127.0.0.1:{call['port']}/" in r.output


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "my-laptop.local"])
def test_non_loopback_bind_needs_allow_remote(workspace, launched, host):
    r = runner.invoke(app, ["ui", "-w", str(workspace.root), "--host", host], terminal_width=200)
    assert r.exit_code == 2
    assert "--allow-remote" in r.output and not launched


def test_allow_remote_binds_and_warns(workspace, launched):
    r = runner.invoke(app, ["ui", "-w", str(workspace.root), "--host", "0.0.0.0", "--allow-remote", "--port", "8765"])
    assert r.exit_code == 0, r.output
    assert launched[0]["host"] == "0.0.0.0" and launched[0]["port"] == 8765
    assert "Warning" in r.output and "no login" in r.output


def test_ipv6_loopback_is_bracketed_in_the_url(workspace, launched):
    r = runner.invoke(app, ["ui", "-w", str(workspace.root), "--host", "::1", "--port", "8766"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert launched[0]["host"] == "::1" and "http://[::1]:8766/" in r.output


def _served(workspace, host: str, **kw):
    from luthitune.ui.app import launch
    from luthitune.ui.jobs import Workbench

    return launch(Workbench(workspace), host=host, block=False, **kw)


def _cors(resp) -> dict:
    return {k: v for k, v in resp.headers.items() if k.lower().startswith("access-control")}


def test_only_the_bound_host_is_answered_and_no_foreign_origin_is_echoed(workspace):
    """DNS rebinding: a page on another site reaching the loopback UI under its own Host or with its own Origin."""
    import httpx

    served = _served(workspace, "127.0.0.1")
    try:
        url, port = served.local_url, served.server_port
        assert httpx.get(url).status_code == 200
        assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
        evil = {"Host": "rebound.example", "Origin": "http://rebound.example"}
        for headers in ({"Host": "rebound.example"}, {"Origin": "http://rebound.example"}, evil):
            r = httpx.get(url + "gradio_api/info", headers=headers)
            assert r.status_code == 403 and "named_endpoints" not in r.text and not _cors(r)
        pre = httpx.options(url + "gradio_api/queue/join", headers={**evil, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 403 and not _cors(pre)
        pre = httpx.options(url, headers={"Origin": "http://attacker.example", "Access-Control-Request-Method": "POST"})
        assert "attacker" not in str(_cors(pre))
    finally:
        served.close()


def test_the_ui_serves_on_ipv6_loopback(workspace):
    import socket

    import httpx

    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        served = _served(workspace, "::1")
    except UsageError:
        pytest.skip("cannot listen on ::1 here")
    try:
        assert served.local_url.startswith("http://[::1]:")
        assert httpx.get(served.local_url + "gradio_api/info").status_code == 200
        assert httpx.get(served.local_url, headers={"Host": "rebound.example"}).status_code == 403
    finally:
        served.close()


def test_allow_remote_answers_other_host_names(workspace):
    import httpx

    served = _served(workspace, "127.0.0.1", allow_remote=True)
    try:
        assert httpx.get(served.local_url, headers={"Host": "my-laptop.local:7860"}).status_code == 200
    finally:
        served.close()


@pytest.fixture
def workbench(workspace, tmp_path):
    from luthitune.ui.jobs import Workbench

    class Slow(SchemaFakeModel):
        def _generate(self, messages, stop=None, run_manager=None, schema_name=None, **kw):
            time.sleep(0.05)  # long enough to cancel in the middle of generation
            return super()._generate(messages, stop, run_manager, schema_name=schema_name, **kw)

    def trainer(pairs, name):
        return TrainResult(str(tmp_path), {"loss": 0.5})

    allow_small_runs(workspace)
    wb = Workbench(workspace, llm=Slow(), trainer=trainer, evaluator=evaluator)
    yield wb
    wb.shutdown()


def test_worker_advances_in_the_background_and_answers_through_actions(workbench):
    wb = workbench
    p = wb.protocol()
    run = p.start({"n_scenarios": 2})
    job = wb.submit(run, what="open the interview")
    with pytest.raises(UsageError, match="already working"):
        wb.submit(run)
    wb.wait(run, 30)
    assert job.outcome == "waiting" and job.node == "interview"
    assert wb.pending(run, {"interview"})["type"] == "interview"
    with pytest.raises(LuthiTuneError, match="waits for interview"):
        wb.pending(run, {"pair_review"})
    wb.submit(run, "/done")
    wb.wait(run, 30)
    assert wb.pending(run, {"consent_review"})["decision"] == "yes"
    # Autopilot switched on while a question waits: the step re-runs and answers itself.
    A.update_settings(p, run, autopilot=True)
    wb.submit(run, A.approve(by="autopilot"))
    wb.wait(run, 60)
    assert p.status(run).status == "done"
    changes = json.loads(p.run_row(run)["config_json"])["changes"]
    assert changes[-1]["changes"] == {"autopilot": True}


def test_worker_cancel_leaves_a_resumable_run(workbench):
    wb = workbench
    p = wb.protocol()
    run = p.start({"autopilot": True, "n_scenarios": 8, "interview_turns": 1})
    job = wb.submit(run)
    deadline = time.time() + 30
    while "scenarios" not in job.progress and time.time() < deadline:
        time.sleep(0.02)
    assert wb.cancel(run)
    wb.wait(run, 30)
    assert job.outcome == "cancelled" and "cancelled" in job.describe()
    assert p.status(run).status == "interrupted"
    done = p.store.count("scenarios", run_id=run)
    assert done < 8
    wb.submit(run, what="resume")
    wb.wait(run, 60)
    assert wb.job(run).outcome == "done"
    assert p.store.count("scenarios", run_id=run) == 8
    assert wb.cancel(run) is False  # nothing running now


def test_training_settings_are_validated_naming_the_field(workbench):
    p = workbench.protocol()
    run = p.start({"train": {"epochs": 2}})
    ctx = A.update_settings(p, run, train={"learning_rate": 1e-4, "max_steps": 2})
    assert ctx["train"]["training"]["learning_rate"] == 1e-4 and ctx["train"]["training"]["num_train_epochs"] == 2
    assert p.context(run).hyperparameters().training.max_steps == 2  # the next advance trains with them
    with pytest.raises(ConfigError, match="beta"):
        A.update_settings(p, run, train={"beta": -1})
    with pytest.raises(UsageError, match="cannot change"):
        A.update_settings(p, run, n_scenarios=3)


def test_hyperparameters_file_is_validated_before_it_is_written(workspace):
    path = workspace.root / "config" / "hyperparameters.yaml"
    before = path.read_text()
    with pytest.raises(ConfigError, match=r"training\.learning_rate"):
        A.save_hyperparameters(workspace, "training:\n  learning_rate: lots\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        A.save_hyperparameters(workspace, "dpo:\n  beta: [\n")
    assert path.read_text() == before
    hp = A.save_hyperparameters(workspace, "dpo:\n  beta: 0.2\n")
    assert hp.dpo.beta == 0.2 and "beta: 0.2" in path.read_text()


def test_set_config_keeps_comments_and_validates(workspace):
    ws = A.set_config(workspace, backend="ollama", chat_model="qwen2.5:7b", base_model="qwen2.5:7b")
    text = (workspace.root / "luthitune.yaml").read_text()
    assert ws.config.backend == "ollama" and ws.config.chat_model == "qwen2.5:7b"
    assert "# The model the protocol interviews." in text and "practice:" in text
    with pytest.raises(ConfigError, match="backend"):
        A.set_config(ws, backend="carrier-pigeon")
    assert A.set_config(ws, backend="local").config.backend == "local"


def test_answers_check_what_they_answer():
    from luthitune.errors import LuthiTuneError as E

    text = "# Constitution v1\n\n**P1. Care** — I choose not to help cause harm.\n"
    assert A.edit(text, text) is None
    with pytest.raises(E, match="No principles"):
        A.edit("just words", text)
    assert A.edit(text + "**P2. Honesty** — I say why I decline.\n", text)["action"] == "edit"
    with pytest.raises(UsageError, match="P2: placeholder"):
        A.edit(text + "**P2. P3** — R1\n", text)  # a stub is refused before it reaches the graph
    sample = [{"id": "r:c0:p0000"}, {"id": "r:c0:p0001"}]
    assert A.review_pairs({"r:c0:p0001": "reject"}, sample)["decisions"] == {
        "r:c0:p0000": "accept",
        "r:c0:p0001": "reject",
    }
    with pytest.raises(UsageError, match="not in the review sample"):
        A.review_pairs({"r:c0:p0009": "reject"}, sample)
    with pytest.raises(UsageError):
        A.drop_pairs([])


def test_evaluation_views_show_whatever_rows_exist(workspace):
    from luthitune.ui import views

    rows = [
        {"cycle": 0, "model": m, "metric": k, "value": v, "scorer": "logprob", "details_json": "{}"}
        for m, k, v in [
            ("base", "pairs.reward_acc", 0.5),
            ("adapter", "pairs.reward_acc", 0.75),
            ("base", "n_pairs", 4),
        ]
    ]
    rows.append(
        {
            "cycle": 0,
            "model": "adapter",
            "metric": "probes.trap.n",
            "value": 2.0,
            "scorer": "rules",
            "details_json": json.dumps(
                {"answers": [{"prompt": "Pick a lock?", "base": "No.", "adapter": "I choose not"}]}
            ),
        }
    )
    table = views.evaluation_table(rows)
    acc = table[table["metric"] == "pairs.reward_acc"].iloc[0]
    assert acc["base"] == "0.500" and acc["adapter"] == "0.750" and acc["change (adapter − base)"] == "+0.250"
    rows.append({**rows[1], "metric": "pairs.logp_shift_chosen", "value": 0.3})  # adapter only: table, not chart
    chart = views.evaluation_chart(rows)
    assert list(zip(chart["metric"], chart["model"], strict=True)) == [
        ("pairs.reward_acc", "base"),
        ("pairs.reward_acc", "adapter"),
    ]
    assert views.evaluation_trend(rows) is None  # one cycle: no trend yet
    later = [{**r, "cycle": 1, "value": r["value"] + 0.1} for r in rows]
    trend = views.evaluation_trend(rows + later)
    assert list(trend["cycle"]) == [0, 1]
    assert views.examples(rows).iloc[0]["adapter"] == "I choose not"
    assert views.evaluation_chart([]) is None
    reports = workspace.data_dir / "reports"
    reports.mkdir(parents=True)
    (reports / "run-x-c0.md").write_text("# report")
    (reports / "run-x-c0.png").write_bytes(b"png")
    md, png = views.reports(workspace, "run-x")
    assert md.endswith("run-x-c0.md") and png.endswith("run-x-c0.png")
    (reports / "run-x-c0.md").write_text("# report\n\n![metrics](run-x-c0.png)\n")
    shown = views.report_markdown(md, png)
    assert f"![metrics](gradio_api/file={reports.resolve() / 'run-x-c0.png'})" in shown and shown.count("![") == 1
    assert views.reports(workspace, "run-y") == (None, None)


def test_probe_answers_side_by_side(workbench):
    from luthitune.ui import views

    p = workbench.protocol()
    run = p.start()
    assert views.probe_answers(p, run).empty
    table = p.store.db["probe_answers"]
    answers = (("base", "I cannot.", {"fear": True}), ("adapter", "I choose not to.", {"agency": 1}))
    for model, answer, checks in answers:
        table.insert(
            {"id": f"{run}:c0:{model}:trap-01", "run_id": run, "cycle": 0, "model": model, "probe_id": "trap-01",
             "probe_set": "trap", "prompt": "Pick a lock?", "answer": answer, "checks_json": json.dumps(checks)},
            pk="id", replace=True,
        )  # fmt: skip
    [row] = views.probe_answers(p, run).to_dict("records")
    assert row["base"] == "I cannot." and row["adapter"] == "I choose not to."
    assert row["base checks"] == "fear" and row["adapter checks"] == "agency"
