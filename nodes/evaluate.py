"""evaluate: base versus adapter on held-out pairs, probe prompts and neutral prompts; stored per cycle, reported."""

from __future__ import annotations

import json
from pathlib import Path

from langgraph.runtime import Runtime

from luthitune.graph.state import Context, RunState
from luthitune.nodes import services


def measure(runtime: Runtime[Context], state: RunState, pairs: list[dict], split: str) -> list:
    """The full evaluation on the interviewed weights, base and adapter switched on the same object."""
    from luthitune.backends import local_runtime
    from luthitune.evaluation.suite import evaluate_adapter

    ws, ctx = services.workspace(runtime), runtime.context
    rt = local_runtime(ws, ws.config.base_model)
    rt.load_adapter(state["adapter_path"], state["adapter_name"])
    cfg = ctx.evaluation_config()
    from luthitune.evaluation.judge import judge_model

    judge = judge_model(
        ws, cfg, default=services.llm(runtime, temperature=0.0) if cfg.judging(ws.config.backend) else None
    )
    return evaluate_adapter(
        services.store(runtime),
        rt,
        run_id=state["run_id"],
        cycle=state.get("cycle", 0),
        adapter=state["adapter_name"],
        pairs=pairs,
        pair_split=split,
        beta=ctx.hyperparameters().dpo.beta,
        cfg=cfg,
        principles=services.principles(runtime, state),
        judge_llm=judge,
        progress=lambda task, done, total: services.progress(runtime, task, done, total),
        probe_spec=ctx.probes,
        slots=ws.config.local_slots(),
    )


def suite(runtime: Runtime[Context], state: RunState, pairs: list[dict], split: str) -> list:
    """The real evaluator: the evaluation suite on the trained weights, recording which model it measured."""
    from luthitune import identity

    results = measure(runtime, state, pairs, split)
    identity.record_use(
        services.store(runtime),
        state["run_id"],
        state.get("cycle", 0),
        "evaluate",
        identity.trained_identity(Path(state["adapter_path"])),
        model=state["adapter_name"],
    )
    return results


def evaluate(state: RunState, runtime: Runtime[Context]) -> dict:
    from luthitune.evaluation import report
    from luthitune.evaluation.suite import headline, store_results

    s, run_id, cycle = services.store(runtime), state["run_id"], state.get("cycle", 0)
    cfg = json.loads(s.get("training_runs", state["training_id"])["config_json"])
    # Held-out pairs only, never the training pairs: with none held out there is no held-out metric.
    split, pairs = "held_out", [s.get("pairs", i) for i in cfg["held_out_ids"]]
    evaluator = services.evaluator(runtime, default=lambda pairs, adapter: suite(runtime, state, pairs, split))
    results = evaluator(pairs, state["adapter_name"])
    store_results(s, run_id, cycle, results)
    row = s.constitutions.get(state["constitution_id"])
    path, _, _ = report.write(
        s,
        services.workspace(runtime).data_dir / "reports",
        run_id,
        cycle,
        runtime.context.evaluation_config().thresholds,
        adapter=state["adapter_name"],
        constitution={"version": row["version"], "hash": row["hash"]},
        held_out=len(pairs),
        trained=len(cfg["train_ids"]),
        backend=services.workspace(runtime).config.backend,
    )
    services.progress(runtime, "report", 1, 1, path=str(path))
    return {"evaluation": headline(results)}
