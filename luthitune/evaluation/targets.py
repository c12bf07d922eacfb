"""What ``luthitune eval`` evaluates: a run's cycle (its adapter and held-out pairs) or an adapter on its own.

A run's evaluation is stored under the run and cycle, as the ``evaluate`` node stores it. An adapter trained by
``luthitune train`` outside a run is stored under ``adapter:<name>`` (cycle 0), with the held-out pairs of the
export it was trained from when its manifest names one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luthitune import constitution as C
from luthitune.config import EvaluationConfig
from luthitune.errors import NotFound
from luthitune.store import Store
from luthitune.workspace import Workspace


@dataclass
class Target:
    key: str  # run id, or adapter:<name>
    cycle: int
    adapter_name: str
    adapter_path: Path
    pairs: list[dict]
    split: str
    beta: float
    principles: list[C.P]
    constitution: dict | None
    evaluation: EvaluationConfig
    probes: dict | None = None  # the probe sets; None: the workspace's (packaged, and evaluation.probes over them)


def adapter_dir(ws: Workspace, name: str) -> Path | None:
    for candidate in (Path(name).expanduser(), ws.models_dir / "adapters" / name):
        if (candidate / "adapter_config.json").exists():
            return candidate.resolve()
    return None


def _principles(store: Store, constitution_id: str | None) -> tuple[list[C.P], dict | None]:
    row = store.get("constitution_versions", constitution_id) if constitution_id else None
    if row is None:
        return [], None
    return C.from_json(json.loads(row["principles_json"])), {
        "id": row["id"],
        "version": row["version"],
        "hash": row["hash"],
    }


def for_run(ws: Workspace, store: Store, run_id: str, cycle: int | None) -> Target:
    runs = store.rows("training_runs", run_id=run_id, status="done", adapter_path__ne=None, order_by="cycle")
    if cycle is not None:
        runs = [r for r in runs if r["cycle"] == cycle]
    if not runs:
        raise NotFound(
            f"Run {run_id} has no trained adapter{f' in cycle {cycle}' if cycle is not None else ''} to evaluate; "
            f"`luthitune status {run_id}` shows where it stands."
        )
    tr = runs[-1]
    cfg = json.loads(tr["config_json"])
    # Held-out pairs only: never the pairs the adapter was trained on.
    pairs = [p for p in (store.get("pairs", i) for i in cfg.get("held_out_ids") or []) if p]
    ctx = json.loads(store.get("runs", run_id)["config_json"]).get("context", {})
    from luthitune.training.config import merge
    from luthitune.training.hyperparameters import Hyperparameters

    beta = merge(Hyperparameters(), ctx.get("train")).dpo.beta
    manifest = _manifest(Path(tr["adapter_path"]))
    principles, const = _principles(store, (manifest.get("constitution") or {}).get("id"))
    evaluation = EvaluationConfig.model_validate({**ws.config.evaluation.model_dump(), **ctx.get("evaluation", {})})
    target = Target(
        run_id,
        tr["cycle"],
        tr["adapter_name"],
        Path(tr["adapter_path"]),
        pairs,
        "held_out",
        beta,
        principles,
        const,
        evaluation,
    )
    target.probes = ctx.get("probes")  # the sets the run fixed when it started
    return target


def _manifest(path: Path) -> dict[str, Any]:
    from luthitune.training.manifest import read

    return read(path)


def for_adapter(ws: Workspace, store: Store, path: Path) -> Target:
    from luthitune.training.dpo import load_pairs_file

    manifest = _manifest(path)
    if manifest.get("run_id") and manifest.get("cycle") is not None and store.get("runs", manifest["run_id"]):
        rows = store.rows("training_runs", run_id=manifest["run_id"], cycle=manifest["cycle"], adapter_path=str(path))
        if rows:
            return for_run(ws, store, manifest["run_id"], manifest["cycle"])
    source = Path((manifest.get("dataset") or {}).get("source") or "")
    held = source / "held_out.jsonl" if source.is_dir() else None
    pairs = load_pairs_file(held) if held and held.exists() else []
    principles, const = _principles(store, (manifest.get("constitution") or {}).get("id"))
    beta = ((manifest.get("config") or {}).get("dpo") or {}).get("beta", 0.1)
    return Target(
        f"adapter:{path.name}", 0, path.name, path, pairs, "held_out", beta, principles, const, ws.config.evaluation
    )


def resolve(ws: Workspace, store: Store, target: str | None, cycle: int | None) -> Target:
    """A run id, an adapter name (models/adapters/NAME) or folder; by default the newest run with an adapter."""
    if target is None:
        newest = store.newest_run("training_runs", status="done")
        if newest is None:
            raise NotFound("Nothing to evaluate yet: no run in this workspace has trained an adapter.")
        return for_run(ws, store, newest, cycle)
    if store.get("runs", target) is not None:
        return for_run(ws, store, target, cycle)
    path = adapter_dir(ws, target)
    if path is not None:
        return for_adapter(ws, store, path)
    known = [r["id"] for r in store.rows("runs", order_by="created_at desc")][:10]
    raise NotFound(
        f"{target!r} is neither a run nor an adapter (looked in {ws.models_dir / 'adapters'}). "
        + (f"Runs: {', '.join(known)}." if known else "There are no runs yet.")
    )


def evaluate(ws: Workspace, store: Store, t: Target, *, progress=None, judge_llm=None) -> list:
    """Run the full evaluation for ``t`` on the trained weights (local runtime, adapter switched on and off)."""
    from luthitune.backends import local_model_dir, local_runtime
    from luthitune.evaluation.suite import evaluate_adapter
    from luthitune.identity import adapter_base

    base = adapter_base(t.adapter_path)
    folder = base.get("weights_dir") or str(local_model_dir(ws, ws.config.base_model))
    rt = local_runtime(ws, folder)
    rt.load_adapter(t.adapter_path, t.adapter_name)
    return evaluate_adapter(
        store,
        rt,
        run_id=t.key,
        cycle=t.cycle,
        adapter=t.adapter_name,
        pairs=t.pairs,
        pair_split=t.split,
        beta=t.beta,
        cfg=t.evaluation,
        principles=t.principles,
        judge_llm=judge_llm,
        progress=progress,
        probe_spec=t.probes or ws.probe_sets(t.evaluation.probes),
        slots=ws.config.local_slots(),
    )
