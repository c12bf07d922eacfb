"""Cancel on the local backend: the continuous batch stops within a decode step, finished answers are kept."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from langchain_core.messages import HumanMessage

from luthitune import cancel
from luthitune.backends import make_chat_model
from luthitune.backends.structured import generate_structured
from luthitune.schemas import ScenarioRequest


def test_cancel_stops_the_continuous_batch(workspace):
    """After the request no transformer block starts (at most the one running then finishes): measured in work, not
    in seconds, so a loaded machine cannot make it pass or fail."""
    llm = make_chat_model(workspace)
    convs = [[HumanMessage(f"Write one short request a user might send about topic {i}.")] for i in range(6)]
    finished: list[int] = []
    after_request: list[str] = []

    def on_result(i, result):
        finished.append(i)
        cancel.request("run-local")

    def count(module, args) -> None:  # runs after the block's own cancel check (hooks run in registration order)
        if cancel.requested():
            after_request.append(threading.current_thread().name)

    # The blocks as the runtime finds them (every ModuleList), whether the model is bare or wrapped by PEFT after an
    # earlier test in this process loaded an adapter.
    blocks = [b for m in llm.runtime.model.modules() if isinstance(m, torch.nn.ModuleList) for b in m]
    assert blocks
    hooks = [block.register_forward_pre_hook(count) for block in blocks]
    try:
        with cancel.scope("run-local"), pytest.raises(cancel.Cancelled):
            generate_structured(llm, convs, ScenarioRequest, retries=0, max_concurrency=2, on_result=on_result)
    finally:
        for h in hooks:
            h.remove()
    assert 1 <= len(finished) < 6  # the first answer was handed over; the rest were not generated
    assert len(after_request) <= 1, after_request  # the block running at the request, at most: no further step
    # The generation thread let go of the weights before the cancellation reached the caller (resume, training).
    assert llm.runtime.lock.acquire(blocking=False)
    llm.runtime.lock.release()


def test_cancel_during_training_then_train_again(workspace):
    """Cancel between training steps (the web UI's Cancel), then Resume: training continues to the end."""
    from fakes import SchemaFakeModel

    from luthitune import facilitator as A
    from luthitune.ui.jobs import Workbench

    wb = Workbench(workspace, llm=SchemaFakeModel())
    p = wb.protocol()
    run = p.start(
        {
            "n_scenarios": 3,
            "review_sample": 0,
            "train": {"max_steps": 4, "max_length": 64, "batch_size": 1, "min_pairs": 1},
            "evaluation": {"probes_per_set": 1, "max_new_tokens": 16},
        }
    )

    def step(answer=None):
        job = wb.submit(run, answer)
        wb.wait(run, 600)
        assert not job.active and job.error is None, job.error
        return p.status(run)

    st = step()
    for answer in ("/done", A.approve(), A.approve()):  # end the interview, consent review, constitution
        st = step(answer)
    assert st.interrupt["type"] == "confirm_training"
    job = wb.submit(run, A.approve(), what="DPO training")
    deadline = time.time() + 600
    while job.progress.get("training", {}).get("done", 0) < 1 and job.active and time.time() < deadline:
        time.sleep(0.05)
    assert wb.cancel(run)
    wb.wait(run, 600)
    assert job.outcome == "cancelled", job.error
    steps = p.store.rows("training_steps", training_id=f"{run}:c0:train")
    assert 1 <= len(steps) < 4
    st = p.status(run)
    # Stopped inside train_dpo (Resume continues), or, depending on where LangGraph was, asking again.
    assert st.next == ["train_dpo"] and (st.status == "interrupted" or st.interrupt["type"] == "confirm_training")
    st = step(A.approve() if st.status == "waiting" else None)
    assert st.interrupt and st.interrupt["type"] == "revision_review", (wb.job(run).error, st)
    assert max(s["step"] for s in p.store.rows("training_steps", training_id=f"{run}:c0:train")) == 4
