"""hyperparameters.yaml → TRL's DPOConfig and PEFT's LoraConfig, key by key; path selection; clear errors."""

from __future__ import annotations

import pytest

from luthitune.errors import ConfigError
from luthitune.training import routes
from luthitune.training.config import check_trained_model, merge, nest, plan
from luthitune.training.hyperparameters import DPO_LOSSES, Hyperparameters
from luthitune.workspace import Workspace, init_workspace

# Every key of the original tool's file, each set to a value different from our default.
ORIGINAL = """\
model:
  name: smollm2-135m-instruct
  max_seq_length: 300
  load_in_4bit: true
lora:
  r: 4
  lora_alpha: 12
  lora_dropout: 0.05
training:
  learning_rate: 5e-5
  num_train_epochs: 2
  batch_size: 3
  gradient_accumulation_steps: 2
dpo:
  beta: 0.25
"""

# TRL's own fields that the file may add.
EXTRA = """\
training:
  max_grad_norm: 0.5
  seed: 7
  warmup_steps: 1
  weight_decay: 0.01
  lr_scheduler_type: cosine
  max_steps: 9
  gradient_checkpointing: true
  save_steps: 3
dpo:
  loss_type: ipo
  max_length: 256
  precompute_ref_log_probs: false
  label_smoothing: 0.1
"""


def workspace_with(tmp_path, text: str) -> Workspace:
    ws, _ = init_workspace(tmp_path / "ws")
    (ws.root / "config" / "hyperparameters.yaml").write_text(text)
    return ws


def test_every_original_key_takes_effect(tmp_path):
    hp = workspace_with(tmp_path, ORIGINAL).hyperparameters()
    assert isinstance(hp.training.learning_rate, float) and hp.training.learning_rate == 5e-5  # not the string "5e-5"
    p = plan(hp, output_dir=str(tmp_path / "out"), n_train=12)
    a, lora = p.dpo, p.lora
    assert a.max_length == 300  # dpo.max_length 512 is capped by model.max_seq_length
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (4, 12, 0.05)
    assert a.learning_rate == 5e-5 and a.num_train_epochs == 2
    # 3 pairs x 2 accumulated per optimizer step, run as micro-batches of 1 (the largest divisor of 3 up to 2)
    assert a.per_device_train_batch_size * a.gradient_accumulation_steps == 3 * 2
    assert a.per_device_train_batch_size == 1
    assert a.beta == 0.25
    assert p.total_steps == 4  # ceil(12 / (3 * 2)) * 2 epochs
    assert any("capped" in n for n in p.notes)
    assert routes.select_path(hp, cuda=False).kind == "cpu"  # load_in_4bit needs CUDA; the reason says so
    assert "load_in_4bit" in routes.select_path(hp, cuda=False).reason


def test_trl_fields_take_effect(tmp_path):
    hp = workspace_with(tmp_path, EXTRA).hyperparameters()
    a = plan(hp, output_dir=str(tmp_path / "out"), n_train=12).dpo
    assert a.max_grad_norm == 0.5 and a.seed == 7 and a.warmup_steps == 1 and a.weight_decay == 0.01
    assert a.lr_scheduler_type.value == "cosine" and a.max_steps == 9
    assert a.gradient_checkpointing is True and a.save_steps == 3
    assert a.loss_type == ["ipo"] and a.max_length == 256 and a.precompute_ref_log_probs is False
    assert a.label_smoothing == 0.1
    assert a.use_cpu and not a.bf16  # the CPU path: float32, no bf16


def test_project_defaults(tmp_path):
    setup = plan(Hyperparameters(), output_dir=str(tmp_path), n_train=40)
    a = setup.dpo
    assert a.gradient_checkpointing is False  # "auto" is off on the CPU
    assert a.precompute_ref_log_probs is True and str(a.train_sampling_strategy).endswith("group_by_length")
    # checkpoints by time, not by step: the trainer's own schedule is off and TimedSaves asks for them
    assert a.learning_rate == 5e-5 and a.save_strategy == "no" and setup.save_every_s == 120


def test_save_steps_keeps_checkpoints_by_step(tmp_path):
    setup = plan(Hyperparameters(training={"save_steps": 3}), output_dir=str(tmp_path), n_train=40)
    assert setup.dpo.save_strategy == "steps" and setup.dpo.save_steps == 3 and setup.save_every_s is None


