"""A DPO LoRA run with TRL's ``DPOTrainer``: resumable, on the model that was interviewed, with a manifest.

On the CPU and plain-CUDA paths the job trains the local runtime's own weights object (the model that was
interviewed and consented), wrapped by TRL with the job's ``LoraConfig``. The reference model is that base with
the adapter disabled, so no second copy of the weights exists. Afterwards the LoRA layers are removed again and
the saved adapter is loaded onto the same weights under its name.

Resume: trainer checkpoints go to ``<adapter>.trainer/`` with a key of the dataset and the effective config. When
the job re-runs (the node after a crash) with the same key, training continues from the newest checkpoint, and the
step count continues; a changed dataset or config starts over. The finished adapter is written under a temporary
name and renamed into place, so a killed job never leaves a half-written adapter.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luthitune.compute import TRAINING_ROWS, apply_threads, shape_of_dir
from luthitune.dataset import conversational, dataset_hash
from luthitune.errors import LuthiTuneError
from luthitune.portable import portable_adapter
from luthitune.store import sha256
from luthitune.training import manifest as M
from luthitune.training.checkpoints import COMPLETE, disk_full, prepare_workdir, timed_saves
from luthitune.training.config import plan
from luthitune.training.hyperparameters import Hyperparameters
from luthitune.training.routes import TrainPath, load_model, select_path, training_precision, weights_params

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MANIFEST = "luthitune-manifest.json"

StepFn = Callable[[int, int, dict], None]


def safe_name(name: str) -> str:
    """An adapter folder name that cannot escape ``models/adapters/``."""
    clean = _SAFE.sub("-", name).strip(".-")
    if not clean:
        raise LuthiTuneError(f"Adapter name {name!r} has no usable characters; use letters, digits, . _ -")
    return clean[:80]


@dataclass
class Job:
    """Everything one training needs; JSON-serialisable, so a worker process can run it."""

    model_dir: str
    out_dir: str
    pairs: list[dict]  # prompt / chosen / rejected (strings)
    hyperparameters: dict[str, Any]
    held_out: int = 0
    init_adapter: str | None = None  # continue from this adapter's weights (training.continue_adapter)
    manifest: dict[str, Any] = field(default_factory=dict)  # run, cycle, constitution, base identity...
    compute: dict[str, Any] = field(default_factory=dict)  # luthitune.yaml's compute: threads, precision

    @property
    def hp(self) -> Hyperparameters:
        return Hyperparameters.model_validate(self.hyperparameters)

    def key(self, path: TrainPath, world_size: int = 1, precision: str = "fp32") -> str:
        """What must match for a trainer checkpoint to be resumed: the data, the config, the path, the number of
        processes (it sets the effective batch, hence what a step is) and the precision (resumed in another, the
        remaining steps would not compute what the first ones did)."""
        parts: list[Any] = [dataset_hash(self.pairs), self.hyperparameters, path.kind, self.init_adapter]
        parts.append(self.model_dir)
        if world_size > 1:
            parts.append({"world_size": world_size})
        if precision != "fp32":
            parts.append({"precision": precision})
        return sha256(json.dumps(parts, sort_keys=True))


@dataclass
class TrainResult:
    adapter_path: str
    metrics: dict[str, float]
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    checkpoints: int = 0  # trainer checkpoints this process wrote


def _trainer_class():
    """TRL's DPOTrainer, with length-grouped batches computed from its tokenized columns.

    transformers' ``group_by_length`` sampler looks for ``input_ids``; a preference dataset has ``prompt_ids``,
    ``chosen_ids`` and ``rejected_ids`` instead, and a batch is as long as its longest prompt plus completion.
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import DPOTrainer

    class LengthGroupedDPOTrainer(DPOTrainer):
        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            cols = getattr(ds, "column_names", None) or []
            if self.args.train_sampling_strategy != "group_by_length" or "chosen_ids" not in cols:
                return super()._get_train_sampler(train_dataset)
            lengths = [
                len(p) + max(len(c), len(r))
                for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)
            ]
            size = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(size, dataset=ds, lengths=lengths)

    return LengthGroupedDPOTrainer


def _sorted_dataset(pairs: list[dict], shared_dir: Path | None = None, write: bool = True):
    """The dataset ordered by length, so reference log-probs are precomputed in evenly padded batches (the
    training sampler shuffles or groups it again).

    With several processes it lives on disk in ``shared_dir`` (written by the main process, ``write``), because
    ``datasets`` keeps its derived files (TRL's tokenized columns and precomputed reference log-probs) beside the
    dataset's own: an in-memory dataset would put them in a private temporary folder per process, where the other
    processes cannot find the reference log-probs the main process computed.
    """
    from datasets import Dataset, load_from_disk

    if shared_dir is not None and not write:
        return load_from_disk(str(shared_dir))
    rows = conversational(pairs)
    size = [len(p["prompt"]) + max(len(p["chosen"]), len(p["rejected"])) for p in pairs]
    order = sorted(range(len(rows)), key=lambda i: size[i])
    ds = Dataset.from_list([rows[i] for i in order])
    if shared_dir is None:
        return ds
    shutil.rmtree(shared_dir, ignore_errors=True)
    ds.save_to_disk(str(shared_dir))
    return load_from_disk(str(shared_dir))


