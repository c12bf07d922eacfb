"""Trainer checkpoints: where a killed training resumes from, which ones count, and how often they are written.

A checkpoint counts once the trainer has finished writing it (:data:`COMPLETE`, written last by the trainer's
``on_save``). They are written every ``training.save_steps`` steps when that is set, otherwise by time
(:func:`timed_saves`, ``training.save_minutes``): a kill then loses at most that much training plus one step, and a
short run writes none it would not need. Resume is exact either way: the trainer restores the weights, the
optimizer, the schedule, the data order and the random state from the checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

KEY_FILE = "luthitune-job-key.json"
COMPLETE = "luthitune-complete.json"  # written into a trainer checkpoint after everything else in it


def _checkpoints(work: Path) -> list[Path]:
    found = [p for p in work.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def is_complete(ckpt: Path) -> bool:
    """A trainer checkpoint counts once the trainer has finished writing it: :class:`_Recorder` writes
    :data:`COMPLETE` last (the trainer's ``on_save``), so one cut short by a full disk or a kill has none."""
    try:
        return json.loads((ckpt / COMPLETE).read_text()).get("step") == int(ckpt.name.split("-")[-1])
    except (OSError, ValueError, AttributeError):
        return False


def latest_checkpoint(work: Path) -> Path | None:
    """The newest complete trainer checkpoint in ``work``."""
    done = [p for p in _checkpoints(work) if is_complete(p)]
    return done[-1] if done else None


def prepare_workdir(work: Path, key: str) -> Path | None:
    """The checkpoint to resume from, if ``work`` holds one for the same job; otherwise a clean ``work``.

    Incomplete checkpoints (a save cut short by a full disk or a kill) are removed, so training resumes from the
    last complete one and the trainer's own rotation never keeps a broken one in place of a good one."""
    key_file = work / KEY_FILE
    if work.exists():
        same = key_file.exists() and json.loads(key_file.read_text()).get("key") == key
        ckpt = latest_checkpoint(work) if same else None
        if ckpt is not None:
            for broken in _checkpoints(work):
                if not is_complete(broken):
                    log.warning("Removing the incomplete trainer checkpoint %s (its save was cut short).", broken)
                    shutil.rmtree(broken)
            return ckpt
        shutil.rmtree(work)
    work.mkdir(parents=True)
    key_file.write_text(json.dumps({"key": key}))
    return None


LOW_SPACE = 64 * 1024 * 1024  # below this, a failed write is taken for a full disk


def disk_full(exc: BaseException, folder: Path):
    """A :class:`~luthitune.errors.WorkspaceError` naming ``folder`` when ``exc`` is (or, with the disk holding
    ``folder`` nearly full, probably is) a write that ran out of space; else None. torch reports a full disk as a
    bare ``RuntimeError`` ("unexpected pos ..."), so the free space is what tells."""
    import errno

    from luthitune.errors import WorkspaceError

    try:
        free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    except OSError:
        free = None
    no_space = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not no_space and (free is None or free >= LOW_SPACE):
        return None
    left = f" ({free // 1024} KB left)" if free is not None else ""
    return WorkspaceError(
        f"Training stopped: the disk holding {folder} is full{left} ({type(exc).__name__}: {str(exc)[:160]}). "
        "The trainer checkpoints written so far are kept, and one cut short is skipped. Free space, then run the "
        "step again (`luthitune resume RUN`, or the same `luthitune train` command): it continues from the last "
        "complete checkpoint."
    )


def timed_saves(every_s: float, clock: Callable[[], float] = time.monotonic):
    """A trainer callback that asks for a checkpoint once ``every_s`` seconds of training have passed since the last
    one (or since training started): a kill loses at most that much work plus one step, and a short run pays for no
    checkpoint it would not need."""
    from transformers import TrainerCallback

    class TimedSaves(TrainerCallback):
        def __init__(self):
            self.since = clock()

        def on_train_begin(self, args, state, control, **kw):
            self.since = clock()

        def on_step_end(self, args, state, control, **kw):
            if clock() - self.since >= every_s and state.global_step < state.max_steps:
                control.should_save = True

        def on_save(self, args, state, control, **kw):
            self.since = clock()

    return TimedSaves()
