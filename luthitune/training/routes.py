"""Which training path a job takes, and why: CPU, CUDA, QLoRA (bitsandbytes) or Unsloth.

- ``cpu``: plain TRL ``DPOTrainer`` + PEFT LoRA in float32. Nothing GPU-related is imported.
- ``cuda``: the same on a CUDA device, in bf16 where the GPU supports it.
- ``qlora``: ``model.load_in_4bit`` on CUDA: the base loaded in 4-bit NF4 through bitsandbytes, LoRA on top.
- ``unsloth``: CUDA and ``unsloth`` importable (and ``model.unsloth`` not false): Unsloth's ``FastLanguageModel``.
  Unsloth patches transformers and TRL when it is imported, so this path always runs in a fresh worker process
  (:mod:`luthitune.training.worker`) that imports it first; it is never imported anywhere else.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from luthitune.errors import ConfigError
from luthitune.training.hyperparameters import Hyperparameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPath:
    kind: str  # cpu | cuda | qlora | unsloth
    reason: str
    device: str

    @property
    def in_process(self) -> bool:
        """Whether this path can train the shared in-process weights (the model that was interviewed)."""
        return self.kind in {"cpu", "cuda"}

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def select_path(hp: Hyperparameters, cuda: bool | None = None) -> TrainPath:
    """The path for ``hp`` on this machine, with the reason it was chosen (logged and kept in the manifest)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    want_unsloth = hp.model.unsloth
    if not cuda:
        why = ["no CUDA device"]
        if hp.model.load_in_4bit:
            why.append("model.load_in_4bit needs CUDA (bitsandbytes), so LoRA trains the full-precision weights")
        if want_unsloth is True:
            raise ConfigError("model.unsloth is true, but Unsloth needs a CUDA GPU and none is available here.")
        if _has("unsloth"):
            why.append("unsloth is installed but needs CUDA")
        return TrainPath("cpu", "; ".join(why) + ": plain TRL + PEFT LoRA on the CPU", "cpu")
    if want_unsloth is not False and _has("unsloth"):
        bits = " in 4-bit" if hp.model.load_in_4bit else ""
        return TrainPath("unsloth", f"CUDA and unsloth present: Unsloth FastLanguageModel{bits}", "cuda")
    if want_unsloth is True:
        raise ConfigError("model.unsloth is true, but unsloth is not installed: pip install 'luthitune[unsloth]'.")
    if hp.model.load_in_4bit:
        if not _has("bitsandbytes"):
            raise ConfigError("model.load_in_4bit needs bitsandbytes on CUDA: pip install 'luthitune[gpu]'.")
        return TrainPath("qlora", "CUDA and model.load_in_4bit: QLoRA (bitsandbytes NF4) with TRL + PEFT", "cuda")
    why = "unsloth not installed" if want_unsloth == "auto" else "model.unsloth is false"
    return TrainPath("cuda", f"CUDA, {why}: plain TRL + PEFT LoRA", "cuda")


def bf16_supported(path: TrainPath) -> bool:
    """Whether the CUDA device computes bf16 (the CPU's choice is :func:`training_precision`'s)."""
    if path.device != "cuda":
        return False
    import torch

    return bool(torch.cuda.is_bf16_supported())


@dataclass(frozen=True)
class TrainPrecision:
    """How a training job computes: the trainer's bf16 mixed precision (autocast) and the base weights' dtype."""

    bf16: bool  # DPOConfig(bf16=...): matrix products in bf16 under autocast; LoRA weights and optimizer in float32
    weights: str  # the frozen base weights: bfloat16 | float32
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"precision": "bf16" if self.bf16 else "fp32", **asdict(self)}


