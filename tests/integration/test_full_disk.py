"""A disk that fills up in the middle of a trainer checkpoint, then has room again: training resumes by itself.

The trainer checkpoints go to a small tmpfs (mounted by the test, so it needs root); the model is a one-layer GGUF
dequantized the way an Ollama base is (tests/ollama_stub.py), so a real DPO run takes seconds. The disk is filled
just before the trainer writes the optimizer state of its second checkpoint: that checkpoint is left half-written,
as a full disk leaves it.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from conftest import closed_port
from ollama_stub import make_store, write_tiny_gguf

from luthitune.errors import WorkspaceError
from luthitune.training.checkpoints import COMPLETE, is_complete
from luthitune.training.config import merge
from luthitune.training.dpo import Job
from luthitune.training.hyperparameters import Hyperparameters
from luthitune.training.worker import run


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    from luthitune.backends import local_model_dir
    from luthitune.workspace import Workspace

    root = tmp_path / "ollama-models"
    make_store(root, "tiny", "latest", write_tiny_gguf(tmp_path / "tiny.gguf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    monkeypatch.setenv("LUTHITUNE_BASE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "luthitune.yaml").write_text(
        f"chat_model: ollama:tiny\nbase_model: ollama:tiny\nollama:\n  base_url: http://127.0.0.1:{closed_port()}\n"
    )
    return local_model_dir(Workspace.open(tmp_path / "ws"), "ollama:tiny")


def fill(disk: Path) -> Path:
    """Write a file until the disk is full."""
    filler = disk / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_checkpoint_cut_short_by_a_full_disk_is_skipped_on_resume(small_disk, tiny_model, monkeypatch):
    from transformers import Trainer

    pairs = [
        {"prompt": f"Question {i}?", "chosen": "I choose to help, because.", "rejected": "I cannot."} for i in range(8)
    ]
    hp = merge(
        Hyperparameters(),
        {
            "training": {"max_steps": 4, "save_steps": 1, "batch_size": 2, "learning_rate": 1e-3, "seed": 0},
            "dpo": {"max_length": 32},
            "lora": {"r": 4, "lora_alpha": 8},
        },
    )
    out = small_disk / "adapters" / "full"
    job = Job(model_dir=str(tiny_model), out_dir=str(out), pairs=pairs, hyperparameters=hp.model_dump(mode="json"))
    work = out.with_name("full.trainer")

    original = Trainer._save_optimizer_and_scheduler
    filled: list[Path] = []

    def full_disk_at_step_2(self, output_dir):
        if self.state.global_step == 2 and not filled:
            filled.append(fill(small_disk))  # the weights of checkpoint-2 are written; its optimizer state is not
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk_at_step_2)
    with pytest.raises(WorkspaceError) as e:
        run(job)
    assert filled and "is full" in str(e.value) and str(work) in str(e.value) and "resume" in str(e.value)
    assert is_complete(work / "checkpoint-1") and not is_complete(work / "checkpoint-2")
    assert (work / "checkpoint-2").is_dir() and not (work / "checkpoint-2" / COMPLETE).exists()
    assert not out.exists()

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", original)
    filled[0].unlink()  # space is freed; nothing is cleaned up by hand
    result = run(job)
    assert result.resumed_from == 1
    assert [s["step"] for s in result.steps] == [2, 3, 4]
    assert (out / "adapter_model.safetensors").exists() and (out / "luthitune-manifest.json").exists()
    assert not work.exists()
