"""How this process uses the CPU: how many threads torch runs, and in which precision the weights compute.

Both are runtime choices, made once per process from what the machine offers and what ``luthitune.yaml``
(``compute:``) or the environment (``LUTHITUNE_THREADS``, ``LUTHITUNE_PRECISION``) asks for. The cached weights, the
identity digests and the adapters are the same whichever precision runs.

- Threads: as many as the CPUs this process may run on (``os.sched_getaffinity``), not the machine's count; a
  number overrides it. ``doctor`` warns when the load average is above that count: two torch threads on a CPU
  shared with busier work can stall for minutes where one thread still makes progress.
- Precision: bfloat16 on a CPU that computes it natively (AVX512-BF16 or AMX-BF16) *and* where a short measurement
  at load time shows bf16 matrix products on the model's own shapes faster than float32; float32 otherwise.

Everything the choices read about the machine goes through :class:`Machine`, so tests hand in their own.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

THREADS_ENV = "LUTHITUNE_THREADS"
PRECISION_ENV = "LUTHITUNE_PRECISION"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of native bf16 arithmetic
PRECISIONS = ("auto", "bf16", "fp32")
# bf16 must beat float32 by this factor in the measurement: a tie is not worth the rounding.
MARGIN = 1.15
_DTYPE = {"bf16": "bfloat16", "fp32": "float32"}


class Machine:
    """What the policies read about this machine (the real one); tests pass a subclass with fixed answers."""

    def cpu_flags(self) -> frozenset[str]:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith("flags"):
                        return frozenset(line.split(":", 1)[1].split())
        except OSError:
            pass
        return frozenset()

    def usable_cpus(self) -> int:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # not Linux
            return max(1, os.cpu_count() or 1)

    def load_average(self) -> float | None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None

    def matmul_seconds(self, dtype: str, rows: int, inner: int, outer: int, repeats: int) -> float:
        """The fastest of ``repeats`` products of a ``[rows, inner]`` input with an ``[outer, inner]`` weight stored
        column-major, as the local runtime stores it (:func:`luthitune.backends.local.column_major_weights`). The
        operands are made once per shape (filled, not random: the values do not change the speed)."""
        import torch

        key = (dtype, rows, inner, outer)
        ops = self.__dict__.setdefault("_operands", {})
        if key not in ops:
            dt = getattr(torch, dtype)
            w = torch.full((inner, outer), 0.01, dtype=dt).t()  # [outer, inner], column-major
            ops[key] = (torch.full((rows, inner), 0.5, dtype=dt), w)
            torch.nn.functional.linear(*ops[key])  # first call: kernel selection, allocation
        x, w = ops[key]
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - t0)
        return best

    def forget(self) -> None:
        """Free the measurement's operands."""
        self.__dict__.pop("_operands", None)


# -- threads --


@dataclass(frozen=True)
class Threads:
    count: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _setting(value: Any, env: str) -> tuple[Any, str]:
    """The environment variable wins over the file's value; with the source, for the reason."""
    raw = os.environ.get(env, "").strip()
    if raw:
        return raw, f"${env}"
    return value, "compute in luthitune.yaml"


def choose_threads(setting: int | str | None = "auto", machine: Machine | None = None) -> Threads:
    """How many threads torch should run. ``setting``: ``auto`` (or None) or a positive number; ``LUTHITUNE_THREADS``
    overrides it."""
    from luthitune.errors import ConfigError

    machine = machine or Machine()
    value, source = _setting(setting, THREADS_ENV)
    cpus = machine.usable_cpus()
    if value in (None, "auto"):
        return Threads(cpus, f"auto: the {cpus} CPU(s) this process may run on (os.sched_getaffinity)")
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"threads from {source} is {value!r}: use auto or a whole number of at least 1.")
    over = f"; more than the {cpus} CPU(s) this process may run on" if n > cpus else ""
    return Threads(n, f"{n} set by {source}{over}")


_APPLIED: dict[str, Threads] = {}


def apply_threads(setting: int | str | None = "auto", machine: Machine | None = None) -> Threads:
    """Set torch's thread count by :func:`choose_threads` (once per process and setting; cheap to call again)."""
    import torch

    choice = choose_threads(setting, machine)
    if torch.get_num_threads() != choice.count:
        torch.set_num_threads(choice.count)
    if _APPLIED.get("threads") != choice:
        log.info("torch threads: %s", choice.reason)
        _APPLIED["threads"] = choice
    return choice


