"""The thread and precision policies (luthitune.compute), with the machine faked through its seam: the CPU's flags,
the CPUs this process may use, the load average and the measured speed of each precision."""

from __future__ import annotations

import pytest
import torch

from luthitune.compute import (
    PRECISION_ENV,
    THREADS_ENV,
    TRAINING_ROWS,
    Machine,
    Precision,
    Shape,
    apply_threads,
    choose_precision,
    choose_threads,
    load_warning,
    measure,
)
from luthitune.config import Config
from luthitune.errors import ConfigError
from luthitune.training.hyperparameters import Hyperparameters
from luthitune.training.routes import TrainPath, training_precision

SMOLLM2 = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "num_hidden_layers": 30,
    "vocab_size": 49152,
}


class FakeMachine(Machine):
    """A CPU with the given flags, CPUs and load, whose bf16 products take ``bf16_factor`` times float32's."""

    def __init__(self, flags=("avx512f",), cpus: int = 4, load: float | None = 0.5, bf16_factor: float = 0.5):
        self.flags, self.cpus, self.load, self.bf16_factor = frozenset(flags), cpus, load, bf16_factor
        self.calls: list[tuple] = []

    def cpu_flags(self):
        return self.flags

    def usable_cpus(self):
        return self.cpus

    def load_average(self):
        return self.load

    def matmul_seconds(self, dtype, rows, inner, outer, repeats):
        self.calls.append((dtype, rows, inner, outer))
        flops = 1e-9 * rows * inner * outer
        return flops * (self.bf16_factor if dtype == "bfloat16" else 1.0)


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv(PRECISION_ENV, raising=False)


# -- threads --


def test_auto_threads_are_the_cpus_this_process_may_use():
    t = choose_threads("auto", FakeMachine(cpus=3))
    assert t.count == 3 and "sched_getaffinity" in t.reason


def test_a_number_sets_the_threads_and_says_when_it_exceeds_the_cpus():
    assert choose_threads(1, FakeMachine(cpus=4)).count == 1
    over = choose_threads(8, FakeMachine(cpus=2))
    assert over.count == 8 and "more than the 2 CPU(s)" in over.reason


def test_the_environment_wins_over_the_file(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "1")
    t = choose_threads(4, FakeMachine(cpus=4))
    assert t.count == 1 and f"${THREADS_ENV}" in t.reason


@pytest.mark.parametrize("bad", ["0", "-2", "many"])
def test_a_bad_thread_count_is_a_config_error_naming_its_source(monkeypatch, bad):
    monkeypatch.setenv(THREADS_ENV, bad)
    with pytest.raises(ConfigError, match=THREADS_ENV):
        choose_threads("auto", FakeMachine())


def test_the_real_machine_reports_this_process_affinity():
    import os

    assert Machine().usable_cpus() == len(os.sched_getaffinity(0))


