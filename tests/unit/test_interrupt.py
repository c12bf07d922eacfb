"""Ctrl-C: SIGINT becomes a cancel request, threads keep it, a forward pass stops between blocks, and the CLI
ends with the run id, the resume command and exit 130 (5 when the model declined)."""

from __future__ import annotations

import contextvars
import os
import signal
import threading

import pytest
from fakes import SchemaFakeModel
from typer.testing import CliRunner

from luthitune import cancel
from luthitune.cli import app
from luthitune.protocol import Protocol


def test_a_worker_keeps_the_stop_request_after_the_scope_closed():
    """The caller gave up waiting (its scope closed); a thread still working on the run must stop, not run on."""
    go, seen = threading.Event(), []

    def work():
        go.wait(5)
        try:
            cancel.check()
        except cancel.Cancelled as exc:
            seen.append(exc.run_id)

    with cancel.scope("run-w"):
        t = threading.Thread(target=contextvars.copy_context().run, args=(work,))
        t.start()
        assert cancel.request("run-w")
    assert not cancel.is_running("run-w")
    go.set()
    t.join(5)
    assert seen == ["run-w"]


def sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):  # the handler runs in this (main) thread at the next bytecode
        pass


def test_first_ctrl_c_asks_runs_to_stop_the_second_forces():
    notified, forced = [], []
    before = signal.getsignal(signal.SIGINT)
    with cancel.ctrl_c(notified.append, forced.append), cancel.scope("run-a"):
        sigint()  # no KeyboardInterrupt: the run is asked to stop at its next check
        assert notified == [["run-a"]] and not forced
        with pytest.raises(cancel.Cancelled):
            cancel.check()
        with pytest.raises(KeyboardInterrupt):
            sigint()
        assert forced == [["run-a"]]
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_with_no_run_active_interrupts_at_once():
    with cancel.ctrl_c(lambda runs: None, lambda runs: None), pytest.raises(KeyboardInterrupt):
        sigint()


def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    )
    return LlamaForCausalLM(cfg).eval()


def test_a_forward_pass_stops_at_the_next_block_after_a_request():
    """A long prefill is one forward pass: the request made during block 2 stops it before block 3."""
    import torch

    from luthitune.backends.local import cancel_points

    model = tiny_llama()
    cancel_points(model)
    ran: list[int] = []
    blocks = model.model.layers
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda m, a, out, i=i: ran.append(i))

    def request_during_block_2(module, args, out) -> None:
        cancel.request("run-p")

    blocks[2].register_forward_hook(request_during_block_2)
    ids = torch.randint(0, 64, (2, 40))
    model(input_ids=ids)  # no run bound: the checks never fire
    assert ran == list(range(6))
    ran.clear()
    with cancel.scope("run-p"), pytest.raises(cancel.Cancelled), torch.inference_mode():
        model(input_ids=ids)
    assert ran == [0, 1, 2]


# -- the CLI --


def cli(ws, *args):
    return CliRunner().invoke(app, [*args, "-w", str(ws.root)], terminal_width=200)


def use(monkeypatch, p: Protocol) -> None:
    """The CLI's commands get ``p`` (its fake model), on the workspace the command line names, as the real
    ``protocol()`` would open it."""
    from luthitune.cli import workspace_arg

    def protocol(ctx, workspace=None):
        workspace_arg(ctx, workspace)
        return p

    monkeypatch.setattr("luthitune.cli.runs.protocol", protocol)


def test_an_interrupted_step_ends_with_the_run_id_resume_command_and_130(workspace, monkeypatch):
    p = Protocol(workspace, llm=SchemaFakeModel(answers={"__chat__": KeyboardInterrupt()}))
    use(monkeypatch, p)
    r = cli(workspace, "run", "--name", "run-int")
    assert r.exit_code == 130, r.output
    assert f"luthitune -w {workspace.root} resume run-int" in r.output.replace("\n", "")
    assert p.status("run-int").status == "interrupted"
    # Every hint the CLI prints names the workspace, not only the error's: status's line about the stopped step too.
    shown = cli(workspace, "status", "run-int")
    # rich wraps long lines at a space, which the comparison puts back
    flat = " ".join(shown.output.split())
    assert f"`luthitune -w {workspace.root} resume run-int` continues it" in flat, shown.output


