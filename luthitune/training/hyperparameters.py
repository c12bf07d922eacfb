"""The schema of ``config/hyperparameters.yaml``: the original tool's sections and keys (model, lora, training,
dpo), plus TRL's own fields.

A pydantic model with ``extra="forbid"``, like the workspace's configuration. YAML 1.1 reads ``5e-5`` (no dot) as a
string; the models coerce numeric strings, so ``learning_rate: 5e-5`` is the number 5e-05. The commented default
file is package data (``luthitune/defaults/hyperparameters.yaml``); :mod:`luthitune.training.config` turns these
values into TRL's and PEFT's configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from luthitune.configfiles import Strict as _Strict
from luthitune.configfiles import default_file


class HPModel(_Strict):
    # None: the workspace's base_model (the model that was interviewed). A different name here is an error in a
    # protocol run (the model that consented is the model trained); `luthitune train` accepts it.
    name: str | None = None
    max_seq_length: int = Field(2048, ge=16)
    load_in_4bit: bool = Field(False, description="QLoRA through bitsandbytes; CUDA only")
    # "auto": Unsloth's FastLanguageModel when CUDA is present and `unsloth` imports; false: plain TRL + PEFT.
    unsloth: bool | Literal["auto"] = "auto"


class HPLora(_Strict):
    r: int = Field(16, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"


class HPTraining(_Strict):
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    num_train_epochs: float = Field(3, gt=0)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    # Pairs in one forward/backward pass: batch_size is split into micro-batches whose gradients add up to the
    # same step (same loss curve). "auto": 2 on the CPU (less padding and activation memory, measured faster by
    # `luthitune bench train`), the whole batch under CUDA. off: never split.
    micro_batch_size: int | Literal["auto", "off"] = "auto"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="-1: train num_train_epochs")
    seed: int = 42
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
    ] = "linear"
    optim: str = "adamw_torch"
    # "auto": off on CPU (RAM is ample for the models trained there, and recomputing costs a third of the step),
    # on under CUDA for models over a billion parameters, where activations are what runs out.
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    group_by_length: bool = Field(True, description="Batch pairs of similar length together: less padding")
    logging_steps: int = Field(1, ge=1)
    # Trainer checkpoints, for resume after a crash: every save_steps steps when set, otherwise whenever save_minutes
    # of training have passed since the last one (a run shorter than that writes none: redoing it costs less).
    save_steps: int | None = Field(None, ge=1, description="Trainer checkpoint every N steps (None: by save_minutes)")
    save_minutes: float = Field(2.0, gt=0, description="Minutes of training between trainer checkpoints")
    # bf16 mixed precision (TRL's field). auto: compute.precision's choice in luthitune.yaml (on the CPU: bf16 where it
    # is native and measured faster, with the base weights in bf16; under CUDA: where the GPU supports it).
    bf16: bool | Literal["auto"] = "auto"
    save_total_limit: int = Field(2, ge=1)
    report_to: list[str] | str = "none"
    # Cycle 2+: start the new adapter from the previous cycle's weights (true) or from zero (false, the default:
    # each adapter then answers to one constitution version, and every cycle's reference model is the same base).
    continue_adapter: bool = False
    # A protocol run refuses to train on fewer kept pairs than this (after the held-out split): a handful of pairs
    # teaches nothing measurable and any figure from it is noise.
    min_pairs: int = Field(8, ge=1, description="Fewest kept training pairs a protocol run trains on")

    @field_validator("report_to")
    @classmethod
    def _reporters(cls, v: list[str] | str) -> list[str] | str:
        import importlib.util

        names = [v] if isinstance(v, str) else v
        for n in names:
            if n in {"none", "all"}:
                continue
            if n not in {"tensorboard", "wandb", "mlflow", "trackio", "comet_ml"}:
                raise ValueError(f"unknown reporter {n!r}; use none or tensorboard (or wandb, mlflow, trackio)")
            if importlib.util.find_spec(n) is None:
                raise ValueError(f"{n} is not installed; `pip install {n}` or set report_to: none")
        return v


DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip


class HPDpo(_Strict):
    beta: float = Field(0.1, gt=0)
    loss_type: list[str] | str = "sigmoid"
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    max_length: int = Field(512, ge=16)
    # Reference log-probs computed once before training (the base with the adapter off), so a step runs one
    # forward pass instead of two. Measured by `luthitune bench train`.
    precompute_ref_log_probs: bool = True
    precompute_ref_batch_size: int | None = Field(None, ge=1)
    # The original tool's key. TRL 1.x removed it: accepted so the original file loads, not used (see
    # MAX_PROMPT_LENGTH_NOTE), and said once when the file is read.
    max_prompt_length: int | None = Field(None, ge=1, description="Accepted from the original file; not used")

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, v: list[str] | str) -> list[str] | str:
        unknown = [n for n in ([v] if isinstance(v, str) else v) if n not in DPO_LOSSES]
        if unknown:
            raise ValueError(f"unknown loss {unknown}; TRL's DPO losses: {', '.join(DPO_LOSSES)}")
        return v

    @model_validator(mode="after")
    def _weights(self) -> HPDpo:
        n = 1 if isinstance(self.loss_type, str) else len(self.loss_type)
        if self.loss_weights is not None and len(self.loss_weights) != n:
            raise ValueError(f"loss_weights has {len(self.loss_weights)} values for {n} loss type(s)")
        return self


class Hyperparameters(_Strict):
    model: HPModel = HPModel()
    lora: HPLora = HPLora()
    training: HPTraining = HPTraining()
    dpo: HPDpo = HPDpo()


MAX_PROMPT_LENGTH_NOTE = (
    "dpo.max_prompt_length ({value}) in {path} is accepted but not used: TRL 1.x removed the option. A pair is cut "
    "as a whole at dpo.max_length ({max_length} tokens), keeping its start, so the prompt stays whole and the "
    "answers are shortened; the protocol's prompts (one scenario request) are far shorter. Set dpo.max_length to "
    "bound a pair, and delete max_prompt_length to silence this note."
)
_noted: set[tuple[str, int]] = set()


def note_ignored_keys(hp: Hyperparameters, path: Path) -> list[str]:
    """The original tool's keys that load but do not act, each said once per file and value as a warning."""
    import logging

    notes = []
    if hp.dpo.max_prompt_length is not None:
        notes.append(
            MAX_PROMPT_LENGTH_NOTE.format(value=hp.dpo.max_prompt_length, path=path, max_length=hp.dpo.max_length)
        )
        if (str(path), hp.dpo.max_prompt_length) not in _noted:
            _noted.add((str(path), hp.dpo.max_prompt_length))
            logging.getLogger("luthitune").warning(notes[-1])
    return notes


def default_hyperparameters_yaml() -> str:
    """The commented default ``config/hyperparameters.yaml`` written by ``luthitune init``."""
    return default_file("hyperparameters.yaml")
