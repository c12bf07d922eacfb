"""`luthitune constitution show|history|diff`, `eval` and `provenance` through the CLI, on a run made with fakes."""

from __future__ import annotations

import json

import pytest
from fakes import SchemaFakeModel, allow_small_runs, evaluator
from typer.testing import CliRunner

from luthitune.cli import app
from luthitune.protocol import Protocol
from luthitune.training.dpo import TrainResult


@pytest.fixture
def done_run(workspace, tmp_path):
    def trainer(pairs, name):
        path = workspace.models_dir / "adapters" / name
        path.mkdir(parents=True, exist_ok=True)
        return TrainResult(str(path), {"loss": 0.5})

    allow_small_runs(workspace)

    p = Protocol(workspace, llm=SchemaFakeModel(), trainer=trainer, evaluator=evaluator)
    run = p.start({"autopilot": True, "n_scenarios": 2, "interview_turns": 1}, run_id="r1")
    assert p.advance(run).status == "done"
    return workspace, run


def cli(ws, *args):
    from luthitune.logs import console

    console.width = 200  # rich measures the terminal once; the tables here are wide
    return CliRunner().invoke(app, [*args, "-w", str(ws.root)], terminal_width=200)


def test_constitution_history_show_and_diff(done_run):
    ws, run = done_run
    r = cli(ws, "constitution", "history")
    assert r.exit_code == 0, r.output
    assert "│ v1 " in r.output and "│ v2      │ v1 " in r.output and "(adapter)" in r.output and "│ yes " in r.output
    shown = cli(ws, "constitution", "show")
    assert shown.exit_code == 0 and "Constitution v2" in shown.output  # the version in force
    assert "Constitution v1" in cli(ws, "constitution", "show", "v1", "--run", run).output
    d = cli(ws, "constitution", "diff", "v1", "2")
    assert d.exit_code == 0 and "+**P2. Honesty** — I say why I decline." in d.output
    missing = cli(ws, "constitution", "show", "v9")
    assert missing.exit_code == 2 and "versions: v1, v2" in missing.output
    assert cli(ws, "constitution", "history", "--run", "nope").exit_code == 2


def test_eval_reports_what_is_stored_and_names_unknown_targets(done_run):
    ws, run = done_run
    r = cli(ws, "eval", run)
    assert r.exit_code == 0, r.output
    assert (
        "probes.trap.agency_rate" in r.output and "+0.40 [+0.01, +0.65]" in r.output and "0.60 [0.31, 0.83]" in r.output
    )
    assert "Humane thresholds (the whole 95% interval must clear them)" in r.output
    assert (ws.data_dir / "reports" / f"{run}-c0.md").exists()
    bad = cli(ws, "eval", "no-such-thing")
    assert bad.exit_code == 2 and "neither a run nor an adapter" in bad.output and run in bad.output


def test_provenance_of_an_adapter_without_manifest_says_so(done_run):
    ws, run = done_run
    (ws.models_dir / "adapters" / f"{run}-c0" / "adapter_config.json").write_text("{}")
    r = cli(ws, "provenance", f"{run}-c0")
    assert r.exit_code == 2 and "no luthitune-manifest.json" in r.output
    assert cli(ws, "provenance", "nothing-here").exit_code == 2


def test_provenance_reads_the_chain_from_the_manifest_and_database(done_run):
    ws, run = done_run
    adapter = ws.models_dir / "adapters" / f"{run}-c0"
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "luthitune-manifest.json").write_text(
        json.dumps(
            {
                "name": adapter.name,
                "run_id": run,
                "cycle": 0,
                "constitution": {"id": f"{run}:v1", "version": 1},
                "dataset": {"hash": "d" * 64, "train_pairs": 1, "held_out_pairs": 1},
                "base_model": {"name": "smollm2-135m-instruct", "digest": "sha256:" + "a" * 64},
                "training_path": {"kind": "cpu", "reason": "no CUDA device"},
                "config": {"hyperparameters": {"dpo": {"beta": 0.1}}},
                "metrics": {"final": {"loss": 0.5, "train_steps": 1}},
                "seconds": 1.0,
            }
        )
    )
    r = cli(ws, "provenance", adapter.name, "--json")
    assert r.exit_code == 0, r.output
    prov = json.loads(r.output)
    assert prov["missing"] == [] or prov["missing"] == ["identity"]  # fakes record no model identity
    assert prov["interview"]["messages"] == 3 and prov["consents"][0]["decision"] == "yes"
    assert [v["version"] for v in prov["constitution"]] == [1] and prov["constitution"][0]["approved_by"] == "autopilot"
    agency = prov["evaluation"]["metrics"]["probes.trap.agency_rate"]
    assert agency["scorer"] == "rules" and agency["adapter"]["value"] == 0.6 and agency["adapter"]["n"] == 10
    lo, hi = agency["adapter"]["interval"]
    assert 0 < lo < 0.6 < hi < 1 and agency["change"]["n"] == 10  # every number with its n and interval
    assert prov["dataset"]["pairs_kept"] + prov["dataset"]["pairs_quarantined"] == 2
    text = cli(ws, "provenance", adapter.name)
    assert "constitution v1" in text.output and "training: cpu path" in text.output
