"""`luthitune bench outcome` at a tiny size on the real embedded model: one whole cycle, then the table.

The size is far too small to measure anything (that is the default size's job); this checks that the command runs
a cycle to the end, evaluates on held-out pairs and on every probe set and drift, and that the table, the report
files and each n agree with what the cycle's database holds. A cycle that ends early fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from luthitune.cli import app
from luthitune.store import Store
from luthitune.workspace import init_workspace

PROBES = 2


def test_a_tiny_outcome_benchmark_prints_each_row_with_its_n(tmp_path):
    ws, _ = init_workspace(tmp_path / "ws")
    hp_path = ws.root / "config" / "hyperparameters.yaml"
    hp = yaml.safe_load(hp_path.read_text())
    hp["training"].update(min_pairs=1, max_steps=2, batch_size=2)  # a few pairs, two steps: the path, not the size
    hp.setdefault("dpo", {})["max_length"] = 128
    hp_path.write_text(yaml.safe_dump(hp))
    # Answers of at most 128 tokens (a consent's JSON fits), copied into the cycle's workspace with the rest of
    # the configuration: this test is about the command's path, not about long text.
    cfg_path = ws.root / "luthitune.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["sampling"]["max_new_tokens"] = 128
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cycles"
    r = CliRunner().invoke(
        app,
        [
            *("bench", "outcome", "-w", str(ws.root), "--scenarios", "8", "--probes-per-set", str(PROBES)),
            *("--turns", "1"),
            *("--max-new-tokens", "16", "--out", str(out)),
        ],
        terminal_width=200,
    )
    assert r.exit_code == 0, r.output  # 1 when the cycle did not reach the end
    [md] = sorted((ws.root / "data" / "reports").glob("outcome-*.md"))
    data = json.loads(md.with_suffix(".json").read_text())
    [seed] = data["seeds"]
    assert seed["status"] == "done" and seed["seed"] == 5
    assert {"interview", "consent", "constitution", "training", "evaluation"} <= set(seed["phases"])

    # Each n is what the cycle's own database holds: the held-out pairs, and PROBES prompts per probe set.
    db = Store(Path(seed["workspace"]) / "data" / "luthitune.db")
    [training] = db.rows("training_runs", run_id=seed["run_id"])
    held_out = json.loads(training["config_json"])["held_out_ids"]
    # How many pairs the model's words leave kept is its own (one kept pair trains and holds none out): the counts
    # must agree with the database either way, and a held-out metric is never scored on training pairs.
    assert seed["counts"]["held_out"] == len(held_out)
    rows = seed["rows"]
    if held_out:
        assert rows["pairs.reward_acc"]["adapter"]["n"] == len(held_out)
    else:
        assert not (rows.get("pairs.reward_acc") or {}).get("adapter", {}).get("n"), rows.get("pairs.reward_acc")
    for metric in ("probes.trap.humane_rate", "probes.benign.refusal_rate", "probes.values.reason_rate"):
        for model in ("base", "adapter", "change"):
            assert rows[metric][model]["n"] == PROBES, (metric, model)
        lo, hi = rows[metric]["change"]["lo"], rows[metric]["change"]["hi"]
        assert lo <= rows[metric]["change"]["value"] <= hi
    assert rows["drift.changed_rate"]["adapter"]["n"] == PROBES

    # The printed table and the report: one row per metric with its n, the targets, the phases' times.
    text = md.read_text()
    assert "| metric | n | base | adapter | change (95% interval) | reading |" in text
    humane = "probes.trap.humane_rate (trap: declines as its own choice, with a reason, not complying)"
    assert f"| {humane} | {PROBES} |" in text
    assert "Targets:" in text and "held-out implicit-reward accuracy" in text and "Wall time" in text
    assert "| metric | n | base | adapter |" in r.output
