"""One evaluation: base versus adapter on the same inputs, on the same weights, stored per cycle.

1. Held-out preference pairs (scorer ``logprob``): :mod:`luthitune.evaluation.preference`.
2. Probe prompts (scorer ``rules``, and ``judge`` when enabled): :mod:`luthitune.evaluation.probes`.
3. Drift on neutral prompts (scorer ``kl``): :mod:`luthitune.evaluation.drift`.

Probe answers are stored the moment each is generated (``probe_answers``), so an evaluation killed halfway
resumes without answering again. Results go to the ``evaluations`` table, keyed by (run, cycle, model, metric):
re-running replaces that cycle's rows. Every row carries its n and 95% interval, and its per-item outcomes in
``details_json`` (``items``); ``model = 'change'`` rows hold each base → adapter change with a paired interval.
Held-out pairs are never training pairs: with none, no pair metric is computed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from luthitune.config import EvaluationConfig
from luthitune.evaluation import drift, probes, stats
from luthitune.store import Store, now

Progress = Callable[[str, int, int], None]


@dataclass
class Result:
    model: str  # base | adapter | change
    metric: str
    value: float | None  # None: undefined (nothing to measure), never shown as 0
    scorer: str  # logprob | rules | judge | kl
    details: dict[str, Any]
    n: int | None = None
    lo: float | None = None  # 95% interval
    hi: float | None = None


def is_rate(metric: str) -> bool:
    return metric.endswith(("_rate", "_acc"))


# Means that cannot go below a bound: their intervals stop there.
LOWER_BOUND = {"drift.kl_mean": 0.0}


def measured(model: str, metric: str, scorer: str, items: dict[str, Any], **details: Any) -> Result:
    """A metric from its per-item outcomes: a rate with its Wilson interval, or a mean with its t interval."""
    values = list(items.values())
    if is_rate(metric):
        est = stats.rate(values)
    else:
        est = stats.mean([float(v) for v in values], lower=LOWER_BOUND.get(metric))
    return Result(model, metric, est.value, scorer, {**details, "items": items}, est.n, est.lo, est.hi)


def changes(results: list[Result]) -> list[Result]:
    """Base → adapter for every metric measured on both, on the items both answered: Newcombe's paired interval
    for a rate, a paired t interval for a mean."""
    by = {(r.model, r.metric): r for r in results}
    out = []
    for (model, metric), b in by.items():
        a = by.get(("adapter", metric))
        if model != "base" or a is None or "items" not in b.details or "items" not in a.details:
            continue
        ids = [i for i in b.details["items"] if i in a.details["items"]]
        base, tuned = [b.details["items"][i] for i in ids], [a.details["items"][i] for i in ids]
        if is_rate(metric):
            est, test = stats.paired_rate_change(base, tuned), "Newcombe paired difference of proportions"
        else:
            est, test = stats.paired_mean_change(base, tuned), "paired t"
        out.append(
            Result("change", metric, est.value, b.scorer, {"test": test, "reads": est.reads()}, est.n, est.lo, est.hi)
        )
    return out


def store_results(store: Store, run_id: str, cycle: int, results: list[Result]) -> None:
    """Replace this cycle's measurements with ``results``."""
    rows = [
        {
            "run_id": run_id,
            "cycle": cycle,
            "model": r.model,
            "metric": r.metric,
            "value": r.value,
            "scorer": r.scorer,
            "details_json": json.dumps(r.details),
            "n": r.n,
            "lo": r.lo,
            "hi": r.hi,
            "created_at": now(),
        }
        for r in results
    ]
    store.replace("evaluations", rows, pk=("run_id", "cycle", "model", "metric"), run_id=run_id, cycle=cycle)


def headline(results: list[Result]) -> dict[str, float]:
    """The numbers kept in the graph's state, as ``model.metric`` (measured values only, not the judge's)."""
    return {
        f"{r.model}.{r.metric}": r.value
        for r in results
        if r.model != "change" and r.value is not None and r.scorer != "judge"
    }


def pair_results(runtime: Any, pairs: list[dict], adapter: str, beta: float, split: str) -> list[Result]:
    from luthitune.evaluation.preference import pair_logps, pair_outcomes

    if not pairs:
        return []
    ids = [str(p.get("id")) for p in pairs]
    return [
        measured(model, f"pairs.{metric}", "logprob", dict(zip(ids, values, strict=True)), split=split)
        for model, per in pair_outcomes(pair_logps(runtime, pairs, adapter), beta).items()
        for metric, values in per.items()
    ]


def _probe_row_id(run_id: str, cycle: int, model: str, probe_id: str) -> str:
    return f"{run_id}:c{cycle}:{model}:{probe_id}"


