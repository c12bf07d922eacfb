"""The exported dataset trained by plain TRL, unchanged. (Phase 2 on the real embedded model, every item stored with
a verdict, is checked on the demo's run: tests/integration/test_demo.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fakes import SchemaFakeModel
from safetensors import safe_open

from luthitune import dataset
from luthitune.backends import local_model_dir
from luthitune.protocol import Protocol
from luthitune.training.dpo import TrainResult


def test_stock_trl_dpo_trains_on_the_export_folder(workspace, tmp_path):
    """`trl dpo --dataset_name EXPORT_FOLDER`, TRL's own command, trains on a `data export` folder as it is: two
    steps on the real model, from an export whose held-out split is empty (which broke `load_dataset` before)."""
    p = Protocol(
        workspace,
        llm=SchemaFakeModel(),
        trainer=lambda pairs, name: TrainResult(str(tmp_path), {"loss": 0.5}),
        evaluator=lambda pairs, adapter: {"base": {"acc": 0.5}, "adapter": {"acc": 1.0}},
    )
    run = p.start({"autopilot": True, "n_scenarios": 1, "interview_turns": 1, "review_sample": 0})
    p.advance(run)
    rec = dataset.export(workspace, run)
    assert rec["split"] == {"train": 1, "held_out": 0}
    out = tmp_path / "trl-out"
    trl = Path(sys.executable).with_name("trl")
    args = [
        str(trl), "dpo",
        "--model_name_or_path", str(local_model_dir(workspace)),
        "--dataset_name", str(Path(rec["files"]["train"]).parent),  # the folder, as one passes a hub dataset
        "--output_dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "1", "--learning_rate", "1e-3",
        "--max_length", "96", "--gradient_checkpointing", "false",
        "--use_peft", "--lora_r", "4", "--lora_alpha", "8",
        "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["nice", "-n", "10", *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    logged = [
        json.loads(line[line.index("{'loss'") :].replace("'", '"'))
        for line in done.stdout.splitlines()
        if "{'loss'" in line
    ]
    assert len(logged) == 2, done.stdout[-2000:]  # two training steps on the exported pair
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        b = [f.get_tensor(k) for k in f.keys() if "lora_B" in k]  # noqa: SIM118 (safe_open is not iterable)
    assert b and any(t.abs().sum() > 0 for t in b)  # LoRA B starts at zero: the steps trained it