def test_our_loss_list_is_trls(tmp_path):
    from trl import DPOConfig

    doc = DPOConfig.__doc__
    for name in DPO_LOSSES:
        assert f"'{name}'" in doc, name


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("dpo:\n  loss_type: sigmoidd\n", "dpo.loss_type"),
        ("training:\n  learning_rate: fast\n", "training.learning_rate"),
        ("training:\n  batch_size: 0\n", "training.batch_size"),
        ("lora:\n  rank: 8\n", "lora.rank"),
        ("training:\n  report_to: nosuchreporter\n", "training.report_to"),
    ],
)
def test_bad_values_name_the_field_and_the_file(tmp_path, text, field):
    ws = workspace_with(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        ws.hyperparameters()
    assert field in str(e.value) and "hyperparameters.yaml" in str(e.value)


def test_reporting_to_an_uninstalled_tracker_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    ws = workspace_with(tmp_path, "training:\n  report_to: tensorboard\n")
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        ws.hyperparameters()


def test_warm_up_over_a_tenth_of_the_steps_warns(tmp_path):
    hp = merge(Hyperparameters(), {"training": {"warmup_steps": 5, "num_train_epochs": 3, "batch_size": 4}})
    p = plan(hp, output_dir=str(tmp_path), n_train=50)  # the original defaults' situation: 39 steps... 5 is 13%
    assert p.total_steps == 39 and any("warm-up is 5 of 39" in n for n in p.notes)
    assert not plan(Hyperparameters(), output_dir=str(tmp_path), n_train=50).notes


def test_run_overrides_merge_into_sections():
    assert nest({"epochs": 2, "beta": 0.3, "lora": {"r": 4}}) == {
        "training": {"num_train_epochs": 2},
        "dpo": {"beta": 0.3},
        "lora": {"r": 4},
    }
    hp = merge(Hyperparameters(), {"epochs": 2, "max_length": 128})
    assert hp.training.num_train_epochs == 2 and hp.dpo.max_length == 128
    with pytest.raises(ConfigError, match="epoch"):
        nest({"epoch": 2})
    with pytest.raises(ConfigError, match=r"training\.learning_rate"):
        merge(Hyperparameters(), {"learning_rate": -1})


def test_a_run_trains_the_model_it_interviewed():
    check_trained_model(Hyperparameters(), "smollm2-135m-instruct")
    check_trained_model(merge(Hyperparameters(), {"model": {"name": "smollm2"}}), "smollm2-135m-instruct")
    with pytest.raises(ConfigError, match="model that was interviewed"):
        check_trained_model(merge(Hyperparameters(), {"model": {"name": "other/model"}}), "smollm2-135m-instruct")


def test_path_selection_and_its_reasons(monkeypatch):
    hp = Hyperparameters()
    monkeypatch.setattr(routes, "_has", lambda m: False)
    assert routes.select_path(hp, cuda=True).kind == "cuda"
    q = merge(hp, {"model": {"load_in_4bit": True}})
    with pytest.raises(ConfigError, match="bitsandbytes"):
        routes.select_path(q, cuda=True)
    with pytest.raises(ConfigError, match="unsloth"):
        routes.select_path(merge(hp, {"model": {"unsloth": True}}), cuda=True)
    monkeypatch.setattr(routes, "_has", lambda m: True)
    assert routes.select_path(q, cuda=True).kind == "unsloth"
    assert routes.select_path(merge(q, {"model": {"unsloth": False}}), cuda=True).kind == "qlora"
    cpu = routes.select_path(hp, cuda=False)
    assert cpu.kind == "cpu" and "unsloth is installed but needs CUDA" in cpu.reason and cpu.in_process


def test_no_pairs_is_a_clear_error_not_an_empty_adapter(tmp_path):
    from luthitune.errors import LuthiTuneError
    from luthitune.training.dpo import Job, train

    with pytest.raises(LuthiTuneError, match="every pair was quarantined"):
        train(Job(model_dir=str(tmp_path), out_dir=str(tmp_path / "a"), pairs=[], hyperparameters={}))
    assert not (tmp_path / "a").exists()


def test_micro_batches_add_up_to_the_configured_batch(tmp_path):
    from luthitune.training.config import micro_batch

    for batch, want, device, expect in [
        (4, "auto", "cpu", 2),
        (4, "auto", "cuda", 4),
        (6, 4, "cpu", 3),
        (5, "auto", "cpu", 1),
        (4, "off", "cpu", 4),
        (2, 8, "cpu", 2),
    ]:
        hp = merge(Hyperparameters(), {"training": {"batch_size": batch, "micro_batch_size": want}})
        assert micro_batch(hp, device) == expect, (batch, want, device)
        a = plan(hp, output_dir=str(tmp_path), n_train=24, device=device).dpo
        assert a.per_device_train_batch_size * a.gradient_accumulation_steps == batch


def test_timed_saves_checkpoint_once_the_interval_has_passed_and_never_at_the_last_step():
    from transformers import TrainerControl, TrainerState

    from luthitune.training.checkpoints import timed_saves

    now = [100.0]
    cb = timed_saves(60, clock=lambda: now[0])
    state, control = TrainerState(max_steps=10), TrainerControl()
    cb.on_train_begin(None, state, control)
    for step, t in ((1, 130.0), (2, 159.0)):
        state.global_step, now[0] = step, t
        cb.on_step_end(None, state, control)
        assert not control.should_save, step
    state.global_step, now[0] = 3, 161.0
    cb.on_step_end(None, state, control)
    assert control.should_save
    control.should_save = False
    cb.on_save(None, state, control)  # the trainer saved: the interval starts again
    state.global_step, now[0] = 4, 200.0
    cb.on_step_end(None, state, control)
    assert not control.should_save
    state.global_step, now[0] = 10, 1000.0  # the last step: the adapter is saved anyway, no checkpoint needed
    cb.on_step_end(None, state, control)
    assert not control.should_save
