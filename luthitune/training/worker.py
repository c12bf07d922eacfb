"""Run a training job in-process, or in a worker process (Unsloth; several processes through ``accelerate``).

``run(job, ...)`` is what the ``train_dpo`` node and ``luthitune train`` call. On the CPU and plain-CUDA paths with
one process the job trains the in-process runtime's weights. Otherwise it is written to a JSON file and run by
``python -m luthitune.training.worker JOB`` (under ``accelerate launch`` when ``num_processes > 1``), which prints
one JSON line per event on stdout; the parent relays steps to its callback, so metrics, the manifest and database
rows are written once, by the parent and the worker's main process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from luthitune.errors import LuthiTuneError
from luthitune.training.dpo import Job, StepFn, TrainResult, train
from luthitune.training.paths import TrainPath, select_path

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
    if path.in_process and num_processes <= 1:
        return train(job, runtime=runtime, path=path, on_step=on_step, on_event=on_event)
    result = launch(job, num_processes=num_processes, accelerate_config=accelerate_config, on_step=on_step,
                    on_event=on_event)  # fmt: skip
    if runtime is not None:  # the new adapter on the interviewed weights, for evaluation and revision
        runtime.load_adapter(result.adapter_path, Path(result.adapter_path).name)
    return result


def command(job_file: Path, num_processes: int, accelerate_config: str | None) -> list[str]:
    worker = ["-m", "luthitune.training.worker", str(job_file)]
    if num_processes <= 1 and not accelerate_config:
        return [sys.executable, *worker]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        launch += ["--config_file", accelerate_config]
    else:
        import torch

        if not torch.cuda.is_available():
            launch += ["--cpu"]
        launch += ["--multi_gpu"] if torch.cuda.is_available() else []
    launch += ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no"]
    if num_processes > 1 and not accelerate_config:
        launch += ["--main_process_port", str(_free_port())]
    return [*launch, *worker]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    job: Job,
    *,
    num_processes: int = 1,
    accelerate_config: str | None = None,
    on_step: StepFn | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Run ``job`` in a worker process (or ``num_processes`` of them) and relay its events."""
    out = Path(job.out_dir)
    job_file = out.with_name(out.name + ".job.json")
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(asdict(job)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        command(job_file, num_processes, accelerate_config),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
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
        stderr = proc.stderr.read() if proc.stderr else ""
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if failure is not None:
        raise TrainingFailed(f"Training failed in the worker process: {failure['message']}")
    if code != 0 or result is None:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise TrainingFailed(
            f"The training worker exited with code {code} before finishing. Its last output:\n{tail}\n"
            "Re-running the step resumes from the last trainer checkpoint."
        )
    job_file.unlink(missing_ok=True)
    return TrainResult(**result)


def _emit(kind: str, **data: Any) -> None:
    print(EVENT + json.dumps({"event": kind, **data}, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m luthitune.training.worker JOB.json", file=sys.stderr)
        return 2
    job = Job(**json.loads(Path(argv[0]).read_text()))
    path = select_path(job.hp)
    if path.kind == "unsloth":
        import unsloth  # noqa: F401  (must come before transformers, trl and peft are imported)
    from luthitune.logs import quiet_libraries, quiet_transformers

    quiet_libraries()
    quiet_transformers()
    rank = int(os.environ.get("RANK", "0"))
    main_process = rank == 0
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
    if main_process:
        _emit("done", result=asdict(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
