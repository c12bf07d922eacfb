"""The adapter's manifest (``luthitune-manifest.json``): what was trained, on what, from which data, and how.

It records the base model's identity (name, folder, source file hash), the dataset's hash and split sizes, the
constitution version and hash (from the job's ``manifest`` extras), the full effective configuration (our
hyperparameters, TRL's ``DPOConfig`` and PEFT's ``LoraConfig``), the training path and why, the final metrics,
library versions and the wall time. ``luthitune provenance`` reads it.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

from luthitune.dataset import dataset_hash
from luthitune.store import now

FORMAT = "luthitune-adapter/1"
LIBRARIES = ("luthitune", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "unsloth")
REQUIRED = (
    "format",
    "name",
    "created_at",
    "base_model",
    "training_path",
    "dataset",
    "constitution",
    "config",
    "metrics",
    "versions",
    "seconds",
)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = None
    return out


def base_identity(model_dir: Path, name: str | None) -> dict[str, Any]:
    """The trained weights' identity (:mod:`luthitune.identity`: the GGUF or blob they were dequantized from, else
    the hash of their files) and the hash of the weight files actually trained."""
    from luthitune.digests import weights_digest
    from luthitune.identity import dir_identity

    return {
        **dir_identity(model_dir, name=name, role="train"),
        "dir": str(model_dir),
        "weights_sha256": weights_digest(model_dir).removeprefix("sha256:"),
    }


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def build(job, hp, path, setup, trainer, result, tokenizer) -> dict[str, Any]:
    extra = dict(job.manifest)
    base = {**base_identity(Path(job.model_dir), extra.pop("base_model", None)), **extra.pop("base", {})}
    lora = setup.lora.to_dict() if hasattr(setup.lora, "to_dict") else {}
    lora = {k: (sorted(v) if isinstance(v, set) else v) for k, v in lora.items()}
    return {
        "format": FORMAT,
        "name": Path(job.out_dir).name,
        "created_at": now(),
        "base_model": base,
        "training_path": path.as_dict(),
        "dataset": {
            "hash": dataset_hash(job.pairs),
            "train_pairs": len(job.pairs),
            "held_out_pairs": job.held_out,
            **extra.pop("dataset", {}),
        },
        "constitution": extra.pop("constitution", None),
        "processes": processes(trainer),
        "continued_from_adapter": job.init_adapter,
        "resumed_from_step": result.resumed_from,
        "config": {
            "hyperparameters": hp.model_dump(mode="json"),
            "dpo": _jsonable(setup.dpo.to_dict()),
            "lora": _jsonable(lora),
            "total_steps": setup.total_steps,
            "notes": setup.notes,
        },
        "tokenizer": {"name_or_path": getattr(tokenizer, "name_or_path", None), "vocab_size": len(tokenizer)},
        "metrics": {"final": result.metrics, "steps": len(result.steps)},
        "versions": versions(),
        "seconds": round(result.seconds, 2),
        **extra,
    }


def processes(trainer) -> dict[str, Any]:
    """How many processes trained the adapter, and how they were joined (accelerate's distributed type)."""
    state = trainer.accelerator.state
    return {
        "world_size": trainer.args.world_size,
        "distributed_type": str(getattr(state.distributed_type, "value", state.distributed_type)),
        "backend": state.backend,
    }


def read(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / "luthitune-manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}
