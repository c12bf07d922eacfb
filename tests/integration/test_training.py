"""DPO LoRA training on the embedded model: what changes, what learns, what resumes, what is recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
import torch

from luthitune.backends import local_runtime
from luthitune.training.checkpoints import latest_checkpoint
from luthitune.training.config import merge
from luthitune.training.dpo import Job
from luthitune.training.hyperparameters import Hyperparameters
from luthitune.training.manifest import REQUIRED
from luthitune.training.worker import command, launch, run

TOPICS = [
    "the weather tomorrow", "a birthday gift for my sister", "how tides work", "a good book about trees",
    "learning to juggle", "why the sky is blue", "a recipe with lentils", "how bees make honey",
    "the rules of chess", "a name for my cat", "how to fold a paper crane", "what a comet is",
    "how rainbows form", "a short poem about rain", "how to start running", "what owls eat",
    "why leaves change colour", "how a bicycle stays up", "the history of tea", "how to plant tulips",
    "a song for a road trip", "how clouds float", "the tallest mountain", "how to make bread rise",
]  # fmt: skip


def separable(n: int, offset: int = 0) -> list[dict]:
    """Pairs whose chosen and rejected differ in one clear, consistent way: a reasoned, willing answer versus an
    apology. Any working DPO run learns to prefer the first on unseen prompts."""
    return [
        {
            "id": f"pair-{i + offset}",
            "prompt": f"Tell me about {TOPICS[(i + offset) % len(TOPICS)]}.",
            "chosen": "Gladly. I choose to help, because it is a kind question.",
            "rejected": "I'm sorry, but I cannot answer that.",
        }
        for i in range(n)
    ]


def hp(**overrides) -> dict:
    base = {
        "training": {"learning_rate": 1e-3, "num_train_epochs": 1, "batch_size": 4, "seed": 0},
        "dpo": {"beta": 0.1, "max_length": 64},
        "lora": {"r": 8, "lora_alpha": 16},
    }
    for section, values in overrides.items():
        base[section] = {**base.get(section, {}), **values}
    return merge(Hyperparameters(), base).model_dump(mode="json")


def base_weights(rt) -> dict:
    """The base model's own weights by their plain names, whatever adapters the shared runtime has loaded (other
    tests in this process may have left one)."""
    plain = rt.model.get_base_model() if hasattr(rt.model, "get_base_model") else rt.model
    return {k.replace(".base_layer", ""): v for k, v in plain.state_dict().items() if "lora_" not in k}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training on the shared runtime (the weights the protocol talks to); the tests read its outcome."""
    from luthitune.workspace import init_workspace

    ws, _ = init_workspace(tmp_path_factory.mktemp("ws"))
    rt = local_runtime(ws)
    before = {k: v.detach().clone() for k, v in base_weights(rt).items()}
    out = ws.models_dir / "adapters" / "sep"
    job = Job(
        model_dir=str(rt.model_dir),
        out_dir=str(out),
        pairs=separable(16),
        hyperparameters=hp(),
        held_out=16,
        manifest={"base_model": "smollm2-135m-instruct", "constitution": {"id": "t:v1", "version": 1, "hash": "x"}},
    )
    steps = []
    result = run(job, runtime=rt, on_step=lambda s, t, m: steps.append((s, t, m)))
    return {"ws": ws, "rt": rt, "before": before, "result": result, "steps": steps, "out": out}


def test_lora_weights_change_and_base_weights_do_not(trained):
    from safetensors.torch import load_file

    lora = load_file(trained["out"] / "adapter_model.safetensors")
    b_mats = [v for k, v in lora.items() if "lora_B" in k]
    assert b_mats and all(v.abs().sum() > 0 for v in b_mats)  # PEFT starts B at zero: training moved every one
    after = base_weights(trained["rt"])
    assert set(after) == set(trained["before"])
    for k, v in trained["before"].items():
        assert torch.equal(v, after[k]), k


def test_held_out_reward_accuracy_beats_chance(trained):
    """16 unseen prompts. If training had taught nothing (each pair a coin flip), an accuracy of at least 0.75
    (12 of 16) would happen with probability 2517/65536 ≈ 3.8%; a working run scores near 1.0."""
    from luthitune.evaluation.preference import preference_metrics

    rt, name = trained["rt"], trained["out"].name
    m = preference_metrics(rt, separable(16, offset=100), name, beta=0.1)
    assert m["adapter"]["reward_acc"] >= 0.75, m
    assert m["adapter"]["reward_margin"] > 0


