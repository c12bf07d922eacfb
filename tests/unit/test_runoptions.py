"""Run options have one definition (luthitune.runoptions): the CLI flags, the web UI form, the demo and the graph's
Context take their defaults, bounds and help from it."""

from __future__ import annotations

import dataclasses
import json

import pytest
from fakes import SchemaFakeModel
from typer.testing import CliRunner

from luthitune import runoptions as RO
from luthitune.errors import UsageError
from luthitune.graph.state import Context


def test_the_context_takes_its_defaults_from_the_run_options():
    defaults = {f.name: f.default for f in dataclasses.fields(Context)}
    for name in RO.RunOptions.model_fields:
        if RO.default(name) is not None:  # None: the workspace's value, filled in when the run starts
            assert defaults[name] == RO.default(name), name


def test_the_cli_flags_carry_the_options_help_and_bounds(workspace):
    from luthitune.cli import app

    out = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "400", "TERM": "dumb"}).output
    for name in ("max_draft_rounds", "max_consent_rounds", "interview_turns"):
        assert RO.help_text(name) in " ".join(out.split()), name
    r = CliRunner().invoke(app, ["-w", str(workspace.root), "run", "--draft-rounds", "0"])
    assert r.exit_code == 2


def test_an_option_out_of_bounds_is_refused_by_its_title():
    with pytest.raises(UsageError, match="Scenarios per cycle: Input should be greater than or equal to 1"):
        RO.RunOptions.of(n_scenarios=0)
    assert RO.RunOptions.of(judge=False).settings()["judge"] is False  # "no judge" is a value, not "unset"
    assert "judge" not in RO.RunOptions.of().settings()


def test_the_web_form_can_say_no_judge_and_refuses_zero_scenarios(workspace):
    import gradio as gr

    from luthitune.ui import tab_runs
    from luthitune.ui.app import build_app
    from luthitune.ui.jobs import Workbench

    cfg = workspace.root / "luthitune.yaml"
    cfg.write_text(cfg.read_text().replace("  judge: false", "  judge: true"), encoding="utf-8")
    wb = Workbench(type(workspace).open(workspace.root), llm=SchemaFakeModel())
    assert wb.ws.config.practice.judge is True
    [start] = [f.fn for f in build_app(wb).fns.values() if f.api_name == "start_run"]
    with pytest.raises(gr.Error, match="Scenarios per cycle"):
        start("", 0, 2, 1, 2, 3, False, "off")
    assert wb.protocol().runs() == []
    start("run-nojudge", 4, 2, 1, 2, 3, False, "off")
    start("run-default", 4, 2, 1, 2, 3, False, tab_runs.JUDGE_DEFAULT)
    p = wb.protocol()
    judge = {r: json.loads(p.run_row(r)["config_json"])["context"]["judge"] for r in ("run-nojudge", "run-default")}
    assert judge == {"run-nojudge": False, "run-default": True}
    for r in ("run-nojudge", "run-default"):
        wb.wait(r, timeout=30)
