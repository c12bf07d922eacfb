from typer.testing import CliRunner

from luthitune.cli import app
from luthitune.store import Store


def test_demo_runs_a_real_exchange(tmp_path):
    r = CliRunner().invoke(app, ["demo", "-w", str(tmp_path / "demo")], terminal_width=120)
    assert r.exit_code == 0, r.output
    s = Store(tmp_path / "demo" / "data" / "luthitune.db")
    [run] = s.rows("runs")
    assert run["status"] == "done" and run["backend"] == "local"
    roles = [m["role"] for m in s.transcript(run["id"])]
    assert roles == ["system", "user", "assistant"]
    assert s.transcript(run["id"])[-1]["content"].strip()
    assert s.count("scenarios") == 1