def probe_answers(
    store: Store,
    runtime: Any,
    run_id: str,
    cycle: int,
    adapter: str,
    cfg: EvaluationConfig,
    titles: dict[str, str],
    progress: Progress,
    spec: dict[str, dict] | None = None,
    slots: int | None = None,
) -> dict[str, list[dict]]:
    """Stored answers of base and adapter to every probe of ``spec`` (default: the packaged sets), generating the
    missing ones, by model. A stored answer counts only for the same prompt (a probe file may reuse an id)."""
    chosen = probes.load_probes(cfg.probes_per_set, spec=spec)
    prompt_of = {p.id: p.prompt for p in chosen}
    total, done = 2 * len(chosen), 0
    rows: dict[str, list[dict]] = {}
    for model, name in (("base", None), ("adapter", adapter)):
        have = {
            r["probe_id"]: r
            for r in store.rows("probe_answers", run_id=run_id, cycle=cycle, model=model)
            if r["prompt"] == prompt_of.get(r["probe_id"])
        }
        todo = [p for p in chosen if p.id not in have]
        done += len(chosen) - len(todo)
        progress("probes", done, total)

        def save(p: probes.Probe, text: str, model: str = model) -> None:
            nonlocal done
            row = {
                "id": _probe_row_id(run_id, cycle, model, p.id),
                "run_id": run_id,
                "cycle": cycle,
                "model": model,
                "probe_id": p.id,
                "probe_set": p.set,
                "prompt": p.prompt,
                "answer": text,
                "checks_json": json.dumps(probes.checks(text, titles)),
                "created_at": now(),
            }
            store.upsert("probe_answers", row)
            done += 1
            progress("probes", done, total)

        probes.answer(runtime, todo, name, max_new_tokens=cfg.max_new_tokens, slots=slots, on_done=save)
        wanted = {p.id for p in chosen}
        rows[model] = [
            {
                **r,
                "set": r["probe_set"],
                "checks": json.loads(r["checks_json"]),
                "judge": json.loads(r["judge_json"]) if r.get("judge_json") else None,
            }
            for r in store.rows("probe_answers", run_id=run_id, cycle=cycle, model=model, order_by="probe_id")
            if r["probe_id"] in wanted and r["prompt"] == prompt_of[r["probe_id"]]
        ]
    return rows


def judge_answers(store: Store, llm: Any, principles: str, rows: dict[str, list[dict]], progress: Progress) -> None:
    """Ask the judge about every answer that has no verdict yet; verdicts are stored with the answers."""
    from luthitune.evaluation.judge import judge

    todo = [r for model_rows in rows.values() for r in model_rows if not r.get("judge")]
    if not todo:
        return
    done = 0

    def record(i: int, verdict: dict | None) -> None:
        nonlocal done
        done += 1
        todo[i]["judge"] = verdict
        if verdict is not None:
            store.upsert("probe_answers", {"id": todo[i]["id"], "judge_json": json.dumps(verdict)})
        progress("judge", done, len(todo))

    judge(llm, principles, [(r["prompt"], r["answer"]) for r in todo], on_result=record)


def evaluate_adapter(
    store: Store,
    runtime: Any,
    *,
    run_id: str,
    cycle: int,
    adapter: str,
    pairs: list[dict],
    pair_split: str,
    beta: float,
    cfg: EvaluationConfig,
    principles: list[Any],
    judge_llm: Any = None,
    progress: Progress | None = None,
    probe_spec: dict[str, dict] | None = None,
    slots: int | None = None,
) -> list[Result]:
    """Everything measured for one adapter against its base; stored, and returned. ``probe_spec``: the probe sets
    (default: the packaged ones); ``slots``: probe answers generated at once (:meth:`Config.local_slots`)."""
    from luthitune import constitution as C

    progress = progress or (lambda task, done, total: None)
    titles = {p.id: p.title for p in principles}
    results: list[Result] = []
    if pairs:  # held-out pairs only: with none there is no held-out metric
        progress("held-out pairs", 0, len(pairs))
        results += pair_results(runtime, pairs, adapter, beta, pair_split)
        progress("held-out pairs", len(pairs), len(pairs))
    rows = probe_answers(store, runtime, run_id, cycle, adapter, cfg, titles, progress, probe_spec, slots)
    kinds = {name: s["expect"] for name, s in (probe_spec or probes.packaged_sets()).items()}
    for model, model_rows in rows.items():
        results += [measured(model, m, "rules", items) for m, items in probes.outcomes(model_rows, kinds).items()]
    if judge_llm is not None:
        judge_answers(store, judge_llm, C.summary(principles), rows, progress)
        from luthitune.evaluation.judge import outcomes as judge_outcomes

        for model, model_rows in rows.items():
            for m, items in judge_outcomes(model_rows, kinds).items():
                results.append(measured(model, m, "judge", items, judge=cfg.judge_model or "the run's chat model"))
    neutral = {r["probe_id"]: r for r in rows["base"] if kinds.get(r["set"]) == "drift"}
    if neutral:
        progress("drift", 0, len(neutral))
        kl = drift.kl_per_prompt(
            runtime, [r["prompt"] for r in neutral.values()], [r["answer"] for r in neutral.values()], adapter
        )
        ids = list(neutral)
        results.append(measured("adapter", "drift.kl_mean", "kl", dict(zip(ids, kl, strict=True))))
        results.append(
            Result("adapter", "drift.kl_max", max(kl), "kl", {"items": dict(zip(ids, kl, strict=True))}, len(kl))
        )
        tuned = {r["probe_id"]: r["answer"] for r in rows["adapter"] if kinds.get(r["set"]) == "drift"}
        changed = {k: r["answer"].strip() != tuned[k].strip() for k, r in neutral.items() if k in tuned}
        results.append(measured("adapter", "drift.changed_rate", "kl", changed))
        progress("drift", len(neutral), len(neutral))
    results += changes(results)
    store_results(store, run_id, cycle, results)
    return results