def test_apply_threads_sets_torchs_thread_count():
    before = torch.get_num_threads()
    try:
        assert apply_threads(1, FakeMachine(cpus=2)).count == 1 and torch.get_num_threads() == 1
        apply_threads("auto", FakeMachine(cpus=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_config_key_validates_threads():
    assert Config(compute={"threads": 2}).compute.threads == 2
    with pytest.raises(Exception, match="at least 1"):
        Config(compute={"threads": 0})


def test_load_above_the_cpus_is_warned_about():
    msg = load_warning(FakeMachine(cpus=2, load=4.6))
    assert "4.6" in msg and "2 CPU(s)" in msg and "threads: 1" in msg
    assert load_warning(FakeMachine(cpus=2, load=1.9)) is None
    assert load_warning(FakeMachine(cpus=2, load=None)) is None


# -- precision --

BF16 = ("avx512f", "avx512_bf16")


def test_a_cpu_without_native_bf16_computes_in_float32_unmeasured():
    m = FakeMachine(flags=("avx512f", "avx2"))
    p = choose_precision("auto", machine=m)
    assert p.name == "fp32" and p.dtype == "float32" and "avx512_bf16" in p.reason and not m.calls


def test_native_bf16_that_measures_faster_is_chosen_with_the_timing():
    p = choose_precision("auto", machine=FakeMachine(flags=BF16, bf16_factor=0.4))
    assert p.bf16 and p.dtype == "bfloat16" and p.torch_dtype() is torch.bfloat16
    assert p.measured["bf16"] < p.measured["fp32"] and "avx512_bf16" in p.reason and "2.50x" in p.reason


def test_native_bf16_that_is_not_faster_keeps_float32():
    for factor in (1.3, 1.0, 0.95):  # slower, a tie, and a gain below the margin
        p = choose_precision("auto", machine=FakeMachine(flags=("amx_bf16",), bf16_factor=factor))
        assert p.name == "fp32" and "not faster" in p.reason, factor


def test_the_measurement_alternates_the_precisions_on_the_models_own_shapes():
    m = FakeMachine(flags=BF16)
    measure(m, Shape(layers=((576, 1536, 60), (576, 49152, 1)), rows=(1, 8)))
    dtypes = [c[0] for c in m.calls]
    assert dtypes[:4] == ["float32", "bfloat16", "float32", "bfloat16"]
    assert {(c[1], c[2], c[3]) for c in m.calls} == {(r, i, o) for r in (1, 8) for i, o in ((576, 1536), (576, 49152))}


def test_the_measured_total_weighs_each_product_by_its_count():
    ms = measure(FakeMachine(bf16_factor=1.0), Shape(layers=((10, 100, 3),), rows=(1,)))
    assert ms["fp32"] == pytest.approx(3 * 1e-9 * 1000 * 1e3)


def test_a_models_shape_counts_every_linear_layer():
    s = Shape.of(SMOLLM2)
    assert sum(c for *_, c in s.layers) == 30 * 7 + 1  # q k v o gate up down per layer, and the output layer
    assert (576, 192, 60) in s.layers and (576, 49152, 1) in s.layers and s == Shape()
    assert Shape.of(SMOLLM2, rows=TRAINING_ROWS).rows == (256,)


def test_forced_precisions_are_not_measured(monkeypatch):
    m = FakeMachine(flags=BF16)
    assert choose_precision("fp32", machine=m).name == "fp32" and not m.calls
    assert choose_precision("bf16", machine=m).name == "bf16" and not m.calls
    emulated = choose_precision("bf16", machine=FakeMachine(flags=()))
    assert emulated.bf16 and "emulated" in emulated.reason
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert choose_precision("bf16", machine=m).name == "fp32" and PRECISION_ENV in choose_precision(machine=m).reason


def test_an_unknown_precision_is_a_config_error(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "fp8")
    with pytest.raises(ConfigError, match="auto, bf16, fp32"):
        choose_precision("auto", machine=FakeMachine())


def test_auto_off_the_cpu_keeps_float32_without_measuring():
    m = FakeMachine(flags=BF16)
    assert choose_precision("auto", device="cuda", machine=m).name == "fp32" and not m.calls


# -- training --

CPU = TrainPath("cpu", "no CUDA device", "cpu")


def hp(**training) -> Hyperparameters:
    return Hyperparameters(training=training)


def test_training_auto_trains_in_float32_even_where_bf16_measures_faster():
    p = training_precision(CPU, hp(), machine=FakeMachine(flags=BF16, bf16_factor=0.4))
    assert not p.bf16 and p.weights == "float32" and p.as_dict()["precision"] == "fp32"
    assert "rounds LoRA's small updates away" in p.reason and "ms in bf16" in p.reason  # the measurement is kept
    q = training_precision(CPU, hp(), machine=FakeMachine(flags=BF16, bf16_factor=1.5))
    assert not q.bf16 and q.weights == "float32" and "not faster" in q.reason


def test_training_follows_a_precision_the_user_set_with_bf16_weights():
    p = training_precision(CPU, hp(), "bf16", machine=FakeMachine(flags=BF16, bf16_factor=1.5))
    assert p.bf16 and p.weights == "bfloat16" and "bf16 set by" in p.reason


def test_training_in_place_keeps_the_runtimes_weights():
    runtime = Precision("bf16", "bf16 set by compute in luthitune.yaml")
    p = training_precision(CPU, hp(), runtime_precision=runtime, machine=FakeMachine(flags=BF16, bf16_factor=1.5))
    assert not p.bf16 and p.weights == "bfloat16" and "interviewed runtime" in p.reason


def test_training_bf16_forced_leaves_fresh_weights_in_float32_as_trl_does():
    p = training_precision(CPU, hp(bf16=True), machine=FakeMachine(flags=()))
    assert p.bf16 and p.weights == "float32" and "emulated" in p.reason
    assert not training_precision(CPU, hp(bf16=False), machine=FakeMachine(flags=BF16, bf16_factor=0.1)).bf16


def test_the_trainer_gets_the_chosen_precision(tmp_path):
    from luthitune.training.config import plan

    a = plan(Hyperparameters(), output_dir=str(tmp_path), n_train=8, bf16=True).dpo
    assert a.bf16 and a.use_cpu and not a.fp16


def test_trls_arm_takes_bf16_only_where_the_hardware_has_it(monkeypatch):
    from luthitune.training import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on = bench.mode_overrides("trl", FakeMachine(flags=BF16))
    assert on["training"]["bf16"] is True and on["training"]["optim"] == "adamw_torch_fused"
    assert on["training"]["gradient_checkpointing"] is True and on["dpo"]["precompute_ref_log_probs"] is False
    assert bench.mode_overrides("trl", FakeMachine(flags=()))["training"]["bf16"] is False
    assert bench.mode_overrides("stock")["training"]["bf16"] is False
    assert "bf16" not in bench.MODES["trl"]["training"]  # the table itself is not changed by a call


# -- doctor --


def test_doctor_reports_threads_load_and_both_precisions(tmp_path):
    from luthitune.doctor import compute_checks
    from luthitune.workspace import Workspace

    ws = Workspace(tmp_path, Config(compute={"threads": 1}))
    checks = {c.name: c for c in compute_checks(ws, FakeMachine(flags=BF16, cpus=2, load=5.0, bf16_factor=0.4))}
    assert checks["threads"].ok and "torch runs 1" in checks["threads"].detail
    assert not checks["load"].ok and not checks["load"].required and "5.0" in checks["load"].detail
    assert checks["precision (generation)"].detail.startswith("bf16")
    assert "256 row(s)" in checks["precision (training)"].detail
    assert checks["precision (training)"].detail.startswith("fp32")  # measured faster, but LoRA trains in float32
    calm = {c.name: c for c in compute_checks(ws, FakeMachine(flags=(), cpus=2, load=0.3))}
    assert calm["load"].ok and calm["precision (generation)"].detail.startswith("fp32")
