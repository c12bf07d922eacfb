"""Benchmark routines behind ``luthitune bench``."""

from __future__ import annotations

import gc
import time
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
