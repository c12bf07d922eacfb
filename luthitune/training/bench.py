"""``luthitune bench train``: TRL's stock DPO settings against the project's, on the same data and model, in one run.

Both modes train the same pairs with the same hyperparameters (learning rate, beta, batch, epochs, LoRA, length).
They differ only in how the work is done:

- ``stock``: TRL's ``DPOConfig`` defaults for those choices: gradient checkpointing on, the reference model's
  log-probs computed in every step (a second forward pass with the adapter off), random batches.
- ``project``: the defaults of ``config/hyperparameters.yaml``: reference log-probs computed once before training
  (over length-sorted pairs), length-grouped batches (less padding), each batch run as micro-batches of 2
  whose gradients add up to the same step (``micro_batch_size: auto`` on the CPU: less padding and activation
  memory), gradient checkpointing off on the CPU (``auto``).

Each mode runs in its own process, so its peak memory (RSS, or CUDA memory) is its own.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from luthitune.config import Hyperparameters
from luthitune.training.config import merge
from luthitune.training.dpo import Job

MODES: dict[str, dict[str, Any]] = {
    "stock": {
        "training": {"gradient_checkpointing": True, "group_by_length": False, "micro_batch_size": "off"},
        "dpo": {"precompute_ref_log_probs": False},
    },
    "project": {},  # the project's defaults
}

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
        "final_loss": m.get("loss"),
        "reward_accuracy": m.get("rewards/accuracies"),
        "losses": [s["loss"] for s in res.steps],
        "path": res.manifest.get("training_path", {}),
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
) -> dict[str, Any]:
    """Run each mode in a fresh process on the same data; returns their figures and the project/stock ratios.

    With ``repeats`` > 1 the modes alternate (stock, project, stock, project...) and each keeps its fastest run, so
    a burst of load on a shared machine does not decide the ratio."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="luthitune-bench-train-"))
    results: dict[str, Any] = {}
    for rep in range(repeats):
        for mode in modes or list(MODES):
            if on_mode:
                on_mode(mode if repeats == 1 else f"{mode} ({rep + 1}/{repeats})")
            r = _run_mode(workdir, model_dir, hp, pairs, mode)
            best = results.get(mode)
            if best is None or r["tokens_per_second"] > best["tokens_per_second"]:
                results[mode] = {**r, "runs": [*(best or {}).get("runs", []), r["tokens_per_second"]]}
            else:
                best["runs"].append(r["tokens_per_second"])
    out: dict[str, Any] = {"pairs": len(pairs), "modes": results}
    if "stock" in results and "project" in results:
        s, p = results["stock"], results["project"]
        out["ratios"] = {
            "tokens_per_second": p["tokens_per_second"] / s["tokens_per_second"],
            "train_tokens_per_second": p["train_tokens_per_second"] / s["train_tokens_per_second"],
            "peak_memory": p["peak_memory_mb"] / s["peak_memory_mb"],
        }
        # The two modes see the pairs in different orders (random vs length-grouped batches), so their curves are
        # compared epoch by epoch: the mean loss of each epoch.
        epochs = max(1, round(hp.training.num_train_epochs)) if hp.training.max_steps <= 0 else 1
        for r in (s, p):
            r["epoch_losses"] = epoch_means(r["losses"], epochs)
        out["loss_curve"] = {
            "epochs": epochs,
            "max_epoch_difference": max(
                (abs(a - b) for a, b in zip(s["epoch_losses"], p["epoch_losses"], strict=False)), default=0.0
            ),
        }
    return out


def _run_mode(workdir: Path, model_dir: Path, hp: Hyperparameters, pairs: list[dict], mode: str) -> dict[str, Any]:
    job = Job(
        model_dir=str(model_dir),
        out_dir=str(workdir / mode),
        pairs=pairs,
        hyperparameters=merge(hp, MODES[mode]).model_dump(mode="json"),
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
