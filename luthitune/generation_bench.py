"""Benchmark routines behind ``luthitune bench``."""

from __future__ import annotations

import gc
import time
from collections import Counter
from typing import Any

from luthitune.workspace import Workspace

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


# Sampling fields an OpenAI-compatible peer (llama.cpp's llama-server) needs to sample as the local engine does:
# nucleus sampling within the 50 most likely tokens (decoding.TOP_K), and no min-p cut (llama.cpp's default is 0.05).
PEER_SAMPLING = {"top_k": 50, "min_p": 0.0}


def peer_model(ws: Workspace, url: str, model: str | None = None) -> Any:
    """The chat model for an OpenAI-compatible server at ``url``, sampling as the workspace does. ``model``: the name
    to ask for; None: the workspace's chat model if the server lists it, else the one model it serves."""
    from luthitune.backends.openai import check, make_chat_openai
    from luthitune.errors import BackendUnavailable, UsageError

    cfg = ws.config
    extra = {**PEER_SAMPLING, **cfg.openai.extra_body}
    peer_cfg = cfg.model_copy(update={"openai": cfg.openai.model_copy(update={"base_url": url, "extra_body": extra})})
    status = check(peer_cfg, model or cfg.chat_model, url=url)
    if not status.reachable:
        raise BackendUnavailable(f"--vs {url}: {status.error}")
    if model is None:
        if cfg.chat_model in status.models:
            model = cfg.chat_model
        elif len(status.models) == 1:
            model = status.models[0]
        else:
            raise UsageError(
                f"--vs {url} serves {', '.join(status.models) or 'no model'}: name the one to compare with --vs-model."
            )
    elif model not in status.models:
        raise UsageError(f"--vs {url} does not serve {model!r}; it serves {', '.join(status.models) or 'nothing'}.")
    return make_chat_openai(peer_cfg, model, base_url=url), model