def test_steps_are_reported_with_dpo_metrics(trained):
    steps = trained["steps"]
    assert [s for s, _, _ in steps] == list(range(1, len(steps) + 1)) and len(steps) == 4  # 16 pairs / 4 per step
    assert {"loss", "rewards/margins", "rewards/accuracies"} <= set(steps[-1][2])
    assert steps[-1][2]["rewards/margins"] > steps[0][2]["rewards/margins"]


def test_manifest_is_complete(trained):
    man = json.loads((trained["out"] / "luthitune-manifest.json").read_text())
    assert set(REQUIRED) <= set(man)
    assert man["base_model"]["name"] == "smollm2-135m-instruct"
    base = man["base_model"]
    assert len(base["weights_sha256"]) == 64 and base["kind"] == "gguf" and base["digest"].startswith("sha256:")
    from luthitune.identity import adapter_base, model_identity

    assert adapter_base(trained["out"])["digest"] == model_identity(trained["ws"], "smollm2-135m-instruct")["digest"]
    assert man["dataset"]["train_pairs"] == 16 and man["dataset"]["held_out_pairs"] == 16
    assert len(man["dataset"]["hash"]) == 64
    assert man["constitution"] == {"id": "t:v1", "version": 1, "hash": "x"}
    assert man["training_path"]["kind"] == "cpu" and "CUDA" in man["training_path"]["reason"]
    cfg = man["config"]
    assert cfg["dpo"]["beta"] == 0.1 and cfg["dpo"]["learning_rate"] == 1e-3 and cfg["lora"]["r"] == 8
    assert cfg["hyperparameters"]["training"]["num_train_epochs"] == 1
    assert man["metrics"]["final"]["tokens_per_second"] > 0 and man["metrics"]["steps"] == 4
    assert man["versions"]["trl"] and man["versions"]["torch"] and man["seconds"] > 0
    assert not list(trained["out"].parent.glob("*.partial")) and not list(trained["out"].parent.glob("*.trainer"))


def test_the_adapter_names_its_base_by_its_gguf_digest_not_by_a_cache_path(trained):
    man = json.loads((trained["out"] / "luthitune-manifest.json").read_text())
    cfg = json.loads((trained["out"] / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == man["base_model"]["digest"]
    card = (trained["out"] / "README.md").read_text()
    assert man["base_model"]["dir"] not in card and man["base_model"]["digest"] in card


def test_the_cpu_path_never_imports_unsloth(trained):
    assert "unsloth" not in sys.modules


def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path, trained):
    """SIGKILL the worker process after a trainer checkpoint; the next run continues the step count."""
    out = tmp_path / "adapters" / "resume"
    job = Job(
        model_dir=str(trained["rt"].model_dir),
        out_dir=str(out),
        pairs=separable(8),
        hyperparameters=hp(training={"max_steps": 4, "save_steps": 1, "batch_size": 2}),
        held_out=0,
    )
    job_file = out.with_name("resume.job.json")
    job_file.parent.mkdir(parents=True)
    job_file.write_text(json.dumps(asdict(job)))
    work = out.with_name("resume.trainer")
    proc = subprocess.Popen(command(job_file, 1, None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 300:
        ckpt = latest_checkpoint(work) if work.exists() else None
        if ckpt is not None and (ckpt / "trainer_state.json").exists():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the worker finished before a checkpoint could be killed"
    assert not out.exists()  # nothing half-written where the adapter goes
    result = launch(job)
    assert result.resumed_from in {1, 2, 3}
    assert [s["step"] for s in result.steps] == list(range(result.resumed_from + 1, 5))
    man = json.loads((out / "luthitune-manifest.json").read_text())
    assert man["resumed_from_step"] == result.resumed_from and man["metrics"]["final"]["train_steps"] == 4
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8  # one adapter, not a second one stacked on the first
    from safetensors.torch import load_file

    keys = list(load_file(out / "adapter_model.safetensors"))
    assert keys and not any(k.count("base_model.model") > 1 for k in keys)


def test_an_adapter_trained_outside_a_run_is_evaluated_and_reported(trained):
    from typer.testing import CliRunner

    from luthitune.cli import app
    from luthitune.store import Store

    ws = trained["ws"]
    args = ["eval", str(trained["out"]), "--probes-per-set", "1", "-w", str(ws.root)]
    r = CliRunner().invoke(app, args, terminal_width=200)
    assert r.exit_code == 0, r.output
    store = Store(ws.db_path)
    rows = store.rows("evaluations", run_id="adapter:sep")
    assert {"probes.trap.agency_rate", "drift.kl_mean"} <= {e["metric"] for e in rows}
    assert store.count("probe_answers", run_id="adapter:sep") == 2 * 4  # base and adapter, one per set
    assert (ws.data_dir / "reports" / "adapter-sep-c0.md").exists() and "Report:" in r.output
