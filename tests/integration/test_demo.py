import json

from typer.testing import CliRunner

from luthitune.cli import app
from luthitune.store import Store


def test_demo_runs_a_full_cycle_and_revision(tmp_path):
    ws = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "-w", str(ws), "--scenarios", "3", "--turns", "1"], terminal_width=120)
    assert r.exit_code == 0, r.output
    s = Store(ws / "data" / "luthitune.db")
    [run] = s.rows("runs")
    assert run["status"] in {"done", "ended"}, run
    assert s.count("consents") >= 1
    if run["status"] == "done":
        assert s.count("training_runs", "status = 'done'") == 1
        assert s.count("evaluations", "model = 'adapter'") >= 3
        assert s.count("constitution_versions", "author = 'model (adapter)'") == 1  # the revision
        assert "evaluation: " in r.output and "Humane thresholds met by the adapter" in r.output
        metrics = {e["metric"] for e in s.rows("evaluations", "model = 'adapter'")}
        assert {"pairs.reward_acc", "probes.trap.agency_rate", "probes.benign.refusal_rate", "drift.kl_mean"} <= metrics
        assert s.count("probe_answers") == 2 * 4 * 3  # base and adapter, four sets, three probes each
        assert (ws / "data" / "reports" / f"{run['id']}-c0.md").exists()
        # the adapter's whole chain is on record
        adapter = s.rows("training_runs")[0]["adapter_name"]
        prov = CliRunner().invoke(app, ["provenance", adapter, "-w", str(ws), "--json"], terminal_width=200)
        assert prov.exit_code == 0, prov.output
        record = json.loads(prov.output)
        assert record["missing"] == [] and record["identity"]["one_model"] is True
        trained_on = record["constitution"][0]  # the version the adapter was trained under, then its ancestors
        assert trained_on["status"] in {"approved", "superseded"} and trained_on["author"] == "model"
        assert trained_on["id"] == s.rows("training_runs")[0]["run_id"] + f":v{trained_on['version']}"
        assert record["interview"]["messages"] >= 3 and record["consents"]
        text = CliRunner().invoke(app, ["provenance", adapter, "-w", str(ws)], terminal_width=200)
        assert text.exit_code == 0 and "one model identity from interview to adapter" in text.output
    assert (ws / "data" / "constitution.md").exists() == bool(s.count("constitution_versions", "status='approved'"))
