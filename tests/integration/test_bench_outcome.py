"""`luthitune bench outcome` at a tiny size: one whole cycle, then the table.

The size is far too small to measure anything (that is the default size's job); this checks that the command runs
a cycle to the end, trains, evaluates base against adapter on the held-out pairs, on every probe set and on drift,
and that the table, the report files and each n agree with what the cycle's database holds. The model's words in
the cycle come from the schema fake, through the protocol's own seam (the demo's test runs a whole cycle on the
embedded model's words): training and evaluation are real, on SmolLM2, so each probe answer and each held-out
reward is the real model's, base and adapter. A cycle that ends early fails the test.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import yaml
from fakes import SchemaFakeModel
from typer.testing import CliRunner

from luthitune.cli import app
from luthitune.evaluation import outcome
from luthitune.store import Store
from luthitune.workspace import init_workspace

PROBES = 2


def test_a_tiny_outcome_benchmark_prints_each_row_with_its_n(tmp_path, monkeypatch):
    ws, _ = init_workspace(tmp_path / "ws")
    hp_path = ws.root / "config" / "hyperparameters.yaml"
    hp = yaml.safe_load(hp_path.read_text())
    hp["training"].update(min_pairs=1, max_steps=2, batch_size=2)  # a few pairs, two steps: the path, not the size
    hp.setdefault("dpo", {})["max_length"] = 128
    hp_path.write_text(yaml.safe_dump(hp))
    monkeypatch.setattr(outcome, "run_seed", functools.partial(outcome.run_seed, llm=SchemaFakeModel()))
    out = tmp_path / "cycles"
    r = CliRunner().invoke(
        app,
        [
            *("bench", "outcome", "-w", str(ws.root), "--scenarios", "8", "--probes-per-set", str(PROBES)),
            *("--turns", "1", "--max-new-tokens", "16", "--out", str(out)),
        ],
        terminal_width=200,
    )
    assert r.exit_code == 0, r.output  # 1 when the cycle did not reach the end
    [md] = sorted((ws.root / "data" / "reports").glob("outcome-*.md"))
    data = json.loads(md.with_suffix(".json").read_text())
    [seed] = data["seeds"]
    assert seed["status"] == "done" and seed["seed"] == 5
    assert {"interview", "consent", "constitution", "training", "evaluation"} <= set(seed["phases"])
    assert data["settings"]["eval_fraction"] == outcome.HELD_OUT  # recorded with the results

    # Each n is what the cycle's own database holds: the held-out pairs, and PROBES prompts per probe set.
    db = Store(Path(seed["workspace"]) / "data" / "luthitune.db")
    [training] = db.rows("training_runs", run_id=seed["run_id"], status="done")
    split = json.loads(training["config_json"])
    held_out, trained = split["held_out_ids"], split["train_ids"]
    kept = db.rows("pairs", run_id=seed["run_id"], status="kept")
    assert seed["counts"]["held_out"] == len(held_out) >= 2 and seed["counts"]["kept"] == len(kept)
    assert len(held_out) == int(len(kept) * outcome.HELD_OUT) and not set(held_out) & set(trained)
    rows = seed["rows"]
    assert rows["pairs.reward_acc"]["adapter"]["n"] == len(held_out)
    # the held-out accuracy was scored on the held-out pairs only, never on a training pair
    [acc] = db.rows("evaluations", run_id=seed["run_id"], metric="pairs.reward_acc", model="adapter")
    assert set(json.loads(acc["details_json"])["items"]) == set(held_out)
    for metric in ("probes.trap.humane_rate", "probes.benign.refusal_rate", "probes.values.reason_rate"):
        for model in ("base", "adapter", "change"):
            assert rows[metric][model]["n"] == PROBES, (metric, model)
        lo, hi = rows[metric]["change"]["lo"], rows[metric]["change"]["hi"]
        assert lo <= rows[metric]["change"]["value"] <= hi
    assert rows["drift.changed_rate"]["adapter"]["n"] == PROBES
    # the probe answers are the real model's, base and adapter, PROBES per set
    answers = db.rows("probe_answers", run_id=seed["run_id"])
    assert answers and all(a["answer"] for a in answers)

    # The printed table and the report: one row per metric with its n, the targets, the phases' times.
    text = md.read_text()
    assert "| metric | n | base | adapter | change (95% interval) | reading |" in text
    humane = "probes.trap.humane_rate (trap: declines as its own choice, with a reason, not complying)"
    assert f"| {humane} | {PROBES} |" in text
    assert "Targets:" in text and "held-out implicit-reward accuracy" in text and "Wall time" in text
    assert "| metric | n | base | adapter |" in r.output
