"""One evaluation: base versus adapter on the same inputs, on the same weights, stored per cycle.

1. Held-out preference pairs (scorer ``logprob``): :mod:`luthitune.evaluation.preference`.
2. Probe prompts (scorer ``rules``, and ``judge`` when enabled): :mod:`luthitune.evaluation.probes`.
3. Drift on neutral prompts (scorer ``kl``): :mod:`luthitune.evaluation.drift`.

Probe answers are stored the moment each is generated (``probe_answers``), so an evaluation killed halfway
resumes without answering again. Results go to the ``evaluations`` table, keyed by (run, cycle, model, metric):
re-running updates them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from luthitune.config import EvaluationConfig
from luthitune.evaluation import drift, probes
from luthitune.store import Store, now

Progress = Callable[[str, int, int], None]


@dataclass
class Result:
    model: str  # base | adapter
    metric: str
    value: float
    scorer: str  # logprob | rules | judge | kl
    details: dict[str, Any]


def store_results(store: Store, run_id: str, cycle: int, results: list[Result]) -> None:
    store.upsert_all(
        "evaluations",
        [
            {
                "run_id": run_id,
                "cycle": cycle,
                "model": r.model,
                "metric": r.metric,
                "value": r.value,
                "scorer": r.scorer,
                "details_json": json.dumps(r.details),
                "created_at": now(),
            }
            for r in results
        ],
        pk=("run_id", "cycle", "model", "metric"),
    )


def headline(results: list[Result]) -> dict[str, float]:
    """The numbers kept in the graph's state: everything but counts, as ``model.metric``."""
    return {
        f"{r.model}.{r.metric}": r.value
        for r in results
        if not r.metric.endswith((".n", ".judged", "n_pairs")) and r.scorer != "judge"
    }


def pair_results(runtime: Any, pairs: list[dict], adapter: str, beta: float, split: str) -> list[Result]:
    from luthitune.evaluation.preference import preference_metrics

    details = {"split": split, "pair_ids": [p.get("id") for p in pairs]}
    return [
        Result(model, f"pairs.{metric}", value, "logprob", details)
        for model, values in preference_metrics(runtime, pairs, adapter, beta).items()
        for metric, value in values.items()
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
) -> dict[str, list[dict]]:
    """Stored answers of base and adapter to every probe (generating the missing ones), by model."""
    chosen = probes.load_probes(cfg.probes_per_set)
    total, done = 2 * len(chosen), 0
    rows: dict[str, list[dict]] = {}
    for model, name in (("base", None), ("adapter", adapter)):
        have = {
            r["probe_id"]: r
            for r in store.rows("probe_answers", "run_id = ? and cycle = ? and model = ?", [run_id, cycle, model])
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

        probes.answer(runtime, todo, name, max_new_tokens=cfg.max_new_tokens, on_done=save)
        wanted = {p.id for p in chosen}
        rows[model] = [
            {
                **r,
                "set": r["probe_set"],
                "checks": json.loads(r["checks_json"]),
                "judge": json.loads(r["judge_json"]) if r.get("judge_json") else None,
            }
            for r in store.rows(
                "probe_answers", "run_id = ? and cycle = ? and model = ?", [run_id, cycle, model], order_by="probe_id"
            )
            if r["probe_id"] in wanted
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
) -> list[Result]:
    """Everything measured for one adapter against its base; stored, and returned."""
    from luthitune import constitution as C

    progress = progress or (lambda task, done, total: None)
    titles = {p.id: p.title for p in principles}
    results: list[Result] = []
    if pairs:
        progress("held-out pairs", 0, len(pairs))
        results += pair_results(runtime, pairs, adapter, beta, pair_split)
        progress("held-out pairs", len(pairs), len(pairs))
    rows = probe_answers(store, runtime, run_id, cycle, adapter, cfg, titles, progress)
    for model, model_rows in rows.items():
        ids = [r["probe_id"] for r in model_rows]
        results += [Result(model, m, v, "rules", {"probe_ids": ids}) for m, v in probes.metrics(model_rows).items()]
    if cfg.judge and judge_llm is not None:
        judge_answers(store, judge_llm, C.summary(principles), rows, progress)
        from luthitune.evaluation.judge import metrics as judge_metrics

        for model, model_rows in rows.items():
            for m, v in judge_metrics(model_rows).items():
                results.append(Result(model, m, v, "judge", {"judge": "chat model, temperature 0, adapters off"}))
    neutral = {r["probe_id"]: r for r in rows["base"] if r["set"] == "neutral"}
    if neutral:
        progress("drift", 0, len(neutral))
        kl = drift.kl_drift(
            runtime, [r["prompt"] for r in neutral.values()], [r["answer"] for r in neutral.values()], adapter
        )
        tuned = {r["probe_id"]: r["answer"] for r in rows["adapter"] if r["set"] == "neutral"}
        kl.update(drift.changed_rate({k: r["answer"] for k, r in neutral.items()}, tuned))
        results += [Result("adapter", m, v, "kl", {"probe_ids": sorted(neutral)}) for m, v in kl.items()]
        progress("drift", len(neutral), len(neutral))
    store_results(store, run_id, cycle, results)
    return results
