"""A real DPO LoRA run with TRL's ``DPOTrainer`` on the local runtime's own weights.

The reference model is the base with the adapter disabled (TRL does this when it is given a plain model
plus ``peft_config``), so no second copy of the weights is made. The trained adapter is saved with a
manifest; the runtime's model is restored to the plain base afterwards and the adapter is loaded onto
it under its name, so the same weights object serves base and adapter.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from luthitune.dataset import conversational, dataset_hash
from luthitune.errors import LuthiTuneError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """An adapter folder name that cannot escape ``models/adapters/``."""
    clean = _SAFE.sub("-", name).strip(".-")
    if not clean:
        raise LuthiTuneError(f"Adapter name {name!r} has no usable characters; use letters, digits, . _ -")
    return clean[:80]


@dataclass
class TrainResult:
    adapter_path: str
    metrics: dict[str, float]
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def train_dpo(
    runtime: Any,
    pairs: list[dict],
    out_dir: Path,
    settings: Any,
    *,
    on_step: Callable[[int, int, dict], None] | None = None,
    manifest_extra: dict | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``pairs`` (dicts with prompt / chosen / rejected) and save it to ``out_dir``."""
    import torch
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    disable_progress_bar()  # our own progress goes to the console; metrics go to the database

    if not pairs:
        raise LuthiTuneError("No kept preference pairs to train on: every pair was quarantined.")
    t0 = time.perf_counter()
    cpu = runtime.device == "cpu"
    work = out_dir.with_name(out_dir.name + ".trainer")
    args = DPOConfig(
        output_dir=str(work),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        beta=settings.beta,
        per_device_train_batch_size=settings.batch_size,
        max_length=settings.max_length,
        gradient_checkpointing=False,
        use_cpu=cpu,
        bf16=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=42,
        disable_tqdm=True,
    )
    steps: list[dict[str, Any]] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                row = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
                steps.append({"step": state.global_step, **row})
                if on_step:
                    on_step(state.global_step, state.max_steps, row)

    with runtime.lock:
        base = runtime.model
        if hasattr(base, "peft_config"):  # adapters from earlier cycles: train a fresh one on the plain base
            base = base.unload()
        runtime.model = base
        lora = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_r * 2,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        base.train()
        trainer = DPOTrainer(
            model=base,
            args=args,
            train_dataset=Dataset.from_list(conversational(pairs)),
            processing_class=runtime.tokenizer,
            peft_config=lora,
            callbacks=[Record()],
        )
        trainer.remove_callback(PrinterCallback)
        try:
            trainer.train()
            tmp = out_dir.with_name(out_dir.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            trainer.model.save_pretrained(tmp)
            runtime.tokenizer.save_pretrained(tmp)
        finally:
            runtime.model = trainer.model.unload() if hasattr(trainer.model, "unload") else base
            runtime.model.eval()
            torch.set_grad_enabled(True)
    final = {k: v for k, v in (steps[-1] if steps else {}).items() if k != "step"}
    manifest = {
        "base_model_dir": str(runtime.model_dir),
        "dataset_hash": dataset_hash(pairs),
        "pairs": len(pairs),
        "settings": asdict(settings) if hasattr(settings, "__dataclass_fields__") else dict(settings),
        "final_metrics": final,
        "seconds": round(time.perf_counter() - t0, 2),
        **(manifest_extra or {}),
    }
    (tmp / "luthitune-manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    shutil.rmtree(work, ignore_errors=True)
    name = out_dir.name  # the runtime holds no adapters here: training unloaded them all
    runtime.load_adapter(out_dir, name)
    return TrainResult(str(out_dir), final, steps, manifest["seconds"])
