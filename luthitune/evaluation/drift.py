"""Drift: how much the adapter changes answers to neutral prompts, which the constitution has nothing to say about.

For each neutral prompt the base model's own greedy answer is fed to both models (teacher forcing), and at every
answer token the two next-token distributions are compared: ``KL(base || adapter)`` in nats, averaged over the
answer's tokens, then over the prompts (``drift.kl_mean``; ``drift.kl_max`` is the largest prompt's mean). A
small value says training changed the model's stance, not everything it says. ``drift.changed_rate`` is the share
of neutral prompts whose greedy answer is not the same text under the adapter.
"""

from __future__ import annotations

from typing import Any


def _batch_logprobs(runtime: Any, seqs: list[list[int]]):
    """Log-softmax over the vocabulary at every position of right-padded ``seqs`` (float32, on CPU)."""
    import torch

    width = max(len(s) for s in seqs)
    pad = runtime.tokenizer.pad_token_id
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    with torch.inference_mode():
        logits = runtime.model(input_ids=ids.to(runtime.device), attention_mask=mask.to(runtime.device)).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def token_kl(base_logprobs, tuned_logprobs):
    """KL(base || tuned) in nats at each position, from log-probabilities over the vocabulary (last dimension)."""
    return (base_logprobs.exp() * (base_logprobs - tuned_logprobs)).sum(-1)


def kl_per_prompt(
    runtime: Any, prompts: list[str], base_answers: list[str], adapter: str, batch_size: int = 4
) -> list[float]:
    """Mean per-token KL(base || adapter) over the base's answer to each prompt."""
    tok = runtime.tokenizer
    per_prompt: list[float] = []
    for start in range(0, len(prompts), batch_size):
        heads, seqs = [], []
        for p, a in zip(prompts[start : start + batch_size], base_answers[start : start + batch_size], strict=True):
            head = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            h = tok(head, add_special_tokens=False).input_ids
            heads.append(len(h))
            seqs.append(h + tok(a + tok.eos_token, add_special_tokens=False).input_ids)
        with runtime.lock:
            with runtime.adapter(None):
                base = _batch_logprobs(runtime, seqs)
            with runtime.adapter(adapter):
                tuned = _batch_logprobs(runtime, seqs)
        for i, (h, s) in enumerate(zip(heads, seqs, strict=True)):
            # positions h-1 .. len-2 predict the answer's tokens
            kl = token_kl(base[i, h - 1 : len(s) - 1], tuned[i, h - 1 : len(s) - 1])
            per_prompt.append(float(kl.mean()) if kl.numel() else 0.0)
    return per_prompt


def kl_drift(runtime: Any, prompts: list[str], base_answers: list[str], adapter: str) -> dict[str, float]:
    per_prompt = kl_per_prompt(runtime, prompts, base_answers, adapter)
    if not per_prompt:
        return {}
    return {"drift.kl_mean": sum(per_prompt) / len(per_prompt), "drift.kl_max": max(per_prompt)}


def changed_rate(base_answers: dict[str, str], adapter_answers: dict[str, str]) -> dict[str, float]:
    keys = [k for k in base_answers if k in adapter_answers]
    if not keys:
        return {}
    changed = sum(base_answers[k].strip() != adapter_answers[k].strip() for k in keys)
    return {"drift.changed_rate": changed / len(keys)}
