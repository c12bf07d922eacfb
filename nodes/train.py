"""train_dpo: confirm (unless autopilot), then a DPO LoRA run on this cycle's kept pairs, resumable after a crash."""

from __future__ import annotations

from langgraph.runtime import Runtime

from luthitune import answers
from luthitune.dataset import dataset_hash, kept_pairs, split
from luthitune.graph.state import Context, RunState
from luthitune.nodes import services
from luthitune.training import records

SHOWN = {"loss": "loss", "margin": "rewards/margins", "acc": "rewards/accuracies"}


def job_for(rt: Runtime[Context], state: RunState, train: list[dict], held: int, name: str):
    """The training job: this run's hyperparameters, the interviewed weights, the constitution in force."""
    from luthitune.backends import local_model_dir
    from luthitune.training.dpo import Job

    ws, s, hp = services.workspace(rt), services.store(rt), rt.context.hyperparameters()
    row = s.constitutions.get(state["constitution_id"])
    previous = state.get("adapter_path") if hp.training.continue_adapter and state.get("cycle", 0) > 0 else None
    return Job(
        model_dir=str(local_model_dir(ws, ws.config.base_model)),
        out_dir=str(ws.models_dir / "adapters" / name),
        pairs=[{k: p[k] for k in ("id", "prompt", "chosen", "rejected")} for p in train],
        hyperparameters=hp.model_dump(mode="json"),
        held_out=held,
        init_adapter=previous,
        compute=ws.config.compute.model_dump(mode="json"),
        manifest={
            "run_id": state["run_id"],
            "cycle": state.get("cycle", 0),
            "base_model": ws.config.base_model,
            "constitution": {"id": row["id"], "version": row["version"], "hash": row["hash"]},
            "dataset": {"source": f"run {state['run_id']} cycle {state.get('cycle', 0)}"},
        },
    )


def run_training(rt: Runtime[Context], state: RunState, train: list[dict], held: int, name: str, training_id: str):
    s = services.store(rt)
    trainer = services.trainer(rt, default=lambda pairs, name: dpo(rt, state, pairs, held, name, training_id))
    return records.recorded(s, training_id, lambda: trainer(train, name))


def dpo(rt: Runtime[Context], state: RunState, train: list[dict], held: int, name: str, training_id: str):
    """The real trainer: DPO on the workspace's base weights, in process or in workers, each step recorded."""
    ws, s = services.workspace(rt), services.store(rt)
    from luthitune.backends import local_runtime
    from luthitune.training.worker import run

    def shown(step: int, total: int, metrics: dict) -> None:
        services.progress(rt, "training", step, total, **{k: metrics[v] for k, v in SHOWN.items() if v in metrics})

    def on_event(event: dict) -> None:
        if event.get("phase") != "training":
            services.progress(rt, event["phase"], 0, 0)

    processes = rt.context.train_processes
    # One process trains the interviewed weights in place; several train in workers, and evaluation then loads
    # the new adapter onto the weights itself.
    runtime = local_runtime(ws, ws.config.base_model) if processes <= 1 else None
    return run(
        job_for(rt, state, train, held, name),
        runtime=runtime,
        on_step=records.step_recorder(s, training_id, shown),
        on_event=on_event,
        num_processes=processes,
    )


def train_dpo(state: RunState, runtime: Runtime[Context]) -> dict:
    s, run_id, cycle = services.store(runtime), state["run_id"], state.get("cycle", 0)
    kept = kept_pairs(s, run_id, cycle)
    train, held = split(kept, runtime.context.eval_fraction)
    least = runtime.context.hyperparameters().training.min_pairs
    if len(train) < least:
        failed = s.count("scenarios", run_id=run_id, cycle=cycle, status="failed")
        quarantined = s.count("pairs", run_id=run_id, cycle=cycle, status="quarantined")
        return {
            "ended": (
                f"too few pairs to train on in cycle {cycle}: "
                if kept
                else f"no usable preference pairs in cycle {cycle}: "
            )
            + f"{len(train)} kept for training (and {len(held)} held out), fewer than "
            f"training.min_pairs = {least}; {failed} scenario(s) failed generation and "
            f"{quarantined} pair(s) were quarantined. See why with `luthitune data quarantine --run {run_id}`; "
            "start a run with more scenarios (`luthitune run --scenarios N`), or lower training.min_pairs in "
            "config/hyperparameters.yaml. Nothing was trained.",
            "ended_by": "checks",
        }
    if not runtime.context.autopilot:
        answer = services.ask(
            answers.ConfirmTraining(
                pairs=len(train),
                held_out=len(held),
                conditions=s.conditions(run_id),
                settings=runtime.context.train,
                hint="approve: DPO training starts now with these settings; reject: the run ends without training",
            )
        )
        if isinstance(answer, answers.Reject):
            return {"ended": "training declined by the facilitator", "ended_by": "facilitator"}
    from luthitune.training.dpo import safe_name

    name = safe_name(f"{run_id}-c{cycle}")
    training_id = services.key(state, "train", "")
    records.started(
        s,
        training_id,
        run_id=run_id,
        cycle=cycle,
        adapter_name=name,
        dataset_hash=dataset_hash(train),
        config_json={
            **runtime.context.train,
            "train_ids": [p["id"] for p in train],
            "held_out_ids": [p["id"] for p in held],
        },
    )
    result = run_training(runtime, state, train, len(held), name, training_id)
    return {"training_id": training_id, "adapter_path": result.adapter_path, "adapter_name": name}