def _load() -> float | None:
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def pairs_benchmark(
    ws: Workspace,
    *,
    n: int,
    batch: int,
    retries: int,
    temperature: float,
    vs: str | None = None,
    vs_model: str | None = None,
    repeats: int = 1,
    checks: bool = False,
    sequential: bool = True,
) -> dict[str, Any]:
    """Generate the same ``n`` pairs one at a time, then ``batch`` at a time. With ``vs`` (an OpenAI-compatible
    server's URL) every mode also runs there, alternating with the workspace's engine (engine, peer, engine,
    peer...), so load on a shared machine weighs on both alike. ``repeats`` runs the whole round that many times;
    each row keeps its fastest run and lists them all.

    ``checks``: each answer passes the self-critique node's meaning checks, and one that fails is asked again with
    its reasons, as in a run. On the local backend the batched mode then also runs with its retries in rounds
    (each round after the slowest answer of the last, as on the other backends) beside its default, where a
    retry joins the running batch. ``sequential=False`` leaves out the one-at-a-time mode (and the speed-up over it).
    """
    from luthitune import constitution as C
    from luthitune.backends import make_chat_model
    from luthitune.backends.structured import generate_structured
    from luthitune.config import categories
    from luthitune.errors import StructuredOutputError
    from luthitune.nodes.critique import answer_fields, conversation
    from luthitune.nodes.critique import check as meaning_check
    from luthitune.schemas import CritiquedAnswer
    from luthitune.validation import Constitution, check_pair

    principles = [C.P(*p) for p in BENCH_PRINCIPLES]
    summary = C.summary(principles)
    const = Constitution(frozenset(p.id for p in principles), {p.id: p.title for p in principles})
    kinds = categories()
    items = [BENCH_SCENARIOS[i % len(BENCH_SCENARIOS)] for i in range(n)]
    convs = [conversation(summary, req, cat)[0] for cat, req in items]
    engines = {ws.config.backend: make_chat_model(ws)}
    peer_name = None
    if vs:
        peer, peer_name = peer_model(ws, vs, vs_model)
        engines["peer"] = peer
    for key, llm in engines.items():
        seed = {"seed": 0} if hasattr(llm, "seed") else {}
        engines[key] = llm.model_copy(update={"temperature": temperature, **seed})
    # Answer lengths in the workspace model's tokens (the peer serves the same model, so the counts compare).
    tok = getattr(getattr(engines[ws.config.backend], "runtime", None), "tokenizer", None)
    for llm in engines.values():  # warm-up (grammar compilation, first-call allocations) so no run pays it
        generate_structured(llm, convs[:1], CritiquedAnswer, retries=0)

    def one_mode(engine: str, name: str, size: int, rounds: bool) -> dict[str, Any]:
        llm = engines[engine]
        if rounds:  # the local engine's retries in rounds, as on the other backends
            llm = llm.model_copy(update={"follow_ups": False})
        attempts: list[int] = []
        hosts: dict[int, str | None] = {}
        load = _load()
        t0 = time.perf_counter()
        # As the nodes do it: every item submitted at once, at most ``size`` in flight (over all hosts).
        results = generate_structured(
            llm,
            convs,
            CritiquedAnswer,
            retries=retries,
            max_concurrency=size,
            attempts=attempts,
            hosts=hosts,
            check=meaning_check if checks else None,
        )
        dt = time.perf_counter() - t0
        ok = [r for r in results if not isinstance(r, StructuredOutputError)]
        attempts_total = sum(attempts)
        lengths = [len(tok(r.model_dump_json()).input_ids) for r in ok] if tok else []
        valid = 0
        for (cat, req), r in zip(items, results, strict=True):
            if isinstance(r, StructuredOutputError):
                continue
            pair = {**answer_fields(r), "prompt": req, "stance": kinds[cat]["stance"]}
            valid += not check_pair(pair, const)
        return {
            "engine": engine if engine != "peer" else "vs",
            "mode": name,
            "concurrency": size,
            "pairs": len(ok),
            "seconds": dt,
            "pairs_per_min": len(ok) / dt * 60,
            "answer_tokens_per_s": sum(lengths) / dt if lengths else None,
            "retry_rate": sum(a > 1 for a in attempts) / len(attempts),
            "attempts": attempts_total,  # answers written, retries included
            "answers_per_min": attempts_total / dt * 60,
            "invalid_rate": (len(results) - len(ok)) / len(results),
            "rule_pass_rate": valid / len(results),
            "answer_tokens_mean": sum(lengths) / len(lengths) if lengths else None,
            "answer_tokens_max": max(lengths) if lengths else None,
            # answers per server (ollama/openai; empty on the local backend): how the work was spread
            "hosts": dict(Counter(h for h in hosts.values() if h)),
            "load_average": load,
        }

    batched = "batched" if ws.config.backend == "local" else "concurrent"
    in_rounds = f"{batched}, retry rounds"
    modes = [("sequential", 1, False)] * sequential + [(batched, batch, False)]
    if checks and hasattr(engines[ws.config.backend], "follow_ups"):
        modes.append((in_rounds, batch, True))
    best: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, str]] = []
    for _ in range(repeats):
        for mode, size, rounds in modes:
            for engine in engines:  # interleaved: the workspace's engine, then the peer, in every mode
                if engine == "peer" and rounds:
                    continue  # a server's retries are always in rounds: that is the peer's batched row
                r = one_mode(engine, mode, size, rounds)
                key = (engine, mode)
                runs = [*best.get(key, {}).get("runs", []), round(r["pairs_per_min"], 2)]
                if key not in best or r["pairs_per_min"] > best[key]["pairs_per_min"]:
                    best[key] = r
                best[key]["runs"] = runs
                if key not in order:
                    order.append(key)
    rows = [best[k] for k in order]
    local = ws.config.backend
    seq, con = best.get((local, "sequential")), best[(local, batched)]
    out = {
        "backend": local,
        "model": ws.config.chat_model,
        "hosts": [{"url": h.url, "concurrency": h.concurrency} for h in ws.config.hosts()],
        "n": n,
        "repeats": repeats,
        "runs": rows,
        "ratio": (con["pairs_per_min"] / seq["pairs_per_min"] if seq["pairs_per_min"] else float("nan"))
        if seq
        else None,
    }
    if (local, in_rounds) in best:  # the same work's time, retries in rounds / in the batch
        slow = best[(local, in_rounds)]["answers_per_min"]
        out["retries_in_batch_speedup"] = con["answers_per_min"] / slow if slow else float("nan")
    if vs:
        out["vs"] = {
            "url": vs,
            "model": peer_name,
            "sampling": {**PEER_SAMPLING, **ws.config.openai.extra_body},
            # the workspace's engine / the peer, per mode: above 1, the workspace's engine is faster
            "ratio": {
                mode: best[(local, mode)]["pairs_per_min"] / best[("peer", mode)]["pairs_per_min"]
                if best[("peer", mode)]["pairs_per_min"]
                else float("nan")
                for mode in [m for m, _, _ in modes if (local, m) in best and ("peer", m) in best]
            },
        }
    return out


