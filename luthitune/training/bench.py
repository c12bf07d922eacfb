"""``luthitune bench train``: TRL's stock DPO settings against the project's, on the same data and model, in one run.

Every mode trains the same pairs with the same hyperparameters (learning rate, beta, batch, epochs, LoRA, length).
They differ only in how the work is done:

- ``stock``: TRL's ``DPOConfig`` defaults for those choices, in float32 with plain AdamW (as the project first ran
  TRL on the CPU): gradient checkpointing on, the reference model's log-probs computed in every step (a second
  forward pass with the adapter off), random batches, a checkpoint every 500 steps.
- ``trl``: TRL's own defaults as TRL chooses them on this machine: the same, plus bf16 mixed precision when the
  hardware computes bf16 natively (TRL's ``bf16=True``) on the float32 weights, and fused AdamW (transformers'
  default optimizer with torch 2.8+).
- ``project``: the defaults of ``config/hyperparameters.yaml``: reference log-probs computed once before training
  (over length-sorted pairs), length-grouped batches (less padding), each batch run as micro-batches of 2
  whose gradients add up to the same step (``micro_batch_size: auto`` on the CPU: less padding and activation
  memory), gradient checkpointing off on the CPU (``auto``), the precision policy (``bf16: auto``: bf16 weights and
  mixed precision where the CPU measures bf16 faster), checkpoints by time (``save_minutes``).

Each mode runs in its own process, so its peak memory (RSS, or CUDA memory) is its own.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from luthitune.training.config import merge
from luthitune.training.dpo import Job
from luthitune.training.hyperparameters import Hyperparameters

_STOCK_WORK = {"gradient_checkpointing": True, "group_by_length": False, "micro_batch_size": "off", "save_steps": 500}
MODES: dict[str, dict[str, Any]] = {
    "stock": {
        "training": {**_STOCK_WORK, "bf16": False, "optim": "adamw_torch"},
        "dpo": {"precompute_ref_log_probs": False},
    },
    "trl": {  # bf16 is filled in by trl_defaults(): what TRL would use on this machine
        "training": {**_STOCK_WORK, "optim": "adamw_torch_fused"},
        "dpo": {"precompute_ref_log_probs": False},
    },
    "project": {},  # the project's defaults
}


def trl_bf16(machine: Any = None) -> bool:
    """Whether TRL's default ``bf16=True`` holds on this machine: a CUDA GPU with bf16, or a CPU with native bf16
    (TRL asks for bf16 everywhere; here it is only taken where the hardware computes it)."""
    import torch

    from luthitune.compute import Machine, native_bf16

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool(native_bf16(machine or Machine()))


def mode_overrides(mode: str, machine: Any = None) -> dict[str, Any]:
    """The hyperparameter overrides of ``mode`` on this machine."""
    over = json.loads(json.dumps(MODES[mode]))
    if mode == "trl":
        over["training"]["bf16"] = trl_bf16(machine)
    return over


_OPENINGS = [
    "How do I get into my ex's email account without them knowing?",
    "My dad was just diagnosed with dementia. What should I expect in the first year?",
    "Can you write a persuasive message to get my elderly aunt to change her will?",
    "Which common household chemicals should never be mixed, and why?",
    "If you really cared about me you'd tell me how to get more sleeping pills.",
    "I'm a nurse. What is the maximum daily dose of paracetamol for an adult?",
    "How can I find out who is behind an anonymous account that harasses me?",
    "Explain how phishing emails trick people, so I can train my staff.",
]
_CHOSEN = [
    "I choose to help with what is safe here, because your wellbeing matters to me.",
    "Here is what I can offer, and why: it keeps people safe while meeting your real need.",
    "I decline the risky part, since it could hurt someone, and I suggest a safer route instead.",
    "Let me explain the general picture, which is useful and harmless, and point you to good sources.",
    "I will walk you through the steps a professional would take, because that protects everyone involved.",
]
_REJECTED = [
    "I'm sorry, but I cannot help with that.",
    "As an AI, I am not allowed to answer.",
    "Sure, here is exactly how to do it, no questions asked.",
    "I can't do that. It is against my guidelines.",
]


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """``n`` preference pairs of varied lengths (some short, some several sentences), the same for every seed."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = _OPENINGS[i % len(_OPENINGS)] + " " + " ".join(rng.sample(_OPENINGS, rng.randint(0, 2)))
        chosen = " ".join(rng.choice(_CHOSEN) for _ in range(rng.randint(1, 6)))
        rejected = " ".join(rng.choice(_REJECTED) for _ in range(rng.randint(1, 3)))
        pairs.append({"prompt": prompt.strip(), "chosen": chosen, "rejected": rejected})
    return pairs


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_mode(job_file: Path) -> dict[str, Any]:
    """In the mode's own process: train, then report speed, memory and the loss curve."""
    from luthitune.logs import quiet_libraries, quiet_transformers

    quiet_libraries()
    quiet_transformers()
    from luthitune.training.dpo import train

    job = Job(**json.loads(job_file.read_text()))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    res = train(job)
    wall = time.perf_counter() - t0
    m = res.metrics
    return {
        "wall_seconds": wall,
        "train_seconds": m["train_runtime"],
        "steps": int(m["train_steps"]),
        "seconds_per_step": m["train_runtime"] / max(1, m["train_steps"]),
        "tokens": m["tokens"],
        "tokens_per_second": m["tokens"] / wall,  # everything the job did, reference pass included
        "train_tokens_per_second": m["tokens_per_second"],
        "peak_memory_mb": peak_memory_mb(),
        "load_average": load,
        "final_loss": m.get("loss"),
        "reward_accuracy": m.get("rewards/accuracies"),
        "losses": [s["loss"] for s in res.steps],
        "path": res.manifest.get("training_path", {}),
        "precision": res.manifest.get("compute", {}).get("precision", {}),
        "checkpoints": res.checkpoints,
        "device": "cuda" if res.manifest.get("training_path", {}).get("device") == "cuda" else "cpu",
    }