def world_size() -> int:
    """How many processes train this job (1 unless started by ``accelerate launch`` / torchrun / MPI)."""
    from accelerate.utils import get_int_from_env

    return max(1, get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1))


def train(
    job: Job,
    *,
    runtime: Any = None,
    path: TrainPath | None = None,
    on_step: StepFn | None = None,
    on_event: Callable[[dict], None] | None = None,
    is_main: bool = True,
) -> TrainResult:
    """Train ``job``; with ``runtime`` (a :class:`~luthitune.backends.local.LocalRuntime`) on its own weights.

    ``on_step(step, total, metrics)`` is called after every logged step; ``on_event`` with phase changes
    (``{"phase": "reference log-probs" | "training" | "saving"}``). In a multi-process (accelerate) job every process
    calls this; only the main one (rank 0: ``is_main``, checked against the trainer's own rank) prepares the
    checkpoint folder, reports steps and events, and writes the adapter and its manifest; the others train and wait.
    """
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    if not job.pairs:
        raise LuthiTuneError("No kept preference pairs to train on: every pair was quarantined.")
    t0 = time.perf_counter()
    hp = job.hp
    path = path or select_path(hp)
    log.info("Training path: %s (%s)", path.kind, path.reason)
    out_dir = Path(job.out_dir)
    work = out_dir.with_name(out_dir.name + ".trainer")
    world = world_size()

    shared = runtime is not None and path.in_process
    lock = runtime.lock if shared else _NoLock()
    with lock:
        threads = apply_threads(job.compute.get("threads", "auto"))
        if shared:
            model, tok, already_peft = _plain_base(runtime), runtime.tokenizer, False
            n_params = sum(p.numel() for p in model.parameters())
        else:  # the weights load once the trainer's arguments exist (below)
            n_params = weights_params(Path(job.model_dir))
        precision = training_precision(
            path,
            hp,
            job.compute.get("precision", "auto"),
            runtime_precision=getattr(runtime, "precision", None) if shared else None,
            shape=shape_of_dir(job.model_dir, TRAINING_ROWS),
        )
        log.info("Training precision: %s (%s)", "bf16" if precision.bf16 else "fp32", precision.reason)
        setup = plan(
            hp,
            output_dir=str(work),
            n_train=len(job.pairs),
            device=path.device,
            n_params=n_params,
            bf16=precision.bf16,
            world_size=world,
        )
        if setup.dpo.world_size != world:
            raise LuthiTuneError(
                f"This job was started as {world} processes, but the trainer set up {setup.dpo.world_size}: "
                "check the accelerate config file (num_processes, distributed_type)."
            )
        if world > 1:  # the trainer's rank decides who writes, whatever the launcher's variables said
            is_main = setup.dpo.process_index == 0
        if not shared:  # now each process loads onto its own GPU, and DeepSpeed ZeRO-3 / FSDP see their config
            model, tok, already_peft = load_model(path, Path(job.model_dir), hp, precision)
        tok_side = tok.padding_side
        if job.init_adapter and not already_peft:  # continue the previous cycle's adapter (a copy of its weights)
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, job.init_adapter, is_trainable=True)
            already_peft = True
        event = on_event if on_event is not None and is_main else (lambda e: None)
        for note in setup.notes if is_main else []:
            log.warning("Training: %s", note)
        # The main process cleans or keeps the checkpoint folder and writes the shared dataset; the others wait,
        # then resume from the checkpoint the main process chose.
        with setup.dpo.main_process_first(local=False, desc="the trainer's folder"):
            key = job.key(path, world, "bf16" if precision.bf16 else "fp32")
            resume = prepare_workdir(work, key) if is_main else None
            data = _sorted_dataset(job.pairs, work / "dataset" if world > 1 else None, write=is_main)
        if world > 1:
            resume = _from_main(resume)
        event({"phase": "reference log-probs" if hp.dpo.precompute_ref_log_probs else "preparing"})
        trainer, recorder = _make_trainer(model, tok, data, setup, None if already_peft else setup.lora, on_step)
        event({"phase": "training", "total": setup.total_steps})
        try:
            model.train()
            out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            trainer.accelerator.wait_for_everyone()  # every process has written its part of the last checkpoint
            event({"phase": "saving"})
            tmp = out_dir.with_name(out_dir.name + ".partial")
            _save(trainer, tok, tmp, is_main)
        except Exception as exc:
            full = disk_full(exc, work)
            if full is None:
                raise
            raise full from exc
        finally:
            tok.padding_side = tok_side
            if shared:
                runtime.model = trained_base(trainer.model)
                runtime.model.eval()
            import torch

            torch.set_grad_enabled(True)
    metrics = {**recorder.final(), **_throughput(trainer, out.metrics)}
    result = TrainResult(str(out_dir), metrics, recorder.steps, time.perf_counter() - t0, _step_of(resume))
    result.checkpoints = recorder.saves
    if not is_main:
        return result
    result.manifest = M.build(job, hp, path, setup, trainer, result, tok)
    result.manifest["compute"] = {"precision": precision.as_dict(), "threads": threads.as_dict()}
    (tmp / MANIFEST).write_text(json.dumps(result.manifest, indent=2, default=str))
    portable_adapter(tmp, result.manifest["base_model"])  # not the local cache path PEFT wrote
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    shutil.rmtree(work, ignore_errors=True)
    if shared:
        runtime.load_adapter(out_dir, out_dir.name)
    return result


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _from_main(ckpt: Path | None) -> Path | None:
    """The main process's ``ckpt`` on every process (all of them must resume from the same checkpoint)."""
    from accelerate.utils import broadcast_object_list

    box = [str(ckpt) if ckpt else None]
    broadcast_object_list(box, from_process=0)
    return Path(box[0]) if box[0] else None