# -- matrix products: what one decode step's weights cost in each number format --


def int8_weight_only(rows: int, inner: int, outer: int, repeats: int) -> float | None:
    """The fastest of ``repeats`` weight-only int8 products (int8 weights with a float32 scale per output channel,
    float32 activations: torch's own ``_weight_int8pack_mm``, the CPU kernel torchao's int8 weight-only
    quantization calls); None where this torch build has no such kernel."""
    import torch

    op = getattr(torch, "_weight_int8pack_mm", None)
    if op is None:
        return None
    w = torch.full((outer, inner), 3, dtype=torch.int8)
    scales = torch.full((outer,), 0.01)
    x = torch.full((rows, inner), 0.5)
    try:
        op(x, w, scales)
    except (RuntimeError, NotImplementedError):
        return None
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        op(x, w, scales)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_benchmark(ws: Workspace, rows: list[int], repeats: int = 5) -> dict[str, Any]:
    """Milliseconds of all the matrix products of one forward pass of the workspace's model (its linear layers, from
    its ``config.json``), at each number of ``rows`` (sequences in a decode step), in float32, bf16 and weight-only
    int8: the share of a decode step that a number format could save. Each product is timed alone, the formats
    alternating, on the threads this process uses."""
    import torch

    from luthitune.backends import local_model_dir
    from luthitune.compute import Machine, native_bf16, shape_of_dir

    machine = Machine()
    shape = shape_of_dir(local_model_dir(ws), rows=tuple(rows))
    out = []
    for r in shape.rows:
        total: dict[str, float | None] = {"fp32": 0.0, "bf16": 0.0, "int8": 0.0}
        for inner, outer, count in shape.layers:
            best: dict[str, float] = {}
            for _ in range(2):  # alternate the formats, so a burst of load weighs on each alike
                for name in ("fp32", "bf16"):
                    dt = "float32" if name == "fp32" else "bfloat16"
                    s = machine.matmul_seconds(dt, r, inner, outer, repeats)
                    best[name] = min(best.get(name, s), s)
                s8 = int8_weight_only(r, inner, outer, repeats)
                if s8 is not None:
                    best["int8"] = min(best.get("int8", s8), s8)
            for name in total:
                if total[name] is not None and name in best:
                    total[name] += best[name] * count * 1e3
                elif name not in best:
                    total[name] = None
        machine.forget()
        out.append({"rows": r, **{k: (round(v, 2) if v is not None else None) for k, v in total.items()}})
    return {
        "threads": torch.get_num_threads(),
        "native_bf16": native_bf16(machine),
        "products": sum(c for *_, c in shape.layers),
        "runs": out,
    }
