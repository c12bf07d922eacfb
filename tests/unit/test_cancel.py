"""Cancelling a running step leaves a resumable state: finished items stay, resume redoes only the rest."""

from __future__ import annotations

import threading

import pytest
from fakes import SchemaFakeModel, allow_small_runs, evaluator

from luthitune import cancel
from luthitune.backends.structured import generate_structured
from luthitune.protocol import Protocol
from luthitune.schemas import ScenarioRequest
from luthitune.training.dpo import TrainResult


@pytest.fixture
def protocol(workspace, tmp_path):
    def trainer(pairs, name):
        return TrainResult(str(tmp_path), {"loss": 0.5})

    llm = SchemaFakeModel()
    allow_small_runs(workspace)
    p = Protocol(workspace, llm=llm, trainer=trainer, evaluator=evaluator)
    p.llm = llm
    return p


def test_cancel_mid_generation_then_resume_redoes_only_unfinished(protocol):
    p = protocol
    run = p.start({"autopilot": True, "n_scenarios": 6, "interview_turns": 1})

    def on_progress(event):
        if event["task"] == "scenarios" and event["done"] == 2:
            assert cancel.request(run)

    with pytest.raises(cancel.Cancelled):
        p.advance(run, on_progress=on_progress)
    assert not cancel.is_running(run)  # the scope ended with the step
    st = p.status(run)
    assert st.status == "interrupted" and st.next == ["generate_scenarios"]
    stored = {r["id"] for r in p.store.rows("scenarios", run_id=run)}
    assert 2 <= len(stored) < 6  # what finished is kept; nothing was marked failed
    assert p.store.count("scenarios", run_id=run, status="failed") == 0

    events: list[dict] = []
    assert p.advance(run, on_progress=events.append).status == "done"
    first = next(e for e in events if e["task"] == "scenarios")
    assert first["done"] == len(stored)  # resume started from the stored items
    assert p.store.count("scenarios", run_id=run) == 6
    assert p.store.count("pairs", run_id=run) == 6


def test_request_is_false_when_nothing_runs():
    assert cancel.request("run-nothing") is False
    cancel.check()  # no run bound here: never raises


def test_context_reaches_threads_started_with_copy_context():
    import contextvars

    seen: list[BaseException] = []
    with cancel.scope("run-x"):
        cancel.request("run-x")

        def work():
            try:
                cancel.check()
            except cancel.Cancelled as exc:
                seen.append(exc)

        t = threading.Thread(target=contextvars.copy_context().run, args=(work,))
        t.start()
        t.join()
    assert seen and seen[0].run_id == "run-x"


def test_cancelled_generation_is_not_quarantined():
    """A Cancelled answer is re-raised, never retried nor turned into a failed (quarantined) item."""
    results: list = []

    class Cancelling(SchemaFakeModel):
        def batch_as_completed(self, inputs, config=None, *, return_exceptions=False, **kw):
            yield 0, self.invoke(inputs[0], **kw)
            for j in range(1, len(inputs)):
                yield j, cancel.Cancelled("run-y")

    with pytest.raises(cancel.Cancelled):
        generate_structured(
            Cancelling(),
            [[("user", "a")], [("user", "b")]],
            ScenarioRequest,
            on_result=lambda i, r: results.append((i, r)),
        )
    assert [i for i, _ in results] == [0]
