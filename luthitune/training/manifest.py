"""The adapter's manifest (``luthitune-manifest.json``): what was trained, on what, from which data, and how.

It records the base model's identity (name, folder, source file hash), the dataset's hash and split sizes, the
constitution version and hash (from the job's ``manifest`` extras), the full effective configuration (our
hyperparameters, TRL's ``DPOConfig`` and PEFT's ``LoraConfig``), the training path and why, the final metrics,
library versions and the wall time. ``luthitune provenance`` reads it.
"""

from __future__ import annotations

import hashlib
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


def weights_hash(model_dir: Path) -> str:
    """SHA-256 over the weight files of a transformers folder (names and contents, in name order), cached beside
    them while their sizes and modification times stay the same."""
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = model_dir / ".luthitune-weights-sha256.json"
    if cache.exists():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("files") == stamp:
                return saved["sha256"]
        except (ValueError, KeyError):
            pass
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    try:
        cache.write_text(json.dumps({"files": stamp, "sha256": h.hexdigest()}))
    except OSError:  # a read-only model folder: hash again next time
        pass
    return h.hexdigest()


def base_identity(model_dir: Path) -> dict[str, Any]:
    """Where the base weights came from: the source record written when they were cached (GGUF file and hash,
    quantization) when there is one, and always the hash of the weight files trained."""
    source = model_dir / "luthitune-source.json"
    info = json.loads(source.read_text()) if source.exists() else {}
    return {"dir": str(model_dir), "source": info, "weights_sha256": weights_hash(model_dir)}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def build(job, hp, path, setup, trainer, result, tokenizer) -> dict[str, Any]:
    extra = dict(job.manifest)
    base = {"name": extra.pop("base_model", None), **base_identity(Path(job.model_dir)), **extra.pop("base", {})}
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


def read(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / "luthitune-manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}