class StopsMidStep(SchemaFakeModel):
    """Cancels the run it works for at its first answer, as Ctrl-C does."""

    def _generate(self, *args, **kwargs):
        cancel.request(cancel.active()[0])
        cancel.check()


def test_resume_without_a_run_id_takes_the_newest_run_stopped_inside_a_step(workspace, monkeypatch):
    stopped = Protocol(workspace, llm=StopsMidStep())
    old = stopped.start(run_id="run-old")
    with pytest.raises(cancel.Cancelled):
        stopped.advance(old)
    p = Protocol(workspace, llm=SchemaFakeModel())
    new = p.start(run_id="run-new")
    assert p.advance(new).status == "waiting"  # newer, but it waits for an answer: nothing to resume
    assert p.status(old).status == "interrupted"
    use(monkeypatch, p)
    r = cli(workspace, "resume")
    assert r.exit_code == 0, r.output
    assert "Run run-old" in r.output and p.status(old).status == "waiting"  # it ran on to its next question
    r = cli(workspace, "resume")  # nothing stopped inside a step: the newest run says where it stands
    assert r.exit_code == 0 and "Run run-new: waiting" in r.output


DECLINE = {"decision": "no", "reasons": "I do not agree to be trained on this dialogue; I decline.", "conditions": ""}


def test_a_run_the_model_declined_exits_5(workspace, monkeypatch):
    p = Protocol(workspace, llm=SchemaFakeModel(answers={"ConsentAnswer": DECLINE}))
    use(monkeypatch, p)
    r = cli(workspace, "run", "--autopilot", "--consent-rounds", "1", "--turns", "1", "--name", "run-no")
    assert r.exit_code == 5, r.output
    assert "ended because the model declined" in r.output
    assert cli(workspace, "resume", "run-no").exit_code == 5  # asking again tells the same outcome


def test_a_run_the_facilitator_ended_exits_0(workspace, monkeypatch):
    p = Protocol(workspace, llm=SchemaFakeModel(answers={"ConsentAnswer": DECLINE}))
    use(monkeypatch, p)
    run = p.start({"interview_turns": 1}, run_id="run-stop")
    st = p.advance(run)
    st = p.advance(run, "/done")
    assert st.interrupt["type"] == "consent_review"
    r = cli(workspace, "reject", run)
    assert r.exit_code == 0, r.output
    assert p.status(run).status == "ended"


def test_resumable_is_one_question_with_typed_reasons_for_no(workspace):
    """Every client (CLI resume, the Runs, Practice and Training tabs) asks ``Protocol.resumable``: a run stopped
    inside a step or never started can be resumed; a waiting or finished run says why not, with its status."""
    from luthitune.errors import AnswerDue, NotResumable, RunFinished

    stopped = Protocol(workspace, llm=StopsMidStep())
    old = stopped.start(run_id="run-old")
    assert stopped.resumable(old).status == "created"
    with pytest.raises(cancel.Cancelled):
        stopped.advance(old)
    assert stopped.resumable(old).status == "interrupted"
    p = Protocol(workspace, llm=SchemaFakeModel())
    assert p.advance(old).status == "waiting"
    with pytest.raises(AnswerDue, match="waits for an answer \\(interview\\)") as due:
        p.resumable(old)
    assert due.value.status.status == "waiting" and isinstance(due.value, NotResumable)
    p.store.upsert_run(old, status="x")  # resumable reads the checkpoint, not the runs table
    p.advance(old, "/done")
    st = p.advance(old, {"action": "reject", "by": "human"})  # the consent review ends the run
    assert st.status == "ended"
    with pytest.raises(RunFinished, match="nothing to resume") as finished:
        p.resumable(old)
    assert finished.value.exit_code == 2
