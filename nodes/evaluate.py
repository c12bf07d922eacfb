"""evaluate: base versus adapter on held-out preference pairs, stored per cycle."""

from __future__ import annotations

import json

from langgraph.runtime import Runtime

from luthitune.graph.state import Context, RunState
from luthitune.nodes import common
from luthitune.store import now


def evaluate(state: RunState, runtime: Runtime[Context]) -> dict:
    s, run_id, cycle = common.store(runtime), state["run_id"], state.get("cycle", 0)
    cfg = json.loads(s.get("training_runs", state["training_id"])["config_json"])
    ids = cfg["held_out_ids"] or cfg["train_ids"]  # with one pair there is nothing held out: say so below
    split = "held_out" if cfg["held_out_ids"] else "train"
    pairs = [s.get("pairs", i) for i in ids]
    if runtime.context.evaluator is not None:
        results = runtime.context.evaluator(pairs, state["adapter_name"])
    else:
        from luthitune.backends import local_runtime
        from luthitune.evaluation.preference import preference_metrics

        ws = common.workspace(runtime)
        rt = local_runtime(ws, ws.config.base_model)
        rt.load_adapter(state["adapter_path"], state["adapter_name"])
        results = preference_metrics(rt, pairs, state["adapter_name"], runtime.context.hyperparameters().dpo.beta)
    rows = [
        {
            "run_id": run_id,
            "cycle": cycle,
            "model": model,
            "metric": metric,
            "value": value,
            "scorer": "logprob",
            "details_json": {"split": split, "pair_ids": ids},
            "created_at": now(),
        }
        for model, metrics in results.items()
        for metric, value in metrics.items()
    ]
    s.upsert_all("evaluations", rows, pk=("run_id", "cycle", "model", "metric"))
    headline = {f"{m}.{k}": v for m, d in results.items() for k, v in d.items() if k != "n_pairs"}
    return {"evaluation": headline}
