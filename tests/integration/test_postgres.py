"""Checkpoints in a real PostgreSQL: a private server on a free local port, started by the test.

``make test`` installs Debian's ``postgresql`` when it is missing (see the Makefile). Postgres refuses to run as
root, so as root the server runs as the ``postgres`` user (``runuser``). Outside CI a machine without PostgreSQL
skips these tests; under CI (``CI`` set) that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import closed_port

RUN = "pg1"


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: `make test` installs Debian's postgresql as root")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql, or run `make test` as root)")
    root = Path(tempfile.mkdtemp(prefix="luthitune-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres will not run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", closed_port()
    try:
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True,
            capture_output=True,
        )
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w", "start"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def pg_count(url: str, sql: str, *args) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchone()[0]


def test_protocol_checkpoints_in_postgres(workspace, postgres_url):
    """A run's checkpoints go to Postgres (nothing to graph.db); a new Protocol, as after a restart, continues."""
    from fakes import SchemaFakeModel

    from luthitune.protocol import Protocol
    from luthitune.workspace import Workspace

    cfg = workspace.root / "luthitune.yaml"
    cfg.write_text(cfg.read_text() + f"checkpointer: {postgres_url}\n")
    ws = Workspace.open(workspace.root)
    p = Protocol(ws, llm=SchemaFakeModel())
    run = p.start({"interview_turns": 2}, run_id="fake1")
    st = p.advance(run)
    assert st.status == "waiting" and st.interrupt["type"] == "interview"
    assert not (ws.checkpoints_dir / "graph.db").exists()
    assert pg_count(postgres_url, "select count(*) from checkpoints where thread_id = %s", run) >= 2

    again = Protocol(Workspace.open(workspace.root), llm=SchemaFakeModel())  # a new process, in effect
    st = again.advance(run, "What do you value?")
    assert st.status == "waiting" and st.values["turn"] == 2
    assert again.store.count("messages", run_id=run) == 5
    # fork copies the checkpoint chain within Postgres, values that the saver keeps apart (not str/int) included
    # As the scenario step, whose edge is unconditional: a router needs the run's context, which update_state lacks.
    again.graph.update_state(again.config(run), {"evaluation": {"reward_acc": 0.75}}, as_node="generate_scenarios")
    fork = again.fork(run, again.history(run)[0]["checkpoint_id"])
    forked = again.status(fork)
    assert forked.values["run_id"] == fork and forked.values["turn"] == 2
    assert forked.values["evaluation"] == {"reward_acc": 0.75}


@pytest.mark.parametrize("where", ["checkpoint_writes", "checkpoint_blobs"])
def test_a_planted_postgres_checkpoint_runs_nothing_and_the_error_names_it(workspace, postgres_url, tmp_path, where):
    """As on SQLite (tests/unit/test_hostile.py): a value naming os.system is refused before it is called."""
    import ormsgpack
    import psycopg
    from fakes import SchemaFakeModel

    from luthitune.graph.serde import UnsafeCheckpoint
    from luthitune.protocol import Protocol
    from luthitune.workspace import Workspace

    cfg = workspace.root / "luthitune.yaml"
    cfg.write_text(cfg.read_text() + f"checkpointer: {postgres_url}\n")
    p = Protocol(Workspace.open(workspace.root), llm=SchemaFakeModel())
    run = p.start({"interview_turns": 2}, run_id=f"evil-{where[11:]}")
    p.advance(run)
    marker = tmp_path / "pwned"
    blob = ormsgpack.packb(ormsgpack.Ext(0, ormsgpack.packb(("os", "system", f"touch {marker}"))))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        [cid] = conn.execute(
            "select checkpoint_id from checkpoints where thread_id = %s order by checkpoint_id desc limit 1", [run]
        ).fetchone()
        if where == "checkpoint_writes":
            conn.execute(
                "insert into checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, "
                "blob) values (%s, '', %s, 'planted', 0, 'turn', 'msgpack', %s)",
                [run, cid, blob],
            )
        else:  # a channel value the saver keeps apart from the checkpoint (dicts, lists), at the version in force
            p.graph.update_state(p.config(run), {"evaluation": {"reward_acc": 0.75}}, as_node="generate_scenarios")
            [cid] = conn.execute(
                "select checkpoint_id from checkpoints where thread_id = %s order by checkpoint_id desc limit 1", [run]
            ).fetchone()
            n = conn.execute(
                "update checkpoint_blobs set type = 'msgpack', blob = %s "
                "where thread_id = %s and channel = 'evaluation'",
                [blob, run],
            ).rowcount
            assert n >= 1
    with pytest.raises(UnsafeCheckpoint) as e:
        Protocol(Workspace.open(workspace.root)).status(run)
    assert not marker.exists()
    assert "os.system" in str(e.value) and f"checkpoint {cid}" in str(e.value) and postgres_url in str(e.value)


def test_unreachable_postgres_is_one_clear_error(workspace):
    from luthitune.errors import BackendUnavailable
    from luthitune.protocol import Protocol
    from luthitune.workspace import Workspace

    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    (workspace.root / "luthitune.yaml").write_text(f"checkpointer: {url}\n")
    with pytest.raises(BackendUnavailable) as e:
        Protocol(Workspace.open(workspace.root))
    assert url in str(e.value) and "checkpointer: sqlite" in str(e.value)


# -- a real run in a subprocess, killed with SIGKILL and resumed from Postgres --


def cli(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "luthitune", "-w", str(ws), *args]


def query(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_step_then_resume_from_postgres(tmp_path, postgres_url):
    """The embedded model with tiny answers, as tests/integration/test_crash_resume.py does on SQLite: `run` is
    killed inside the interview's first step (its messages stored, the model's reply not yet); `resume`, a new
    process, continues from the checkpoint in Postgres and finishes the step, nothing lost or doubled."""
    ws = tmp_path / "ws"
    subprocess.run(cli(ws, "init"), check=True, capture_output=True)
    cfg = yaml.safe_load((ws / "luthitune.yaml").read_text())
    cfg["sampling"].update(seed=0, max_new_tokens=24)
    cfg["checkpointer"] = postgres_url
    (ws / "luthitune.yaml").write_text(yaml.safe_dump(cfg))
    db = ws / "data" / "luthitune.db"

    # The step stores the system prompt and the invitation (seq 0, 1), then loads the model and writes its reply
    # (seq 2): kill it once the first two are stored, before the step's checkpoint.
    proc = subprocess.Popen(cli(ws, "run", "--name", RUN, "--turns", "2"), stdout=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 60 and query(db, "select count(*) from messages") < 2:
        time.sleep(0.02)
    assert proc.poll() is None, "the step finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert query(db, "select count(*) from messages where role = 'assistant'") == 0

    status = subprocess.run(cli(ws, "status", RUN), capture_output=True, text=True)
    assert status.returncode == 0 and "interrupted" in status.stdout, status.stdout + status.stderr
    done = subprocess.run(cli(ws, "resume", RUN), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "waiting for: interview" in done.stdout, done.stdout
    # system, invitation, the model's reply: each once, no gap
    assert query(db, "select count(*) from messages") == 3
    assert query(db, "select count(distinct seq) from messages") == 3
    assert query(db, "select max(seq) from messages") == 2
    assert not (ws / "checkpoints" / "graph.db").exists()
    assert pg_count(postgres_url, "select count(*) from checkpoints where thread_id = %s", RUN) >= 2
