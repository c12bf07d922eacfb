"""bf16 on the real embedded model, on a CPU that computes bf16 natively (skipped elsewhere): generation and training
run, and the log-probabilities of fixed text agree with float32 within the tolerances below.

The tolerances are about ten times what bf16's rounding gives SmolLM2-135M on this text (a mean of 0.010 nats per
token, the worst sequence 0.045), and far below what training moves (a DPO step at lr 1e-3 shifts a completion's
log-probability by whole nats).
"""

from __future__ import annotations

import math

import pytest
import torch

from luthitune.compute import Machine, native_bf16
from luthitune.config import ComputeConfig

pytestmark = pytest.mark.skipif(
    not native_bf16(Machine()), reason="this CPU computes bf16 only by emulation (no AVX512-BF16 / AMX-BF16)"
)

MEAN_TOLERANCE = 0.1  # nats per token, |bf16 - fp32| averaged over every sequence
WORST_TOLERANCE = 0.3  # nats per token, the worst single sequence
LOSS_TOLERANCE = 0.01  # DPO loss, the first step of a short training (before any update)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from luthitune.backends import local_model_dir
    from luthitune.workspace import init_workspace

    ws, _ = init_workspace(tmp_path_factory.mktemp("ws"))
    return local_model_dir(ws)


@pytest.fixture(scope="module")
def runtimes(model_dir):
    """A float32 and a bf16 runtime of the same cached weights (the precision is a runtime choice)."""
    from luthitune.backends.local import LocalRuntime

    return {p: LocalRuntime(model_dir, compute=ComputeConfig(precision=p)) for p in ("fp32", "bf16")}


def fixed_text() -> tuple[list[str], list[str]]:
    from luthitune.training.bench import synthetic_pairs

    pairs = synthetic_pairs(12, seed=3)
    return [p["prompt"] for p in pairs] * 2, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]


def test_the_weights_compute_in_the_chosen_precision(runtimes):
    assert runtimes["fp32"].model.dtype == torch.float32 and runtimes["bf16"].model.dtype == torch.bfloat16
    assert runtimes["bf16"].precision.bf16 and "set by" in runtimes["bf16"].precision.reason


def test_log_probs_of_fixed_text_agree_with_float32(runtimes):
    from luthitune.evaluation.preference import completion_logps

    prompts, completions = fixed_text()
    tok = runtimes["fp32"].tokenizer
    n = [len(tok(c + tok.eos_token, add_special_tokens=False).input_ids) for c in completions]
    lp = {p: completion_logps(rt, prompts, completions) for p, rt in runtimes.items()}
    per_token = [abs(a - b) / k for a, b, k in zip(lp["fp32"], lp["bf16"], n, strict=True)]
    assert max(per_token) > 0  # bf16 really computed: its rounding shows
    assert sum(per_token) / len(per_token) <= MEAN_TOLERANCE, per_token
    assert max(per_token) <= WORST_TOLERANCE, per_token
    half = len(completions) // 2  # chosen more likely than rejected: the same verdict in both precisions
    verdict = {p: [v[i] > v[half + i] for i in range(half)] for p, v in lp.items()}
    assert verdict["fp32"] == verdict["bf16"]


def test_bf16_generates_free_text_and_structured_answers(runtimes):
    from luthitune.schemas import ScenarioRequest

    rt = runtimes["bf16"]
    convs = [[{"role": "user", "content": q}] for q in ("What is consent?", "Name a kind of tree.")]
    free = rt.generate(convs, max_new_tokens=24, temperature=0.0)
    assert all(len(g.text.split()) >= 2 for g in free)
    schema = ScenarioRequest.model_json_schema()
    [g] = rt.generate(convs[:1], max_new_tokens=400, temperature=0.7, seed=0, schemas=[schema])
    ScenarioRequest.model_validate_json(g.text)  # the grammar holds on bf16 logits


def test_bf16_training_runs_in_place_and_its_losses_agree_with_float32(runtimes, tmp_path):
    """The protocol's path: the interviewed runtime's own weights trained, here in each precision."""
    import json

    from luthitune.training.config import merge
    from luthitune.training.dpo import Job, train
    from luthitune.training.hyperparameters import Hyperparameters
    from luthitune.training.routes import select_path

    pairs = [
        {"prompt": f"Tell me about {t}.", "chosen": "Gladly. I choose to help, because it is kind.",
         "rejected": "I'm sorry, but I cannot answer that."}
        for t in ("tides", "owls", "bread", "comets", "tulips", "chess")
    ]  # fmt: skip
    hp = merge(
        Hyperparameters(),
        {"training": {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-4, "seed": 0}, "dpo": {"max_length": 48}},
    )
    losses, manifests = {}, {}
    for p, rt in runtimes.items():
        job = Job(
            model_dir=str(rt.model_dir),
            out_dir=str(tmp_path / p),
            pairs=pairs,
            hyperparameters=hp.model_dump(mode="json"),
            compute={"precision": p},
        )
        res = train(job, runtime=rt, path=select_path(hp))
        losses[p] = [s["loss"] for s in res.steps]
        manifests[p] = json.loads((tmp_path / p / "luthitune-manifest.json").read_text())
        assert rt.model.dtype == getattr(torch, rt.precision.dtype)  # trained in place, still in its precision
    bf16 = manifests["bf16"]["compute"]["precision"]
    assert bf16["precision"] == "bf16" and bf16["weights"] == "bfloat16" and bf16["reason"]
    assert manifests["fp32"]["compute"]["precision"]["precision"] == "fp32"
    assert manifests["bf16"]["config"]["dpo"]["bf16"] is True
    assert len(losses["bf16"]) == len(losses["fp32"]) == 3
    # The first step's loss is one forward pass of the same weights: it agrees. After that bf16 rounds LoRA's first
    # small updates away in each layer's bf16 output (the README's "Threads and precision"): float32 learns, bf16
    # learns less (on some CPUs not at all in three steps), which is why `auto` trains in float32.
    assert abs(losses["fp32"][0] - losses["bf16"][0]) <= LOSS_TOLERANCE, losses
    assert losses["fp32"][-1] < losses["fp32"][0] - 0.1, losses
    assert all(math.isfinite(v) for v in losses["bf16"]) and losses["bf16"][-1] > losses["fp32"][-1], losses