def _save(trainer, tok, tmp: Path, is_main: bool) -> None:
    """The adapter and tokenizer into ``tmp``, written by the main process.

    Where the weights are sharded across processes (DeepSpeed ZeRO-3, FSDP), ``Trainer.save_model`` gathers the
    adapter from all of them, so every process takes part; it writes on the main process only. With one process or
    DDP, every process holds the whole adapter and the main one saves it.
    """
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(tmp))
        if is_main:
            (tmp / "training_args.bin").unlink(missing_ok=True)
    elif is_main:
        trainer.model.save_pretrained(tmp)
    if is_main:
        tok.save_pretrained(tmp)


def _step_of(ckpt: Path | None) -> int | None:
    return int(ckpt.name.split("-")[-1]) if ckpt else None


def _plain_base(runtime: Any):
    """The runtime's weights with every adapter removed: a new adapter never stacks on an earlier one."""
    model = runtime.model
    if hasattr(model, "peft_config"):
        model = model.unload()
        runtime.model = model
        runtime.active_adapter = None
    return model


def trained_base(model: Any):
    """The base weights out of a trained PEFT model (LoRA layers removed, base weights untouched)."""
    return model.unload() if hasattr(model, "unload") else model


class _Recorder:
    """Collects every logged step (loss, reward margin and accuracy...) and passes it on."""

    def __init__(self, on_step: StepFn | None):
        self.steps: list[dict[str, Any]] = []
        self.on_step = on_step
        self.saves = 0

    def callback(self):
        from transformers import TrainerCallback

        rec = self

        class Record(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if not logs or "loss" not in logs or not state.is_world_process_zero:
                    return
                row = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
                rec.steps.append({"step": state.global_step, **row})
                if rec.on_step:
                    rec.on_step(state.global_step, state.max_steps, row)

            def on_save(self, args, state, control, **kw):
                # After the trainer wrote the whole checkpoint (weights, optimizer, RNG, trainer_state.json): mark
                # it complete, atomically, so resume never picks one a full disk or a kill cut short.
                if not state.is_world_process_zero:
                    return
                rec.saves += 1
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    tmp = ckpt / f".{COMPLETE}.tmp"
                    tmp.write_text(json.dumps({"step": state.global_step}))
                    tmp.rename(ckpt / COMPLETE)

        return Record()

    def final(self) -> dict[str, float]:
        return {k: v for k, v in (self.steps[-1] if self.steps else {}).items() if k != "step"}


def _make_trainer(model, tok, data, setup, peft_config, on_step: StepFn | None):
    from transformers import PrinterCallback

    recorder = _Recorder(on_step)
    callbacks = [recorder.callback()]
    if setup.save_every_s:
        callbacks.append(timed_saves(setup.save_every_s))
    trainer = _trainer_class()(
        model=model,
        args=setup.dpo,
        train_dataset=data,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer, recorder


def _throughput(trainer, metrics: dict) -> dict[str, float]:
    """Non-padding tokens trained per second (chosen and rejected sequences, truncated as TRL truncates)."""
    ds, max_len = trainer.train_dataset, trainer.args.max_length or 10**9
    per_epoch = sum(
        min(len(p) + len(c), max_len) + min(len(p) + len(r), max_len)
        for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)
    )
    epochs = float(trainer.state.epoch or 0)
    runtime = float(metrics.get("train_runtime") or 0)
    tokens = per_epoch * epochs
    return {
        "train_runtime": runtime,
        "train_steps": float(trainer.state.global_step),
        "epochs": epochs,
        "tokens": tokens,
        "tokens_per_second": tokens / runtime if runtime else 0.0,
    }


def load_pairs_file(path: Path) -> list[dict]:
    """Pairs from a JSONL file in TRL's conversational format or the flat prompt / chosen / rejected one."""
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LuthiTuneError(f"{path}:{n} is not valid JSON ({exc.msg}).") from None
        try:
            pairs.append({k: _text(row[k]) for k in ("prompt", "chosen", "rejected")})
        except (KeyError, TypeError, IndexError):
            raise LuthiTuneError(
                f"{path}:{n} needs prompt, chosen and rejected (strings, or TRL's conversational messages)."
            ) from None
    return pairs


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "\n".join(m["content"] for m in value if isinstance(m, dict))
