"""From ``config/hyperparameters.yaml`` (plus a run's overrides) to TRL's ``DPOConfig`` and PEFT's ``LoraConfig``.

Every key of the original tool's file takes effect here, and so do TRL's own fields that the file adds. A run stores
the effective values (workspace file merged with its overrides) when it starts, so a resumed run trains exactly as
it would have.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luthitune.errors import ConfigError
from luthitune.training.hyperparameters import Hyperparameters

log = logging.getLogger(__name__)

# Short names used by the CLI, the demo and the UI, mapped to their place in the file.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "epochs": ("training", "num_train_epochs"),
    "num_train_epochs": ("training", "num_train_epochs"),
    "learning_rate": ("training", "learning_rate"),
    "batch_size": ("training", "batch_size"),
    "gradient_accumulation_steps": ("training", "gradient_accumulation_steps"),
    "max_steps": ("training", "max_steps"),
    "seed": ("training", "seed"),
    "save_steps": ("training", "save_steps"),
    "continue_adapter": ("training", "continue_adapter"),
    "min_pairs": ("training", "min_pairs"),
    "beta": ("dpo", "beta"),
    "loss_type": ("dpo", "loss_type"),
    "max_length": ("dpo", "max_length"),
    "precompute_ref_log_probs": ("dpo", "precompute_ref_log_probs"),
    "lora_r": ("lora", "r"),
    "lora_alpha": ("lora", "lora_alpha"),
}
SECTIONS = ("model", "lora", "training", "dpo")


def nest(overrides: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Overrides as ``{section: {key: value}}``; short names (``epochs``, ``beta``...) are placed in their section."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in SECTIONS and isinstance(value, dict):
            out.setdefault(key, {}).update({k: v for k, v in value.items() if v is not None})
        elif key in FLAT_KEYS:
            section, name = FLAT_KEYS[key]
            out.setdefault(section, {})[name] = value
        else:
            raise ConfigError(
                f"Unknown training setting {key!r}; use a section of hyperparameters.yaml "
                f"({', '.join(SECTIONS)}) or one of {', '.join(sorted(FLAT_KEYS))}."
            )
    return out


def merge(base: Hyperparameters, overrides: dict[str, Any] | None, source: str = "run settings") -> Hyperparameters:
    """``base`` with ``overrides`` applied, validated (an invalid value is an error naming the field)."""
    from pydantic import ValidationError

    data = base.model_dump()
    for section, values in nest(overrides).items():
        data[section] = {**data[section], **values}
    try:
        return Hyperparameters.model_validate(data)
    except ValidationError as exc:
        from luthitune.configfiles import format_validation_error

        raise ConfigError(format_validation_error(exc, source)) from None  # type: ignore[arg-type]


@dataclass
class Plan:
    """What one training job will do: TRL's and PEFT's configs plus the notes worth telling the user."""

    dpo: Any  # trl.DPOConfig
    lora: Any  # peft.LoraConfig
    total_steps: int
    notes: list[str] = field(default_factory=list)
    save_every_s: float | None = None  # trainer checkpoints by time (None: by step, ``dpo.save_steps``)


def total_steps(hp: Hyperparameters, n_train: int, world_size: int = 1) -> int:
    t = hp.training
    if t.max_steps > 0:
        return t.max_steps
    per_step = t.batch_size * t.gradient_accumulation_steps * world_size
    return max(1, math.ceil(math.ceil(n_train / per_step) * t.num_train_epochs))


def micro_batch(hp: Hyperparameters, device: str) -> int:
    """Pairs per forward pass: the largest divisor of ``batch_size`` not above ``micro_batch_size`` ("auto": 2 on the
    CPU, the whole batch under CUDA), so the micro-batches add up to exactly the configured batch."""
    t = hp.training
    want = t.micro_batch_size
    if want == "off" or (want == "auto" and device != "cpu"):
        return t.batch_size
    limit = 2 if want == "auto" else int(want)
    return max(d for d in range(1, t.batch_size + 1) if t.batch_size % d == 0 and d <= max(1, limit))


def gradient_checkpointing(hp: Hyperparameters, device: str, n_params: int | None) -> bool:
    setting = hp.training.gradient_checkpointing
    if setting != "auto":
        return bool(setting)
    return device.startswith("cuda") and (n_params or 0) > 1_000_000_000


def lora_config(hp: Hyperparameters):
    from peft import LoraConfig

    lo = hp.lora
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.lora_alpha,
        lora_dropout=lo.lora_dropout,
        target_modules=lo.target_modules,
        bias=lo.bias,
        task_type="CAUSAL_LM",
    )


def plan(
    hp: Hyperparameters,
    *,
    output_dir: str,
    n_train: int,
    device: str = "cpu",
    n_params: int | None = None,
    bf16: bool = False,
    world_size: int = 1,
) -> Plan:
    """TRL's ``DPOConfig`` and PEFT's ``LoraConfig`` for ``hp``, with trainer checkpoints for resume."""
    from trl import DPOConfig

    t, d = hp.training, hp.dpo
    steps = total_steps(hp, n_train, world_size)
    notes: list[str] = []
    warmup = max(t.warmup_steps, math.ceil(t.warmup_ratio * steps))
    if warmup > steps / 10:
        notes.append(
            f"warm-up is {warmup} of {steps} steps ({warmup / steps:.0%}): the learning rate stays below its "
            "set value for most of training. Lower training.warmup_steps / warmup_ratio, or add data."
        )
    max_length = min(d.max_length, hp.model.max_seq_length)
    if max_length < d.max_length:
        notes.append(f"dpo.max_length {d.max_length} is capped by model.max_seq_length {hp.model.max_seq_length}")
    checkpointing = gradient_checkpointing(hp, device, n_params)
    micro = micro_batch(hp, device)
    by_time = t.save_steps is None  # checkpoints by time (luthitune.training.dpo.TimedSaves), not every N steps
    args = DPOConfig(
        output_dir=output_dir,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=t.gradient_accumulation_steps * (t.batch_size // micro),
        warmup_steps=warmup,
        max_grad_norm=t.max_grad_norm,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler_type,
        optim=t.optim,
        seed=t.seed,
        data_seed=t.seed,
        activation_checkpointing=checkpointing,  # transformers 5 name of gradient_checkpointing
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        logging_steps=t.logging_steps,
        save_strategy="no" if by_time else "steps",
        save_steps=t.save_steps or steps,
        save_total_limit=t.save_total_limit,
        report_to=t.report_to,
        beta=d.beta,
        loss_type=[d.loss_type] if isinstance(d.loss_type, str) else list(d.loss_type),
        loss_weights=d.loss_weights,
        label_smoothing=d.label_smoothing,
        max_length=max_length,
        precompute_ref_log_probs=d.precompute_ref_log_probs,
        # None: TRL's default, the micro-batch. Larger batches were 6% faster but the full-vocabulary log-probs of
        # 8 pairs at the demo's lengths took the peak memory past 7 GB.
        precompute_ref_batch_size=d.precompute_ref_batch_size,
        use_cpu=device == "cpu",
        bf16=bf16,
        fp16=False,
        disable_tqdm=True,
        dataloader_pin_memory=device != "cpu",
        remove_unused_columns=True,
    )
    every = t.save_minutes * 60 if by_time else None
    return Plan(dpo=args, lora=lora_config(hp), total_steps=steps, notes=notes, save_every_s=every)


def check_trained_model(hp: Hyperparameters, base_model: str, source: Path | None = None) -> None:
    """A protocol run trains the workspace's ``base_model``: ``model.name`` in hyperparameters.yaml may repeat it.
    ``source`` (the file) lets the error show the one line to change."""
    from luthitune.backends.embedded import is_embedded

    name = hp.model.name
    if name is None or name == base_model or (is_embedded(name) and is_embedded(base_model)):
        return
    where, line = "config/hyperparameters.yaml", None
    if source is not None and source.is_file():
        where = str(source)
        line = _model_name_line(source.read_text(encoding="utf-8", errors="replace"))
    shown = f"line {line[0]}:\n    {line[1].strip()}\n" if line else f"model.name {name!r}\n"
    indent = re.match(r"\s*", line[1]).group(0) if line else "  "
    raise ConfigError(
        f"{where} names another model to train, in {shown}"
        f"but this workspace trains base_model {base_model!r} (luthitune.yaml): the model that was interviewed and "
        f"consented is the model trained. Change that one line to\n    {indent.strip()}name: {base_model}\n"
        "or delete it (model.name defaults to base_model). The original tool interviewed one model and trained "
        "another; to do that on purpose, train from an exported dataset with `luthitune train --base MODEL`."
    )


def _model_name_line(text: str) -> tuple[int, str] | None:
    """(line number, line) of ``name:`` inside the ``model:`` section of a hyperparameters.yaml text."""
    in_model = False
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\S", line):
            in_model = re.match(r"^model\s*:", line) is not None
        elif in_model and re.match(r"^\s+name\s*:", line):
            return n, line
    return None