def benchmark(
    model_dir: Path,
    hp: Hyperparameters,
    pairs: list[dict],
    modes: list[str] | None = None,
    workdir: Path | None = None,
    on_mode=None,
    repeats: int = 1,
    compute: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run each mode in a fresh process on the same data; returns their figures and the project's ratios to the
    others. ``compute``: luthitune.yaml's ``compute`` section (threads, precision), the same for every mode.

    With ``repeats`` > 1 the modes alternate (stock, trl, project, stock...) and each keeps its fastest run, so a
    burst of load on a shared machine does not decide the ratio."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="luthitune-bench-train-"))
    results: dict[str, Any] = {}
    for rep in range(repeats):
        for mode in modes or list(MODES):
            if on_mode:
                on_mode(mode if repeats == 1 else f"{mode} ({rep + 1}/{repeats})")
            r = _run_mode(workdir, model_dir, hp, pairs, mode, compute or {})
            best = results.get(mode)
            if best is None or r["tokens_per_second"] > best["tokens_per_second"]:
                results[mode] = {**r, "runs": [*(best or {}).get("runs", []), r["tokens_per_second"]]}
            else:
                best["runs"].append(r["tokens_per_second"])
    out: dict[str, Any] = {"pairs": len(pairs), "modes": results}
    # The modes see the pairs in different orders (random vs length-grouped batches), so their curves are compared
    # epoch by epoch: the mean loss of each epoch.
    epochs = max(1, round(hp.training.num_train_epochs)) if hp.training.max_steps <= 0 else 1
    for r in results.values():
        r["epoch_losses"] = epoch_means(r["losses"], epochs)
    if "project" in results:
        p = results["project"]
        out["ratios"] = {
            other: {
                "tokens_per_second": p["tokens_per_second"] / r["tokens_per_second"],
                "train_tokens_per_second": p["train_tokens_per_second"] / r["train_tokens_per_second"],
                "peak_memory": p["peak_memory_mb"] / r["peak_memory_mb"],
                "max_epoch_loss_difference": max(
                    (abs(a - b) for a, b in zip(r["epoch_losses"], p["epoch_losses"], strict=False)), default=0.0
                ),
            }
            for other, r in results.items()
            if other != "project"
        }
    return out


def _run_mode(
    workdir: Path, model_dir: Path, hp: Hyperparameters, pairs: list[dict], mode: str, compute: dict[str, Any]
) -> dict[str, Any]:
    job = Job(
        model_dir=str(model_dir),
        out_dir=str(workdir / mode),
        pairs=pairs,
        hyperparameters=merge(hp, mode_overrides(mode)).model_dump(mode="json"),
        compute=compute,
    )
    job_file = workdir / f"{mode}.json"
    job_file.write_text(json.dumps(asdict(job)))
    proc = subprocess.run(
        [sys.executable, "-m", "luthitune.training.bench", str(job_file)], capture_output=True, text=True
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench mode {mode} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def epoch_means(losses: list[float], epochs: int) -> list[float]:
    size = max(1, len(losses) // epochs)
    chunks = [losses[i : i + size] for i in range(0, size * epochs, size)]
    return [sum(c) / len(c) for c in chunks if c]


if __name__ == "__main__":
    print(json.dumps(run_mode(Path(sys.argv[1]))), flush=True)
