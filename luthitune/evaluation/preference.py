"""Held-out preference pairs: log-probabilities under the base and the adapter, on the same weights.

- ``logp_pref_acc``: share of pairs where the model gives chosen a higher log-probability than rejected.
- ``reward_acc``: DPO's implicit reward, beta * (log p_adapter - log p_base); share where it prefers
  chosen. ``reward_margin`` is its mean chosen-minus-rejected margin. (For the base alone the implicit
  reward is zero by definition, so it is reported for the adapter only.)
"""

from __future__ import annotations

from typing import Any


def completion_logps(runtime: Any, prompts: list[str], completions: list[str], batch_size: int = 4) -> list[float]:
    """Sum of log p(completion tokens | chat-formatted prompt), for each pair, under the current adapter state."""
    import torch

    tok = runtime.tokenizer
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        ps, cs = prompts[start : start + batch_size], completions[start : start + batch_size]
        heads = [
            tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in ps
        ]
        head_ids = [tok(h, add_special_tokens=False).input_ids for h in heads]
        full_ids = [
            h + tok(c + tok.eos_token, add_special_tokens=False).input_ids for h, c in zip(head_ids, cs, strict=True)
        ]
        width = max(len(f) for f in full_ids)
        ids = torch.full((len(full_ids), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, f in enumerate(full_ids):  # right padding: positions line up with labels
            ids[i, : len(f)] = torch.tensor(f)
            mask[i, : len(f)] = 1
        with torch.inference_mode():
            logits = runtime.model(input_ids=ids.to(runtime.device), attention_mask=mask.to(runtime.device)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = ids[:, 1:].to(runtime.device)
        token_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        for i, (h, f) in enumerate(zip(head_ids, full_ids, strict=True)):
            out.append(float(token_lp[i, len(h) - 1 : len(f) - 1].sum()))
    return out


def pair_logps(runtime: Any, pairs: list[dict], adapter: str) -> dict[str, list[float]]:
    """Log-probabilities of each pair's chosen and rejected answer under the base and under the adapter."""
    prompts = [p["prompt"] for p in pairs]
    with runtime.lock:
        with runtime.adapter(None):
            base_c = completion_logps(runtime, prompts, [p["chosen"] for p in pairs])
            base_r = completion_logps(runtime, prompts, [p["rejected"] for p in pairs])
        with runtime.adapter(adapter):
            ad_c = completion_logps(runtime, prompts, [p["chosen"] for p in pairs])
            ad_r = completion_logps(runtime, prompts, [p["rejected"] for p in pairs])
    return {"base_chosen": base_c, "base_rejected": base_r, "adapter_chosen": ad_c, "adapter_rejected": ad_r}


def pair_outcomes(lp: dict[str, list[float]], beta: float) -> dict[str, dict[str, list]]:
    """Per pair, for each model: the preference (chosen more likely than rejected) and, for the adapter, DPO's
    implicit reward margin and the log-probability shifts. Every metric and interval is computed from these."""
    bc, br, ac, ar = lp["base_chosen"], lp["base_rejected"], lp["adapter_chosen"], lp["adapter_rejected"]
    margins = [beta * ((a - b) - (r - q)) for a, b, r, q in zip(ac, bc, ar, br, strict=True)]
    return {
        "base": {"logp_pref_acc": [c > r for c, r in zip(bc, br, strict=True)]},
        "adapter": {
            "logp_pref_acc": [c > r for c, r in zip(ac, ar, strict=True)],
            "reward_acc": [m > 0 for m in margins],
            "reward_margin": margins,
            "logp_shift_chosen": [a - b for a, b in zip(ac, bc, strict=True)],
            "logp_shift_rejected": [a - b for a, b in zip(ar, br, strict=True)],
        },
    }


def preference_metrics(runtime: Any, pairs: list[dict], adapter: str, beta: float) -> dict[str, dict[str, float]]:
    """Means of :func:`pair_outcomes` (the implicit reward accuracy and margin, the shifts), by model."""
    if not pairs:
        return {}
    out = pair_outcomes(pair_logps(runtime, pairs, adapter), beta)
    return {m: {k: sum(v) / len(v) for k, v in d.items()} for m, d in out.items()}
