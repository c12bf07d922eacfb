"""Run a training job in-process, or in a worker process (Unsloth; several processes through ``accelerate``).

``run(job, ...)`` is what the ``train_dpo`` node and ``luthitune train`` call. On the CPU and plain-CUDA paths with
one process the job trains the in-process runtime's weights. Otherwise it is written to a JSON file and run by
``python -m luthitune.training.worker JOB`` (under ``accelerate launch`` when ``num_processes > 1``), which prints
one JSON line per event on stdout; the parent relays steps to its callback, so metrics, the manifest and database
rows are written once, by the parent and the worker's main process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from luthitune.errors import ConfigError, LuthiTuneError
from luthitune.training.dpo import Job, StepFn, TrainResult, train
from luthitune.training.routes import TrainPath, select_path

EVENT = "LUTHITUNE_EVENT "


class TrainingFailed(LuthiTuneError):
    """The training worker process failed; the message carries its last words."""


def run(
    job: Job,
    *,
    runtime: Any = None,
    on_step: StepFn | None = None,
    on_event: Callable[[dict], None] | None = None,
    num_processes: int = 1,
    accelerate_config: str | None = None,
    path: TrainPath | None = None,
) -> TrainResult:
    path = path or select_path(job.hp)
    if path.in_process and num_processes <= 1 and not accelerate_config:
        return train(job, runtime=runtime, path=path, on_step=on_step, on_event=on_event)
    result = launch(
        job, num_processes=num_processes, accelerate_config=accelerate_config, on_step=on_step, on_event=on_event
    )
    if runtime is not None:  # the new adapter on the interviewed weights, for evaluation and revision
        runtime.load_adapter(result.adapter_path, Path(result.adapter_path).name)
    return result


def command(
    job_file: Path, num_processes: int, accelerate_config: str | None, *, cuda: bool | None = None
) -> list[str]:
    """The command line that runs ``job_file``: plain Python for one process, else ``accelerate launch``.

    Without a config file, several processes go through accelerate's torchrun launcher (``--multi_gpu``), on the
    CPU as well: accelerate's ``--cpu`` starts one process unless MPI is used (``--mpirun_hostfile``). Each process
    then sets itself up from torchrun's ``RANK`` / ``WORLD_SIZE``: DDP over NCCL on GPUs, over gloo on the CPU
    (``use_cpu`` in the trainer's arguments). A config file (DDP, FSDP, DeepSpeed) decides everything it sets;
    ``num_processes > 1`` overrides its process count.
    """
    worker = ["-m", "luthitune.training.worker", str(job_file)]
    if num_processes <= 1 and not accelerate_config:
        return [sys.executable, *worker]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        if not Path(accelerate_config).is_file():
            raise ConfigError(f"No accelerate config file at {accelerate_config}.")
        launch += ["--config_file", str(accelerate_config)]
        launch += ["--num_processes", str(num_processes)] if num_processes > 1 else []
        return [*launch, *worker]
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        import torch

        gpus = torch.cuda.device_count()
        if num_processes > gpus:
            raise ConfigError(
                f"{num_processes} training processes need {num_processes} GPUs; this machine has {gpus}. Use at "
                f"most {gpus} processes, or an accelerate config file."
            )
    launch += ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    if not cuda:  # share the cores out: torchrun would give each process one thread
        launch += ["--num_cpu_threads_per_process", str(max(1, _cores() // num_processes))]
    return [*launch, *worker]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def launch(
    job: Job,
    *,
    num_processes: int = 1,
    accelerate_config: str | None = None,
    on_step: StepFn | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Run ``job`` in a worker process (or ``num_processes`` of them) and relay its main process's events.

    Only the main process (rank 0) prints events, so every step reaches ``on_step`` once. An interruption here
    (Ctrl-C, an error) stops the launcher and all its workers; so does this process dying (Linux).
    """
    out = Path(job.out_dir)
    job_file = out.with_name(out.name + ".job.json")
    cmd = command(job_file, num_processes, accelerate_config)
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(asdict(job)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # Ctrl-C reaches this process only, which then stops the whole tree
        preexec_fn=die_with_parent(),
    )
    tail: deque[str] = deque(maxlen=400)  # stderr is read all along: a full pipe would block the workers
    reader = threading.Thread(target=lambda: tail.extend(proc.stderr or ()), daemon=True)
    reader.start()
    result: dict | None = None
    failure: dict | None = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith(EVENT):
                continue
            ev = json.loads(line[len(EVENT) :])
            kind = ev.pop("event")
            if kind == "step" and on_step:
                on_step(ev["step"], ev["total"], ev["metrics"])
            elif kind == "phase" and on_event:
                on_event(ev)
            elif kind == "done":
                result = ev["result"]
            elif kind == "error":
                failure = ev
        code = proc.wait()
        reader.join(timeout=10)
    except BaseException:
        stop(proc)
        raise
    if failure is not None:
        raise TrainingFailed(f"Training failed in the worker process: {failure['message']}")
    if code != 0 or result is None:
        raise TrainingFailed(
            f"The training worker exited with code {code} before finishing. Its last words:\n{last_words(tail)}\n"
            "Re-running the step resumes from the last trainer checkpoint."
        )
    job_file.unlink(missing_ok=True)
    return TrainResult(**result)


_ERROR = re.compile(r"^(\[rank\d+\]: )?[\w.]*(Error|Exception|Interrupt)\b")


def last_words(lines) -> str:
    """What a failed worker said: the exceptions each process raised (the first is the cause; under torchrun the
    others are usually their peers losing the connection), else the end of its output."""
    text = "".join(lines).strip().splitlines()
    errors = [ln for ln in text if _ERROR.match(ln) and "ChildFailedError" not in ln]
    return "\n".join(dict.fromkeys(errors[:6]) or text[-15:])


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a launched worker and every process under it: SIGTERM, then SIGKILL what is left after ``grace``."""
    import psutil

    below = [p for p in kill_tree(proc.pid, signal.SIGTERM) if p.pid != proc.pid]
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)  # the launcher is ours to reap (psutil would take its exit status)
    _, alive = psutil.wait_procs(below, timeout=grace)
    if proc.poll() is None:
        proc.kill()
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list:
    """Send ``sig`` to ``pid`` and all its descendants; returns them (``psutil.Process``).

    torchrun starts each worker in a session of its own, so signalling the launcher's process group would miss the
    workers: they would go on training, finish, and delete the checkpoints a resumed job needs. The tree is
    collected before any signal, while the workers are still the launcher's children.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    return tree


def die_with_parent() -> Callable[[], None] | None:
    """A function that asks Linux to SIGTERM the calling process when its parent dies (``None`` elsewhere).

    Set in the launcher (through ``preexec_fn``) and in every worker process: if the parent is killed, the launcher
    and its workers stop too instead of training on beside a resumed job. libc is loaded here, before any fork.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _emit(kind: str, **data: Any) -> None:
    print(EVENT + json.dumps({"event": kind, **data}, default=str), flush=True)


def rank() -> int:
    """This process's global rank: torchrun and DeepSpeed set ``RANK``, MPI launchers their own variable."""
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        if os.environ.get(var, "").strip().isdigit():
            return int(os.environ[var])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m luthitune.training.worker JOB.json", file=sys.stderr)
        return 2
    if (orphan_guard := die_with_parent()) is not None:
        orphan_guard()  # a worker whose launcher is killed stops with it
    job = Job(**json.loads(Path(argv[0]).read_text()))
    path = select_path(job.hp)
    if path.kind == "unsloth":
        import unsloth  # noqa: F401  (must come before transformers, trl and peft are imported)
    from luthitune.logs import quiet_libraries, quiet_transformers

    quiet_libraries()
    quiet_transformers()
    main_process = rank() == 0
    if not main_process:  # stdout carries the main process's events; a long line must not interleave with others
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        res = train(
            job,
            path=path,
            is_main=main_process,
            on_step=(lambda s, t, m: _emit("step", step=s, total=t, metrics=m)) if main_process else None,
            on_event=(lambda e: _emit("phase", **e)) if main_process else None,
        )
    except LuthiTuneError as exc:
        if main_process:
            _emit("error", message=str(exc), type=type(exc).__name__)
        return 1
    finally:
        _leave_process_group()
    if main_process:
        _emit("done", result=asdict(res))
    return 0


def _leave_process_group() -> None:
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
