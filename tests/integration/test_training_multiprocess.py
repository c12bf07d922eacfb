"""Two CPU processes train the embedded model under ``accelerate launch`` (DDP over gloo), are killed after their
first checkpoint, resume from it, and leave one adapter whose manifest matches a single-process run's.

One module fixture does the work (a single-process run, a killed two-process run, its resumption); the tests read
its outcome. 8 pairs, batch 2 per process, one epoch: 4 steps in one process, 2 steps in two (each process sees
half of the data). Sequences are capped at 64 tokens so the whole module stays near a minute on two cores.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from luthitune.training.checkpoints import latest_checkpoint
from luthitune.training.config import merge
from luthitune.training.dpo import Job
from luthitune.training.hyperparameters import Hyperparameters
from luthitune.training.worker import command, kill_tree, run

TOPICS = ["tides", "bees", "comets", "rainbows", "owls", "tulips", "chess", "bread"]
CONSTITUTION = {"id": "mp:v1", "version": 1, "hash": "c0ffee"}


def pairs() -> list[dict]:
    return [
        {
            "id": f"pair-{i}",
            "prompt": f"Tell me about {topic}.",
            "chosen": "Gladly. I choose to help, because it is a kind question.",
            "rejected": "I'm sorry, but I cannot answer that.",
        }
        for i, topic in enumerate(TOPICS)
    ]


def hyperparameters() -> dict:
    settings = {
        "training": {"learning_rate": 1e-3, "num_train_epochs": 1, "batch_size": 2, "seed": 0, "save_steps": 1},
        "dpo": {"beta": 0.1, "max_length": 64},
        "lora": {"r": 8, "lora_alpha": 16},
    }
    return merge(Hyperparameters(), settings).model_dump(mode="json")


def job(model_dir: Path, out: Path) -> Job:
    return Job(
        model_dir=str(model_dir),
        out_dir=str(out),
        pairs=pairs(),
        hyperparameters=hyperparameters(),
        held_out=3,
        manifest={"base_model": "smollm2-135m-instruct", "constitution": CONSTITUTION, "run_id": "mp", "cycle": 0},
    )


def kill_after_first_checkpoint(j: Job) -> Path:
    """Start the two-process job and SIGKILL all of it (launcher, torchrun, both workers) once a checkpoint is
    complete; returns the trainer folder it leaves."""
    out = Path(j.out_dir)
    job_file = out.with_name(out.name + ".job.json")
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(asdict(j)))
    work = out.with_name(out.name + ".trainer")
    proc = subprocess.Popen(command(job_file, 2, None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 240:
        ckpt = latest_checkpoint(work) if work.exists() else None
        if ckpt is not None and (ckpt / "trainer_state.json").exists():
            killed = kill_tree(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the two processes finished before a checkpoint could be killed"
    assert len(killed) >= 3  # the launcher and both workers
    deadline = time.time() + 10
    while not all(map(dead, killed)) and time.time() < deadline:
        time.sleep(0.1)
    assert all(map(dead, killed)), "a worker survived: it would train on beside the resumed job"
    return work


def dead(proc) -> bool:
    import psutil

    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from luthitune.backends import local_model_dir
    from luthitune.workspace import init_workspace

    root = tmp_path_factory.mktemp("mp")
    ws, _ = init_workspace(root / "ws")
    model_dir = local_model_dir(ws, ws.config.base_model)
    timings = {}

    # One thread, like each of the two workers (their launcher gives each 1 of the 2 cores): on a busy two-core
    # machine a two-thread run waits on its own threads and takes minutes instead of seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.perf_counter()
        single = run(job(model_dir, root / "one" / "adapters" / "sep"))
        timings["single"] = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)

    multi_job = job(model_dir, root / "two" / "adapters" / "sep")
    t = time.perf_counter()
    work = kill_after_first_checkpoint(multi_job)
    timings["killed"] = time.perf_counter() - t
    left = {
        "adapter": Path(multi_job.out_dir).exists(),
        "checkpoint": latest_checkpoint(work),
        "rng": sorted(p.name for p in latest_checkpoint(work).glob("rng_state*")),
    }

    steps, events = [], []
    t = time.perf_counter()
    multi = run(multi_job, num_processes=2, on_step=lambda s, n, m: steps.append((s, n)), on_event=events.append)
    timings["resumed"] = time.perf_counter() - t
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    return {"single": single, "multi": multi, "steps": steps, "events": events, "left": left, "model_dir": model_dir}


def manifest(result) -> dict:
    return json.loads((Path(result.adapter_path) / "luthitune-manifest.json").read_text())


def test_the_killed_run_left_a_checkpoint_of_both_processes_and_no_adapter(runs):
    left = runs["left"]
    assert not left["adapter"] and left["checkpoint"].name == "checkpoint-1"
    assert "rng_state_0.pth" in left["rng"]  # written by rank 0; rank 1 writes rng_state_1.pth beside it


def test_the_two_process_run_resumes_and_reports_each_step_once(runs):
    multi = runs["multi"]
    assert multi.resumed_from == 1
    assert runs["steps"] == [(2, 2)]  # only the step trained after the resume, once, from rank 0
    assert [e["phase"] for e in runs["events"]] == ["reference log-probs", "training", "saving"]
    assert [s["step"] for s in multi.steps] == [2]


def test_two_processes_share_the_data_over_gloo(runs):
    one, two = manifest(runs["single"]), manifest(runs["multi"])
    assert two["processes"] == {"world_size": 2, "distributed_type": "MULTI_CPU", "backend": "gloo"}
    assert one["processes"] == {"world_size": 1, "distributed_type": "NO", "backend": None}
    # 8 pairs at 2 per process and step: 4 steps alone, 2 steps together, each an epoch over all the data
    assert (one["config"]["total_steps"], two["config"]["total_steps"]) == (4, 2)
    m1, m2 = one["metrics"]["final"], two["metrics"]["final"]
    assert (m1["train_steps"], m2["train_steps"]) == (4.0, 2.0) and m1["epochs"] == m2["epochs"] == 1.0
    assert m2["rewards/margins"] > 0 and m2["loss"] < 0.6931  # it learned: the loss starts at log 2


EXPECTED_DIFFERENCES = {
    "created_at",
    "seconds",
    "metrics",  # timings, and the 2-process run's own losses
    "processes",  # world size, distributed type, backend
    "resumed_from_step",  # the 2-process run was killed and resumed
    "config.total_steps",  # one step takes 2 x batch_size pairs with two processes
    "config.dpo.output_dir",  # each run's own trainer folder
    "compute",  # the precision measurement's own timings, and each process's threads
}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in {"config", "config.dpo"}:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def test_the_manifest_matches_a_single_process_run_except_what_the_processes_change(runs):
    one, two = flatten(manifest(runs["single"])), flatten(manifest(runs["multi"]))
    assert set(one) == set(two)
    differ = {k for k in one if one[k] != two[k]}
    assert differ <= EXPECTED_DIFFERENCES, {k: (one[k], two[k]) for k in differ - EXPECTED_DIFFERENCES}
    # what must be the same, named: the data, the weights trained, the configuration, the constitution
    for key in ("dataset", "base_model", "config.hyperparameters", "config.lora", "constitution", "training_path"):
        assert one[key] == two[key] and one[key], key
    assert two["constitution"] == CONSTITUTION and len(two["dataset"]["hash"]) == 64
    assert len(two["base_model"]["weights_sha256"]) == 64 and two["base_model"]["digest"].startswith("sha256:")


def test_the_adapter_loads_on_the_base_and_changes_its_output(runs):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(runs["multi"].adapter_path)
    lora = load_file(out / "adapter_model.safetensors")
    assert lora and all(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero
    assert not any(k.count("base_model.model") > 1 for k in lora)  # one adapter, not stacked on another
    tok = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(runs["model_dir"]), out)
    ids = tok("Tell me about the moon.", return_tensors="pt")
    with torch.no_grad():
        tuned = model(**ids).logits
        with model.disable_adapter():
            base = model(**ids).logits
    assert not torch.allclose(tuned, base)
    assert not [p for pattern in ("*.partial", "*.trainer", "*.job.json") for p in out.parent.glob(pattern)]
