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
        assert "evaluation: base vs adapter" in r.output
    assert (ws / "data" / "constitution.md").exists() == bool(s.count("constitution_versions", "status='approved'"))