def load_warning(machine: Machine | None = None) -> str | None:
    """A sentence when the 1-minute load average is above the CPUs this process may use; else None."""
    machine = machine or Machine()
    load, cpus = machine.load_average(), machine.usable_cpus()
    if load is None or load <= cpus:
        return None
    return (
        f"load average {load:.1f} is above the {cpus} CPU(s) this process may run on: generation and training "
        f"share them and slow down. On a machine this busy, `compute: {{threads: 1}}` in luthitune.yaml (or "
        f"{THREADS_ENV}=1) keeps making progress where more threads can stall."
    )


# -- precision --


@dataclass(frozen=True)
class Precision:
    name: str  # bf16 | fp32
    reason: str
    measured: dict[str, float] = field(default_factory=dict)  # milliseconds per product, when measured

    @property
    def dtype(self) -> str:
        """The torch dtype's name: ``bfloat16`` or ``float32``."""
        return _DTYPE[self.name]

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.name, "dtype": self.dtype, "reason": self.reason, "measured_ms": self.measured}


@dataclass(frozen=True)
class Shape:
    """The matrix products one forward pass is made of: ``(inner, outer, count)`` per kind of linear layer, each
    multiplied by ``rows`` tokens at a time (decoding: 1 and 8 sequences; training: a few hundred tokens)."""

    layers: tuple[tuple[int, int, int], ...] = (  # SmolLM2-135M: 30 layers, hidden 576, MLP 1536, 49152 words
        (576, 576, 60),
        (576, 192, 60),
        (576, 1536, 60),
        (1536, 576, 30),
        (576, 49152, 1),
    )
    rows: tuple[int, ...] = (1, 8)

    @classmethod
    def of(cls, config: Any, rows: tuple[int, ...] = (1, 8)) -> Shape:
        """The shape of a transformers (llama-like) model ``config``: attention, MLP and output layers."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        hidden = int(get("hidden_size") or 576)
        heads = int(get("num_attention_heads") or 1)
        head_dim = int(get("head_dim") or hidden // heads)
        kv = int(get("num_key_value_heads") or heads) * head_dim
        mlp, n = int(get("intermediate_size") or 4 * hidden), int(get("num_hidden_layers") or 1)
        vocab = int(get("vocab_size") or 32000)
        layers = ((hidden, heads * head_dim, n), (heads * head_dim, hidden, n), (hidden, kv, 2 * n))
        layers += ((hidden, mlp, 2 * n), (mlp, hidden, n), (hidden, vocab, 1))
        merged: dict[tuple[int, int], int] = {}
        for i, o, c in layers:
            merged[(i, o)] = merged.get((i, o), 0) + c
        return cls(tuple((i, o, c) for (i, o), c in merged.items()), tuple(rows))

    def describe(self) -> str:
        rows = " and ".join(str(r) for r in self.rows)
        return f"the {sum(c for *_, c in self.layers)} matrix products of a forward pass at {rows} row(s)"


def shape_of_dir(model_dir: Any, rows: tuple[int, ...] = (1, 8)) -> Shape:
    """:meth:`Shape.of` a weights folder's ``config.json`` (SmolLM2's shape when it cannot be read)."""
    import json
    from pathlib import Path

    try:
        return Shape.of(json.loads((Path(model_dir) / "config.json").read_text()), rows)
    except (OSError, ValueError, TypeError, AttributeError):
        return Shape(rows=tuple(rows))


TRAINING_ROWS = (256,)  # tokens per micro-batch pass in training (2 pairs x chosen/rejected x ~64 tokens)


def native_bf16(machine: Machine) -> list[str]:
    """The CPU flags that say it computes bf16 natively (empty: it would be emulated, and slow)."""
    flags = machine.cpu_flags()
    return [f for f in BF16_FLAGS if f in flags]


def measure(machine: Machine, shape: Shape, rounds: int = 2) -> dict[str, float]:
    """Milliseconds for all of ``shape``'s products in float32 and in bf16: each kind timed (the fastest of a few
    tries, more for small ones), times its count. The two precisions alternate, so a burst of load on a shared
    machine weighs on both alike; it runs on one thread, where a busy machine's scheduling stalls least (the
    ratio of the two kernels is what is wanted, not their absolute speed)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    total = {"fp32": 0.0, "bf16": 0.0}
    try:
        for rows in shape.rows:
            for inner, outer, count in shape.layers:
                repeats = max(1, min(20, int(3e7 / (rows * inner * outer))))
                best = {"fp32": float("inf"), "bf16": float("inf")}
                for _ in range(rounds):
                    for name in best:
                        s = machine.matmul_seconds(_DTYPE[name], rows, inner, outer, repeats)
                        best[name] = min(best[name], s)
                for name in best:
                    total[name] += best[name] * count
    finally:
        torch.set_num_threads(threads)
        machine.forget()
    return {k: round(v * 1e3, 3) for k, v in total.items()}


