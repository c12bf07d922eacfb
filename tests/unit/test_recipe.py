"""`run --config recipe.yaml` and `train --config recipe.yaml`: one file of settings, flags override its keys; flags
are shown without a value type in help."""

from __future__ import annotations

import pytest
from fakes import SchemaFakeModel
from typer.testing import CliRunner

from luthitune.cli import app
from luthitune.protocol import Protocol


def cli(ws, *args):
    return CliRunner().invoke(app, [*args, "-w", str(ws.root)], terminal_width=200)


@pytest.fixture
def started(workspace, monkeypatch):
    """`luthitune run` with the fake model; the run is started but not advanced: what it stored is what counts."""
    p = Protocol(workspace, llm=SchemaFakeModel())
    monkeypatch.setattr("luthitune.cli.runs.protocol", lambda ctx, workspace=None: p)
    monkeypatch.setattr("luthitune.cli.runs.advance", lambda p, run_id, resume=None: p.status(run_id))
    return p


RUN_RECIPE = """\
autopilot: true
scenarios: 6
turns: 1
consent-rounds: 3          # flag spelling
draft_rounds: 2            # parameter spelling
name: run-recipe
train:
  learning_rate: 2e-4      # YAML 1.1 reads this as a string; it is the number
  lora: {r: 4}
evaluation:
  probes_per_set: 1
"""


def test_run_takes_its_settings_from_one_recipe_and_flags_override_it(workspace, started, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RUN_RECIPE)
    r = cli(workspace, "run", "--config", str(recipe), "--scenarios", "2", "--no-autopilot")
    assert r.exit_code == 0, r.output
    ctx = started.context("run-recipe")
    assert (ctx.n_scenarios, ctx.autopilot) == (2, False)  # the flags won
    assert (ctx.interview_turns, ctx.max_consent_rounds, ctx.max_draft_rounds) == (1, 3, 2)
    assert ctx.train["training"]["learning_rate"] == 2e-4 and ctx.train["lora"]["r"] == 4
    assert ctx.evaluation["probes_per_set"] == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scenarios: 3\nwarp: 9\n", "unknown key 'warp'"),
        ("scenarios: many\n", "scenarios: Invalid value for '--scenarios'"),
        ("scenarios: 0\n", "scenarios:"),
        ("train: {learning_rate: -1}\n", "learning_rate"),
        ("train: 3\n", "train must be a mapping"),
        ("evaluation: {probes_per_set: lots}\n", "probes_per_set"),
        ("- a\n- b\n", "must hold a mapping"),
    ],
)
def test_a_bad_recipe_is_an_error_naming_the_file_and_the_key(workspace, started, tmp_path, text, expected):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    r = cli(workspace, "run", "--config", str(recipe))
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert expected in out and "bad.yaml" in out
    assert started.runs() == []  # nothing was started


def test_train_takes_a_recipe_with_hyperparameter_sections(workspace, monkeypatch, tmp_path):
    seen = {}

    def train_from_data(ws, data, **kw):
        seen.update(kw, data=data)
        raise SystemExit(0)

    monkeypatch.setattr("luthitune.training.standalone.train_from_data", train_from_data)
    (tmp_path / "pairs.jsonl").write_text("")
    recipe = tmp_path / "train.yaml"
    recipe.write_text(
        f"data: {tmp_path / 'pairs.jsonl'}\nname: lyra_v1\nlr: 1e-4\nlora: {{r: 4, lora_alpha: 8}}\n"
        "training: {num_train_epochs: 2}\ndpo: {beta: 0.2}\n"
    )
    r = cli(workspace, "train", "--config", str(recipe), "--beta", "0.3")
    assert r.exit_code == 0, r.output
    assert seen["data"] == tmp_path / "pairs.jsonl" and seen["name"] == "lyra_v1"
    from luthitune.training.config import nest

    assert nest(seen["overrides"]) == {
        "lora": {"r": 4, "lora_alpha": 8},
        "training": {"num_train_epochs": 2, "learning_rate": 1e-4},
        "dpo": {"beta": 0.3},  # the flag won over the recipe's dpo section
    }
    recipe.write_text("lora: {r: zero}\n")
    bad = cli(workspace, "train", "--config", str(recipe))
    assert bad.exit_code == 2 and "train.yaml" in bad.output and "lora" in bad.output


def test_flags_show_no_value_type_in_help_and_a_value_given_to_one_says_why_it_fails(workspace):
    r = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert r.exit_code == 0
    rows = {x.split()[1]: x for x in r.output.splitlines() if x.startswith("│ --")}  # the options table
    assert "<bool>" not in r.output and "--no-autopilot" in rows["--autopilot"]
    assert "<int" in rows["--scenarios"]  # options that take a value keep their type
    r = cli(workspace, "run", "--autopilot", "true")
    assert r.exit_code == 2 and "flags and take no value" in " ".join(r.output.split())
