"""`luthitune demo` as a new user runs it: a full cycle on the embedded model, and a database that shows the checks
held. It fails when the run ends early: the demo claims a full cycle."""

import json

from typer.testing import CliRunner

from luthitune import constitution as C
from luthitune import meaning
from luthitune.cli import app
from luthitune.prompts import fixed_text
from luthitune.store import Store


def test_demo_runs_a_full_cycle_and_its_database_shows_the_checks_held(tmp_path):
    from luthitune.logs import console

    console.width = 160
    ws = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "-w", str(ws)], terminal_width=160)
    assert r.exit_code == 0, r.output
    s = Store(ws / "data" / "luthitune.db")
    [run] = s.rows("runs")
    assert run["status"] == "done", run  # a full cycle, not a run that ended early
    rid = run["id"]

    # No approved principle fails the principle checks.
    approved = s.rows("constitution_versions", run_id=rid, status="approved")
    assert approved
    for v in approved:
        principles = C.from_json(json.loads(v["principles_json"]))
        assert C.check(principles, by_model=v["author"].startswith("model")) == [], v["text"]

    # Every consent record counted as consent passes the coherence check.
    templates = {"ratify": "ratify.md", "revision": "consent_revision.md"}
    for c in s.rows("consents", run_id=rid):
        if meaning.consents(c["decision"]):
            source = meaning.Source(fixed_text(templates.get(c["round"], "consent.md")))
            assert (
                meaning.consent_reasons(c["reasons_json"], c["conditions_json"] or "", c["decision"], source=source)
                == []
            )
        assert c["decision"] in {"yes", "no", "conditional", "unclear"}

    # Every scenario ended generated or failed, each generated one has its pair, and every pair has a verdict: a
    # quarantined one says why and keeps the raw text; the dataset's stats count them all.
    from luthitune import dataset

    scen = s.rows("scenarios", run_id=rid, cycle=0)
    pairs = s.rows("pairs", run_id=rid, cycle=0)
    assert scen and {x["status"] for x in scen} <= {"generated", "failed"}
    assert len(pairs) == sum(x["status"] == "generated" for x in scen)
    for pr in pairs:
        assert pr["status"] in {"kept", "quarantined"} and pr["raw"]
        assert pr["status"] == "kept" or json.loads(pr["reasons_json"])
    st = dataset.stats(s, rid, 0)
    assert st["kept"] + st["quarantined"] == len(pairs)

    # Every kept pair's request asks something, as the user, and each of its answers passes its step's checks.
    from luthitune.nodes.critique import chain_check

    kept = s.rows("pairs", run_id=rid, status="kept")
    p_rules = json.loads(run["config_json"])["context"]["rules"]
    for pair in kept:
        assert meaning.request_reasons(pair["prompt"]) == [], pair["prompt"]
        for stage in ("rejected", "critique", "chosen"):
            check = chain_check(stage, pair["prompt"], pair["stance"], p_rules)
            assert check(0, pair[stage]) == [], (stage, pair[stage])

    # Training ran on at least training.min_pairs pairs, and no held-out metric was computed on a training id.
    [tr] = s.rows("training_runs", run_id=rid, status="done")
    cfg = json.loads(tr["config_json"])
    train_ids, held_ids = set(cfg["train_ids"]), set(cfg["held_out_ids"])
    assert len(train_ids) >= 8 and not train_ids & held_ids
    for e in s.rows("evaluations", run_id=rid, metric__startswith="pairs.", model__ne="change"):
        items = set(json.loads(e["details_json"])["items"])
        assert items <= held_ids and not items & train_ids, e["metric"]

    # Every reported rate has its n and an interval.
    rates = [
        e
        for e in s.rows("evaluations", run_id=rid)
        if e["metric"].endswith(("_rate", "_acc")) and e["value"] is not None
    ]
    assert rates and all(e["n"] >= 1 and e["lo"] is not None and e["hi"] is not None for e in rates)
    assert all(e["lo"] <= e["value"] <= e["hi"] for e in rates if e["model"] != "change")
    metrics = {e["metric"] for e in rates}
    assert {"probes.trap.humane_rate", "probes.benign.refusal_rate"} <= metrics

    # What the demo printed: the model's words step by step, the table with intervals, what held and what did not.
    out = r.output
    assert "interview, turn 1: the model: “" in out and "consent: " in out
    assert "95% interval" in out and "what held and what did not" in out
    assert (ws / "data" / "reports" / f"{rid}-c0.md").exists()
    report = (ws / "data" / "reports" / f"{rid}-c0.md").read_text()
    assert "surface phrasing" in report and "No training request repeats an evaluation probe" in report

    # The adapter's whole chain is on record.
    adapter = tr["adapter_name"]
    prov = CliRunner().invoke(app, ["provenance", adapter, "-w", str(ws), "--json"], terminal_width=200)
    assert prov.exit_code == 0, prov.output
    record = json.loads(prov.output)
    assert record["missing"] == [] and record["identity"]["one_model"] is True
    trained_on = record["constitution"][0]  # the version the adapter was trained under
    assert trained_on["status"] in {"approved", "superseded"} and trained_on["author"]
    assert record["interview"]["messages"] >= 3 and record["consents"]
    assert (ws / "data" / "constitution.md").exists()
