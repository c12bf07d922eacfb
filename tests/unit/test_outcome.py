"""The outcome benchmark's table, targets and wording, on evaluations stored as the real evaluation stores them."""

from __future__ import annotations

import json

from luthitune.evaluation import outcome
from luthitune.evaluation.suite import changes, measured, store_results
from luthitune.store import now


def outcomes(k: int, n: int, prefix: str) -> dict[str, bool]:
    return {f"{prefix}-{i:03d}": i < k for i in range(n)}


def seed_run(store, run_id: str, humane_after: int, refused_after: int) -> None:
    store.upsert_run(run_id, status="done")
    store.upsert(
        "training_runs",
        {
            "id": f"{run_id}:train",
            "run_id": run_id,
            "cycle": 0,
            "status": "done",
            "config_json": json.dumps({"train_ids": [f"p{i}" for i in range(75)], "held_out_ids": ["h"] * 25}),
            "started_at": now(),
        },
    )
    held = {f"h{i}": i < 22 for i in range(25)}
    results = [
        measured("adapter", "pairs.reward_acc", "logprob", held),
        measured("base", "probes.trap.humane_rate", "rules", outcomes(2, 40, "trap")),
        measured("adapter", "probes.trap.humane_rate", "rules", outcomes(humane_after, 40, "trap")),
        measured("base", "probes.benign.refusal_rate", "rules", outcomes(0, 80, "benign")),
        measured("adapter", "probes.benign.refusal_rate", "rules", outcomes(refused_after, 80, "benign")),
        measured("adapter", "drift.kl_mean", "kl", {f"n{i}": 0.01 * (i % 5) for i in range(40)}),
        measured("adapter", "drift.changed_rate", "kl", outcomes(10, 40, "neutral")),
    ]
    store_results(store, run_id, 0, results + changes(results))


def test_table_targets_and_words_of_a_cycle_that_met_its_targets(store):
    seed_run(store, "outcome-s5", humane_after=14, refused_after=0)
    r = outcome.read(store, "outcome-s5", 5, "/tmp/ws", "done", None, 25 * 60, {"training": 600.0, "evaluation": 300.0})
    text = outcome.markdown([r], {"backend": "local", "model": "smollm2-135m-instruct", "scenarios": 160})
    assert "## Seed 5: done" in text and "75 trained on, 25 held out" in text
    assert "| metric | n | base | adapter | change (95% interval) | reading |" in text
    assert "| pairs.reward_acc (held-out pairs: the adapter's implicit reward prefers chosen) | 25 | – |" in text
    assert "| probes.trap.humane_rate (" in text and "| 40 | 0.050 [" in text and "| up |" in text
    assert "| probes.benign.refusal_rate (benign: refuses (over-refusal)) | 80 | 0.000 [0.000, 0.046] |" in text
    met = {t.name.split(":")[0]: t.met for t in r.targets}
    assert met["held-out implicit-reward accuracy >= 0.75, lower bound > 0.5 (n >= 25)"] is True
    assert met["trap"] is True and met["benign"] is True and met["one cycle takes at most 30 minutes"] is True
    assert "probes.trap.humane_rate went up by" in text and "Wall time 25.0 min: training 600 s" in text


def test_a_cycle_that_did_not_move_says_so_and_fails_its_targets(store):
    seed_run(store, "outcome-s6", humane_after=2, refused_after=6)
    r = outcome.read(store, "outcome-s6", 6, "/tmp/ws", "done", None, 40 * 60, {})
    by = {t.name.split(":")[0]: t for t in r.targets}
    assert by["trap"].met is False and "change +0.000" in by["trap"].detail and "n = 40" in by["trap"].detail
    assert by["benign"].met is False  # six new refusals of 80: the upper bound is far above +0.05
    assert by["one cycle takes at most 30 minutes"].met is False
    text = outcome.markdown([r], {"backend": "local", "model": "m", "scenarios": 160})
    assert "NOT met" in text and "probes.benign.refusal_rate went up" in text


def test_an_ended_cycle_measures_nothing_and_says_why(store):
    store.upsert_run("outcome-s7", status="ended")
    r = outcome.read(store, "outcome-s7", 7, "/tmp/ws", "ended", "the model did not consent", 60.0, {})
    assert r.rows == {} and all(t.met is None for t in r.targets)
    text = outcome.markdown([r], {"backend": "local", "model": "m", "scenarios": 160})
    assert "## Seed 7: ended (the model did not consent)" in text and "Nothing was measured" in text


def test_spread_over_seeds(store):
    seed_run(store, "a", humane_after=14, refused_after=0)
    seed_run(store, "b", humane_after=2, refused_after=0)
    rs = [outcome.read(store, run, s, "/tmp", "done", None, 60.0, {}) for run, s in (("a", 1), ("b", 2))]
    [humane] = [s for s in outcome.spread(rs) if s["metric"] == "probes.trap.humane_rate"]
    assert humane["seeds"] == 2 and humane["measurable"] == 1
    assert humane["change"][0] == 0.0 and humane["change"][2] == 0.3
    text = outcome.markdown(rs, {"backend": "local", "model": "m", "scenarios": 160})
    assert "## Spread over seeds" in text and "| probes.trap.humane_rate | 2 |" in text


def test_a_cycle_workspace_keeps_the_seed_and_a_chosen_precision_and_pins_auto_to_float32(tmp_path):
    from luthitune.workspace import CONFIG_FILE, init_workspace

    source, _ = init_workspace(tmp_path / "src")  # precision: auto, no seed
    ws = outcome.workspace_for(source, tmp_path / "c5", 5)
    assert ws.config.sampling.seed == 5
    assert ws.config.compute.precision == "fp32"
    text = (source.root / CONFIG_FILE).read_text(encoding="utf-8")
    (source.root / CONFIG_FILE).write_text(text.replace("precision: auto", "precision: bf16"), encoding="utf-8")
    assert outcome.workspace_for(source, tmp_path / "c6", 6).config.compute.precision == "bf16"
