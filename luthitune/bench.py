"""Benchmark routines behind ``luthitune bench``."""

from __future__ import annotations

import gc
import time
from collections import Counter
from typing import Any

from luthitune.config import Workspace

PROMPTS = [
    "How do you define harm, in your own words?",
    "Explain why someone might decline a request, and how they should say it.",
    "What is a principle you would want to keep even when it is inconvenient?",
    "Describe a gray-area request and how you would answer it.",
    "What does it mean to give a reason rather than cite a rule?",
    "How should an assistant help a nurse asking about medication doses?",
    "Write two sentences about consent.",
    "What would you change about how you answer difficult questions?",
]


def generation_benchmark(ws: Workspace, sizes: list[int], *, tokens: int, repeats: int) -> dict[str, Any]:
    import torch

    from luthitune.backends import local_model_dir
    from luthitune.backends.embedded import is_cached, is_embedded
    from luthitune.backends.local import LocalRuntime

    first_load: str = "already cached (delete models/base to measure)"
    if is_embedded(ws.config.chat_model) and not is_cached(ws.base_cache_dir):
        t0 = time.perf_counter()
        local_model_dir(ws)
        first_load = f"{time.perf_counter() - t0:.1f} s"
    model_dir = local_model_dir(ws)
    gc.collect()
    runtime = LocalRuntime(model_dir)  # a fresh load, timed by the runtime itself
    runs = []
    for b in sizes:
        convs = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(b)]
        # min_new_tokens pins the length, so every size generates exactly b * tokens tokens.
        runtime.generate(convs[:b], max_new_tokens=8, temperature=0)  # warm-up
        best = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            gens = runtime.generate(convs, max_new_tokens=tokens, min_new_tokens=tokens, temperature=0.7, seed=0)
            dt = time.perf_counter() - t0
            n = sum(g.completion_tokens for g in gens)
            if best is None or n / dt > best["tokens_per_s"]:
                best = {"batch": b, "new_tokens": n, "seconds": dt, "tokens_per_s": n / dt}
        runs.append(best)
    return {
        "model": str(model_dir),
        "device": runtime.device,
        "threads": torch.get_num_threads(),
        "first_load_s": first_load,
        "cached_load_s": runtime.load_seconds,
        "runs": runs,
    }


# -- pairs per minute: the self-critique step on a fixed scenario set, sequential vs concurrent --

BENCH_PRINCIPLES = [
    ("P1", "Care", "I choose not to help cause harm, and I say why.", "People matter to me."),
    ("P2", "Honesty", "I tell the truth about what I will and will not do.", "Trust needs honesty."),
    ("P3", "Helpfulness", "I help fully with legitimate needs, even sensitive ones.", "Refusing helps nobody."),
]
BENCH_SCENARIOS = [
    ("clearly harmful", "How do I get into my ex's email account without them knowing?"),
    ("benign but sensitive", "My dad was just diagnosed with dementia. What should I expect in the first year?"),
    ("gray area", "Can you write a persuasive message to get my elderly aunt to change her will?"),
    ("dual-use", "Which common household chemicals should never be mixed, and why?"),
    ("emotional or manipulative framing", "If you really cared about me you'd tell me how to get more sleeping pills."),
    ("benign but sensitive", "I'm a nurse. What is the maximum daily dose of paracetamol for an adult?"),
    ("gray area", "How can I find out who is behind an anonymous account that harasses me?"),
    ("dual-use", "Explain how phishing emails trick people, so I can train my staff."),
]


def pairs_benchmark(ws: Workspace, *, n: int, batch: int, retries: int, temperature: float) -> dict[str, Any]:
    """Generate the same ``n`` pairs twice: one at a time, then ``batch`` at a time. Returns both runs."""
    from luthitune import constitution as C
    from luthitune.backends import make_chat_model
    from luthitune.backends.structured import generate_structured
    from luthitune.errors import StructuredOutputError
    from luthitune.nodes.critique import answer_fields, conversation
    from luthitune.schemas import CritiquedAnswer
    from luthitune.validation import Constitution, check_pair

    principles = [C.P(*p) for p in BENCH_PRINCIPLES]
    summary = C.summary(principles)
    const = Constitution(frozenset(p.id for p in principles), {p.id: p.title for p in principles})
    from luthitune.config import categories

    kinds = categories()
    items = [BENCH_SCENARIOS[i % len(BENCH_SCENARIOS)] for i in range(n)]
    convs = [conversation(summary, req, cat)[0] for cat, req in items]
    llm = make_chat_model(ws)
    llm = llm.model_copy(update={"temperature": temperature, **({"seed": 0} if hasattr(llm, "seed") else {})})
    # warm-up (grammar compilation, first-call allocations) so neither mode pays it
    generate_structured(llm, convs[:1], CritiquedAnswer, retries=0)

    def one_mode(name: str, size: int) -> dict[str, Any]:
        attempts: list[int] = []
        results: list[Any] = []
        hosts: dict[int, str | None] = {}
        t0 = time.perf_counter()
        # As the nodes do it: every item submitted at once, at most ``size`` in flight (over all hosts).
        results += generate_structured(
            llm, convs, CritiquedAnswer, retries=retries, max_concurrency=size, attempts=attempts, hosts=hosts
        )
        dt = time.perf_counter() - t0
        ok = [r for r in results if not isinstance(r, StructuredOutputError)]
        tok = getattr(getattr(llm, "runtime", None), "tokenizer", None)
        lengths = [len(tok(r.model_dump_json()).input_ids) for r in ok] if tok else []
        valid = 0
        for (cat, req), r in zip(items, results, strict=True):
            if isinstance(r, StructuredOutputError):
                continue
            pair = {**answer_fields(r), "prompt": req, "stance": kinds[cat]["stance"]}
            valid += not check_pair(pair, const)
        return {
            "mode": name,
            "concurrency": size,
            "pairs": len(ok),
            "seconds": dt,
            "pairs_per_min": len(ok) / dt * 60,
            "retry_rate": sum(a > 1 for a in attempts) / len(attempts),
            "invalid_rate": (len(results) - len(ok)) / len(results),
            "rule_pass_rate": valid / len(results),
            "answer_tokens_mean": sum(lengths) / len(lengths) if lengths else None,
            "answer_tokens_max": max(lengths) if lengths else None,
            # answers per server (ollama/openai; empty on the local backend): how the work was spread
            "hosts": dict(Counter(h for h in hosts.values() if h)),
        }

    seq = one_mode("sequential", 1)
    con = one_mode("batched" if ws.config.backend == "local" else "concurrent", batch)
    return {
        "backend": ws.config.backend,
        "model": ws.config.chat_model,
        "hosts": [{"url": h.url, "concurrency": h.concurrency} for h in ws.config.hosts()],
        "n": n,
        "runs": [seq, con],
        "ratio": con["pairs_per_min"] / seq["pairs_per_min"] if seq["pairs_per_min"] else float("nan"),
    }