def choose_precision(
    setting: str | None = "auto", *, device: str = "cpu", shape: Shape | None = None, machine: Machine | None = None
) -> Precision:
    """The precision to compute in on ``device``, with the reason. ``setting``: auto, bf16 or fp32;
    ``LUTHITUNE_PRECISION`` overrides it. Off the CPU, auto keeps float32 (CUDA training picks bf16 by itself,
    :mod:`luthitune.training.routes`)."""
    from luthitune.errors import ConfigError

    machine = machine or Machine()
    value, source = _setting(setting or "auto", PRECISION_ENV)
    value = str(value).strip().lower()
    if value not in PRECISIONS:
        raise ConfigError(f"precision from {source} is {value!r}: use one of {', '.join(PRECISIONS)}.")
    if value == "fp32":
        return Precision("fp32", f"fp32 set by {source}")
    if device != "cpu":
        if value == "bf16":
            return Precision("bf16", f"bf16 set by {source}")
        return Precision("fp32", f"auto on {device}: float32 (the measured choice is made on the CPU)")
    flags = native_bf16(machine)
    if value == "bf16":
        note = "" if flags else " (this CPU has no native bf16: it is emulated, and slower than float32)"
        return Precision("bf16", f"bf16 set by {source}{note}")
    if not flags:
        return Precision("fp32", f"auto: this CPU has neither {' nor '.join(BF16_FLAGS)}, so bf16 would be emulated")
    shape = shape or Shape()
    ms = measure(machine, shape)
    speed = ms["fp32"] / ms["bf16"] if ms["bf16"] > 0 else 0.0
    timing = f"{shape.describe()} took {ms['bf16']:.1f} ms in bf16, {ms['fp32']:.1f} ms in float32 ({speed:.2f}x)"
    if speed >= MARGIN:
        return Precision("bf16", f"auto: the CPU has {', '.join(flags)} and {timing}", ms)
    return Precision("fp32", f"auto: the CPU has {', '.join(flags)}, but bf16 was not faster ({timing})", ms)


def for_training(chosen: Precision) -> Precision:
    """The precision LoRA training takes on the CPU from the policy's ``chosen`` one: a bf16 that ``auto`` chose by
    speed becomes float32, because bf16 rounds LoRA's first, small updates away in each layer's bf16 output and a
    short run then learns little or nothing (``tests/integration/test_precision.py``). A bf16 the user set (one
    that carries no measurement) stays."""
    if not (chosen.bf16 and chosen.measured):
        return chosen
    return Precision(
        "fp32",
        "auto trains in float32: bf16 rounds LoRA's small updates away, so a short run learns little; "
        f"compute.precision: bf16 or training.bf16: true forces it ({chosen.reason.removeprefix('auto: ')})",
        chosen.measured,
    )


_CHOSEN: dict[tuple, Precision] = {}


def precision_for(
    setting: str | None = "auto", *, device: str = "cpu", shape: Shape | None = None, machine: Machine | None = None
) -> Precision:
    """:func:`choose_precision`, measured once per process for each setting and shape on this machine: every caller
    (generation, training) in a process gets the same answer. Another ``machine`` is asked every time."""
    if machine is not None:
        return choose_precision(setting, device=device, shape=shape, machine=machine)
    key = (os.environ.get(PRECISION_ENV, ""), setting, device, shape)
    if key not in _CHOSEN:
        _CHOSEN[key] = choose_precision(setting, device=device, shape=shape)
        log.info("precision: %s (%s)", _CHOSEN[key].name, _CHOSEN[key].reason)
    return _CHOSEN[key]
