"""How a training job is launched over several processes: the command line, the options that reach it, the rank
that writes, and stopping every process of a launched job. The real two-process run is
tests/integration/test_training_multiprocess.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luthitune.cli import app
from luthitune.errors import ConfigError
from luthitune.training import worker
from luthitune.training.dpo import Job, TrainResult
from luthitune.training.routes import TrainPath

runner = CliRunner()
JOB = Path("/tmp/x/adapters/a.job.json")
WORKER = ["-m", "luthitune.training.worker", str(JOB)]


def test_one_process_runs_the_worker_with_plain_python():
    assert worker.command(JOB, 1, None) == [sys.executable, *WORKER]


def test_cpu_processes_go_through_accelerates_torchrun_launcher(monkeypatch):
    """accelerate's --cpu starts a single process unless MPI is used; --multi_gpu is its torchrun launcher, which
    starts N processes on the CPU too (each then joins over gloo)."""
    monkeypatch.setattr(worker, "_cores", lambda: 8)
    cmd = worker.command(JOB, 2, None, cuda=False)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and cmd[-3:] == WORKER
    flags = cmd[3:-3]
    assert "--cpu" not in flags and "--multi_gpu" in flags
    opts = dict(zip(flags[1::2], flags[2::2], strict=False))
    assert opts["--num_processes"] == "2" and opts["--num_machines"] == "1"
    assert opts["--num_cpu_threads_per_process"] == "4"  # the cores shared out, not torchrun's one thread each
    assert opts["--main_process_port"] == "0"  # a free port, chosen by accelerate


def test_gpu_processes_are_checked_against_the_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="2 training processes need 2 GPUs; this machine has 1"):
        worker.command(JOB, 2, None, cuda=True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cmd = worker.command(JOB, 4, None, cuda=True)
    assert "--multi_gpu" in cmd and "--num_cpu_threads_per_process" not in cmd


def test_an_accelerate_config_file_decides_and_processes_override_its_count(tmp_path):
    cfg = tmp_path / "ds.yaml"
    cfg.write_text("distributed_type: DEEPSPEED\nnum_processes: 8\n")
    cmd = worker.command(JOB, 1, str(cfg))
    assert cmd[3:5] == ["--config_file", str(cfg)] and cmd[5:] == WORKER  # nothing of ours beside the file
    assert worker.command(JOB, 2, str(cfg))[3:7] == ["--config_file", str(cfg), "--num_processes", "2"]
    with pytest.raises(ConfigError, match="No accelerate config file at"):
        worker.command(JOB, 2, str(tmp_path / "missing.yaml"))


def test_a_config_file_alone_launches_rather_than_training_in_process(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(worker, "train", lambda *a, **k: pytest.fail("trained in-process, ignoring the config"))

    def fake_launch(job, **kw):
        seen.update(kw)
        return TrainResult(adapter_path=str(tmp_path / "a"), metrics={})

    monkeypatch.setattr(worker, "launch", fake_launch)
    job = Job(model_dir="m", out_dir=str(tmp_path / "a"), pairs=[], hyperparameters={})
    worker.run(job, accelerate_config="fsdp.yaml", path=TrainPath("cpu", "test", "cpu"))
    assert seen["accelerate_config"] == "fsdp.yaml" and seen["num_processes"] == 1


@pytest.mark.parametrize(
    ("env", "rank"),
    [({}, 0), ({"RANK": "1"}, 1), ({"PMI_RANK": "3"}, 3), ({"OMPI_COMM_WORLD_RANK": "2"}, 2), ({"RANK": ""}, 0)],
)
def test_the_rank_comes_from_whichever_launcher_started_the_process(monkeypatch, env, rank):
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert worker.rank() == rank


def test_a_checkpoint_resumes_only_with_the_same_number_of_processes():
    job = Job(model_dir="m", out_dir="o", pairs=[{"prompt": "p", "chosen": "c", "rejected": "r"}], hyperparameters={})
    path = TrainPath("cpu", "test", "cpu")
    assert job.key(path) == job.key(path, 1)  # single-process checkpoints written before keep their key
    assert job.key(path, 2) != job.key(path) and job.key(path, 2) != job.key(path, 4)


def test_a_failed_worker_is_reported_by_its_exceptions_not_torchruns_summary():
    stderr = [
        "[rank1]: Traceback (most recent call last):\n",
        "[rank1]: FileNotFoundError: [Errno 2] no such file\n",
        "[rank0]: RuntimeError: Connection closed by peer\n",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n",
        "  rank      : 1 (local_rank: 1)\n",
    ]
    assert worker.last_words(stderr).splitlines() == [
        "[rank1]: FileNotFoundError: [Errno 2] no such file",
        "[rank0]: RuntimeError: Connection closed by peer",
    ]
    assert worker.last_words(["just\n", "output\n"]) == "just\noutput"


def test_stopping_a_launch_stops_processes_in_sessions_of_their_own():
    """torchrun puts each worker in a new session: a process-group signal to the launcher would not reach it."""
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    t0 = time.time()
    worker.stop(proc, grace=5)
    import psutil

    while psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE:
        assert time.time() - t0 < 10, "the worker in its own session survived"
        time.sleep(0.05)
    assert proc.returncode == -signal.SIGTERM


def test_train_passes_processes_and_accelerate_config(monkeypatch, tmp_path):
    import luthitune.training.standalone as standalone

    seen = {}

    def fake(ws, data, **kw):
        seen.update(kw)
        return TrainResult(adapter_path=str(tmp_path / "a"), metrics={"train_steps": 2.0})

    monkeypatch.setattr(standalone, "train_from_data", fake)
    cfg = tmp_path / "zero3.yaml"
    cfg.write_text("distributed_type: DEEPSPEED\n")
    assert runner.invoke(app, ["init", str(tmp_path / "ws")]).exit_code == 0
    args = ["train", str(tmp_path), "-w", str(tmp_path / "ws"), "--processes", "2", "--accelerate-config", str(cfg)]
    r = runner.invoke(app, args, terminal_width=200)
    assert r.exit_code == 0, r.output
    assert seen["num_processes"] == 2 and seen["accelerate_config"] == str(cfg)
    monkeypatch.setenv("COLUMNS", "250")  # typer's error panel: wide enough that the long path is not wrapped
    r = runner.invoke(app, [*args[:-1], str(tmp_path / "nope.yaml")], terminal_width=200)
    assert r.exit_code == 2 and "nope.yaml" in r.output


def test_run_keeps_train_processes_for_the_training_step(monkeypatch, tmp_path):
    import luthitune.cli.runs as runs
    from luthitune.protocol import Protocol
    from luthitune.workspace import Workspace

    monkeypatch.setattr(runs, "advance", lambda p, run_id, resume=None: None)
    assert runner.invoke(app, ["init", str(tmp_path)]).exit_code == 0
    r = runner.invoke(app, ["run", "-w", str(tmp_path), "--name", "r2", "--train-processes", "2"])
    assert r.exit_code == 0, r.output
    assert Protocol(Workspace.open(tmp_path)).context("r2").train_processes == 2  # stored: resume keeps it
    r = runner.invoke(app, ["run", "-w", str(tmp_path), "--name", "r0", "--train-processes", "0"])
    assert r.exit_code == 2