def training_precision(
    path: TrainPath,
    hp: Hyperparameters,
    setting: str | None = "auto",
    *,
    runtime_precision: Any = None,
    shape: Any = None,
    machine: Any = None,
) -> TrainPrecision:
    """The precision a job on ``path`` trains in, and why.

    ``training.bf16`` in hyperparameters.yaml: ``auto`` follows the precision policy (:mod:`luthitune.compute`, with
    ``setting`` from luthitune.yaml's ``compute.precision``), measured on the training step's ``shape``: on the CPU,
    float32 unless ``compute.precision`` is bf16 (:func:`luthitune.compute.for_training`: bf16 is measured, and
    recorded, but rounds LoRA's updates away), with freshly loaded base weights in that precision too; under
    CUDA, bf16 where the GPU supports it. ``true`` / ``false`` force the trainer's bf16 (freshly loaded weights then
    stay in float32, as TRL leaves a model it is given). Training the interviewed weights in place, the base weights
    are the runtime's, in its precision (``runtime_precision``). ``machine``: see :class:`luthitune.compute.Machine`.
    """
    want = hp.training.bf16
    runtime_dtype = getattr(runtime_precision, "dtype", None)
    if path.device == "cuda":
        supported = bf16_supported(path)
        if want is True and not supported:
            raise ConfigError("training.bf16 is true, but this CUDA device does not support bf16: set it to auto.")
        on = supported if want == "auto" else bool(want)
        why = "training.bf16 " + (str(want).lower() if want != "auto" else "auto")
        why += ": CUDA with bf16" if on else ": CUDA, float32" + ("" if supported else " (no bf16 on this GPU)")
        return TrainPrecision(on, runtime_dtype or ("bfloat16" if on else "float32"), why)
    if want == "auto":
        from luthitune.compute import for_training, precision_for

        chosen = for_training(precision_for(setting, device="cpu", shape=shape, machine=machine))
        weights = runtime_dtype or chosen.dtype
        note = f"; the base weights are the interviewed runtime's ({runtime_dtype})" if runtime_dtype else ""
        return TrainPrecision(chosen.bf16, weights, chosen.reason + note)
    from luthitune.compute import Machine, native_bf16

    native = not want or native_bf16(machine or Machine())
    emulated = "" if native else " (this CPU has no native bf16: emulated, slower)"
    return TrainPrecision(bool(want), runtime_dtype or "float32", f"training.bf16 {str(want).lower()}{emulated}")


def load_model(
    path: TrainPath, model_dir: Path, hp: Hyperparameters, precision: TrainPrecision | None = None
) -> tuple[Any, Any, bool]:
    """A fresh (model, tokenizer, already_peft) for paths that do not train the shared runtime's weights; the plain
    paths load the weights in ``precision.weights`` (float32 when None).

    Called after the trainer's arguments are made: they set this process's GPU (one per process under
    ``accelerate launch``) and, with DeepSpeed ZeRO-3, the config ``from_pretrained`` reads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path.kind == "unsloth":
        from unsloth import FastLanguageModel  # imported first by the worker process

        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(model_dir),
            max_seq_length=hp.model.max_seq_length,
            load_in_4bit=hp.model.load_in_4bit,
            dtype=None,
        )
        lo = hp.lora
        modules = lo.target_modules
        if modules == "all-linear":
            modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = FastLanguageModel.get_peft_model(
            model,
            r=lo.r,
            lora_alpha=lo.lora_alpha,
            lora_dropout=lo.lora_dropout,
            target_modules=modules,
            bias=lo.bias,
            use_gradient_checkpointing="unsloth" if hp.training.gradient_checkpointing is not False else False,
            random_state=hp.training.seed,
        )
        return model, tok, True
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if path.kind == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if bf16_supported(path) else torch.float16
        sharded = sharded_training()
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            # ZeRO-3 and FSDP shard the packed 4-bit weights like any other parameter: they must be stored in the
            # dtype of the rest of the model (PEFT's guidance for QLoRA with DeepSpeed ZeRO-3 and FSDP).
            bnb_4bit_quant_storage=compute if sharded else torch.uint8,
        )
        if sharded:  # placed by the trainer; prepare_model_for_kbit_training would upcast layers to float32
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=quant, dtype=compute)
            return model, tok, False
        device = {"": torch.cuda.current_device()}  # this process's GPU (set by the trainer's arguments)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=quant, device_map=device)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=hp.training.gradient_checkpointing is not False
        )
        return model, tok, False
    dtype = getattr(torch, precision.weights) if precision is not None else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    if not sharded_training():  # "cuda" is this process's GPU; sharded weights are placed by the trainer
        model = model.to(path.device)
    return model, tok, False


def sharded_training() -> bool:
    """Whether this process's weights are sharded across processes (DeepSpeed ZeRO-3 or FSDP, from the accelerate
    config). Only meaningful once the trainer's arguments exist, which is when :func:`load_model` is called."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").strip().lower() in {"1", "true", "yes"}
    return bool(fsdp or is_deepspeed_zero3_enabled())


def weights_params(model_dir: Path) -> int | None:
    """How many parameters ``model_dir``'s safetensors files hold, from their headers (nothing is loaded)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total
