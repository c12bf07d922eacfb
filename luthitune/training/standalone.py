"""``luthitune train``: train an adapter from an exported dataset, outside a protocol run (the original Phase 3).

The data is an export folder (``data/exports/RUN-cN``: ``train.jsonl``, ``held_out.jsonl``, ``provenance.json``)
or a JSONL file of pairs. With an export folder, its provenance (run, cycle, constitution version and hash) goes
into the adapter's manifest, so the adapter stays traceable to the constitution it was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from luthitune.errors import NotFound, UsageError
from luthitune.store import Store
from luthitune.training import records
from luthitune.training.config import merge
from luthitune.training.dpo import Job, StepFn, TrainResult, load_pairs_file, safe_name
from luthitune.workspace import Workspace


def newest_export(ws: Workspace) -> Path:
    root = ws.data_dir / "exports"
    found = [p for p in root.glob("*") if (p / "train.jsonl").exists() and not p.name.startswith(".")]
    if not found:
        raise NotFound(
            f"No exported dataset in {root}. Export one with `luthitune data export`, or pass a JSONL file of "
            "prompt / chosen / rejected pairs."
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def read_data(path: Path) -> tuple[list[dict], int, dict[str, Any]]:
    """(training pairs, held-out count, provenance) from an export folder or a JSONL file."""
    if not path.exists():
        raise NotFound(f"No dataset at {path}: pass an export folder (data/exports/RUN-cN) or a JSONL file.")
    if path.is_dir():
        train_file = path / "train.jsonl"
        if not train_file.exists():
            raise NotFound(f"{path} has no train.jsonl; is it a folder written by `luthitune data export`?")
        held = path / "held_out.jsonl"
        prov = path / "provenance.json"
        provenance = json.loads(prov.read_text()) if prov.exists() else {}
        held_n = len(load_pairs_file(held)) if held.exists() else 0
        return load_pairs_file(train_file), held_n, provenance
    return load_pairs_file(path), 0, {}


def train_from_data(
    ws: Workspace,
    data: Path | None = None,
    *,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
    base_model: str | None = None,
    on_step: StepFn | None = None,
    on_event: Callable[[dict], None] | None = None,
    num_processes: int = 1,
    accelerate_config: str | None = None,
) -> TrainResult:
    from luthitune.backends import local_model_dir, local_runtime
    from luthitune.training.worker import run

    hp = merge(ws.hyperparameters(), overrides, source=str(ws.root / "config" / "hyperparameters.yaml"))
    data = data or newest_export(ws)
    pairs, held, provenance = read_data(data)
    if not pairs:
        raise UsageError(f"{data} holds no pairs to train on.")
    base = base_model or hp.model.name or ws.config.base_model
    if name is not None:
        from luthitune.names import check_name

        check_name(name, "adapter name")
    name = safe_name(name or f"{data.stem if data.is_file() else data.name}-dpo")
    out = ws.models_dir / "adapters" / name
    constitution = (provenance.get("constitution") or [None])[-1]
    job = Job(
        model_dir=str(local_model_dir(ws, base)),
        out_dir=str(out),
        pairs=pairs,
        hyperparameters=hp.model_dump(mode="json"),
        held_out=held,
        compute=ws.config.compute.model_dump(mode="json"),
        manifest={
            "base_model": base,
            "constitution": constitution,
            "run_id": provenance.get("run_id"),
            "cycle": provenance.get("cycle"),
            "dataset": {"source": str(data), "export_hash": provenance.get("dataset_hash")},
        },
    )
    store = Store(ws.db_path)
    training_id = f"train:{name}"
    records.started(
        store,
        training_id,
        run_id=provenance.get("run_id"),
        cycle=provenance.get("cycle"),
        adapter_name=name,
        dataset_hash=job.manifest["dataset"]["export_hash"],
        config_json={**job.hyperparameters, "source": str(data)},
    )
    runtime = local_runtime(ws, base) if num_processes <= 1 and not accelerate_config else None
    return records.recorded(
        store,
        training_id,
        lambda: run(
            job,
            runtime=runtime,
            on_step=records.step_recorder(store, training_id, on_step),
            on_event=on_event,
            num_processes=num_processes,
            accelerate_config=accelerate_config,
        ),
    )
