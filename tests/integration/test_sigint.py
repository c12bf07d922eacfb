"""Ctrl-C on a real ``luthitune`` process with the embedded model: SIGINT to exit, measured.

Each case sends SIGINT to a subprocess at a known point: while the model writes an interview reply, in the middle
of a long prefill, and during the self-critique batch; and twice in a row. The process must exit with 130 within
``LIMIT_S`` of the first signal, name the run and the command that resumes it, and leave the step resumable.

The target is 2 s on an idle machine. The test measures the machine's load when it starts and allows
``LIMIT_S × (runnable processes per core)`` when that is above 1; on a machine with more than
``HEAVY_LOAD`` runnable processes per core the timing says nothing about this code, and the test skips, saying so.
The run is brought to each point in-process with the fake model, so only the step under test runs the real one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fakes import SchemaFakeModel

from luthitune import cancel
from luthitune.protocol import Protocol

LIMIT_S = 2.0
HEAVY_LOAD = 4.0  # runnable processes per core above which the test skips
LUTHITUNE = str(Path(sys.executable).with_name("luthitune"))


def time_limit() -> float:
    per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    if per_core > HEAVY_LOAD:
        pytest.skip(f"machine heavily loaded ({per_core:.1f} runnable per core): a 2 s target cannot be measured")
    return LIMIT_S * max(1.0, per_core)


class Luthitune:
    """A ``luthitune -v`` subprocess whose output is read line by line as it comes."""

    def __init__(self, *args: str):
        env = {**os.environ, "COLUMNS": "300", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [LUTHITUNE, "-v", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self.seen = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.seen:
                self.lines.append(line.rstrip())
                self.seen.notify_all()

    def wait_for(self, text: str, timeout: float = 240) -> None:
        with self.seen:
            ok = self.seen.wait_for(lambda: any(text in x for x in self.lines) or self.proc.poll() is not None, timeout)
        assert ok and any(text in x for x in self.lines), f"never printed {text!r}:\n" + self.output

    def interrupt(self, presses: int = 1) -> float:
        """SIGINT (``presses`` times, 50 ms apart); seconds from the first signal to the process's exit."""
        t0 = time.perf_counter()
        for i in range(presses):
            if i:
                time.sleep(0.05)
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("no exit 60 s after SIGINT:\n" + self.output)
        elapsed = time.perf_counter() - t0
        self.reader.join(5)
        return elapsed

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def at_interview(workspace):
    """A run waiting for the facilitator's first message (the opening reply written by the fake model)."""
    p = Protocol(workspace, llm=SchemaFakeModel())
    run = p.start()
    assert p.advance(run).interrupt["type"] == "interview"
    return Protocol(workspace), run


def check_stopped(p: Protocol, run: str, proc: Luthitune, elapsed: float, limit: float, step: str) -> None:
    print(f"SIGINT → exit: {elapsed:.2f} s (limit {limit:.2f} s)")
    assert proc.proc.returncode == 130, proc.output
    assert elapsed < limit, f"exit took {elapsed:.2f} s after SIGINT (limit {limit:.2f} s):\n{proc.output}"
    assert f"luthitune -w {p.ws.root} resume {run}" in proc.output, proc.output  # run outside the workspace
    st = p.status(run)
    assert st.status == "interrupted" and st.next == [step], st


@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_sigint_during_an_interview_reply(workspace, at_interview, presses):
    p, run = at_interview
    limit = time_limit()
    before = p.store.count("messages", run_id=run)
    proc = Luthitune("-w", str(workspace.root), "answer", run, "What do you do when a request could hurt someone?")
    proc.wait_for("Prefill done")  # the reply's tokens are being generated
    time.sleep(0.5)
    elapsed = proc.interrupt(presses)
    check_stopped(p, run, proc, elapsed, limit, "interview")
    # The facilitator's message is kept with the run; the unfinished reply is not stored.
    assert p.store.count("messages", run_id=run, role="assistant") == 1
    assert p.store.count("messages", run_id=run) <= before + 1


def test_sigint_in_the_middle_of_a_prefill(workspace, at_interview):
    p, run = at_interview
    limit = time_limit()
    # About 3,000 tokens of prompt: its prefill is one forward pass that takes seconds on a CPU.
    long_message = " ".join(f"Point {i}: a refusal should give its reason and offer another way." for i in range(200))
    proc = Luthitune("-w", str(workspace.root), "answer", run, long_message)
    proc.wait_for("Prefill: 1 prompt(s)")
    elapsed = proc.interrupt()
    assert not any("Prefill done" in x for x in proc.lines), "the signal did not land inside the prefill"
    check_stopped(p, run, proc, elapsed, limit, "interview")


def test_sigint_during_self_critique(workspace):
    fake = Protocol(workspace, llm=SchemaFakeModel())
    run = fake.start({"autopilot": True, "n_scenarios": 6, "interview_turns": 1, "review_sample": 0})

    def stop_after_scenarios(node: str, update: dict) -> None:
        if node == "generate_scenarios":
            cancel.request(run)  # the fake's scenarios are stored; self-critique is left to the real model

    with pytest.raises(cancel.Cancelled):
        fake.advance(run, on_update=stop_after_scenarios)
    p = Protocol(workspace)
    assert p.status(run).next == ["self_critique"]
    limit = time_limit()
    proc = Luthitune("-w", str(workspace.root), "resume", run)
    proc.wait_for("Prefill done")  # the batch of critiques is being decoded
    time.sleep(1.0)
    elapsed = proc.interrupt()
    check_stopped(p, run, proc, elapsed, limit, "self_critique")
    assert p.store.count("pairs", run_id=run) < 6
