"""A training job's rows in the workbench database: ``training_runs`` (one per job, keyed) and ``training_steps``
(one per logged step, keyed by step, so a resumed job overwrites the steps it redoes instead of duplicating them).
The ``train_dpo`` node and ``luthitune train`` keep their records the same way through these functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from luthitune.cancel import Cancelled
from luthitune.store import Store, now
from luthitune.training.dpo import StepFn, TrainResult


def started(store: Store, training_id: str, **fields: Any) -> None:
    store.upsert("training_runs", {"id": training_id, "status": "running", "started_at": now(), **fields})


def step_recorder(store: Store, training_id: str, then: StepFn | None = None) -> StepFn:
    def record(step: int, total: int, metrics: dict) -> None:
        store.upsert(
            "training_steps",
            {"training_id": training_id, "step": step, "metrics_json": metrics, "created_at": now()},
            pk=("training_id", "step"),
        )
        if then:
            then(step, total, metrics)

    return record


def finished(store: Store, training_id: str, result: TrainResult) -> None:
    store.upsert(
        "training_runs",
        {
            "id": training_id,
            "status": "done",
            "adapter_path": result.adapter_path,
            "metrics_json": json.dumps(result.metrics),
            "finished_at": now(),
        },
    )


def recorded(store: Store, training_id: str, job: Callable[[], TrainResult]) -> TrainResult:
    """Run ``job``; the row says ``done``, or ``interrupted`` / ``failed`` (its trainer checkpoints stay, so
    running it again resumes)."""
    try:
        result = job()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt | Cancelled) else "failed"
        store.upsert("training_runs", {"id": training_id, "status": status, "finished_at": now()})
        raise
    finished(store, training_id, result)
    return result
