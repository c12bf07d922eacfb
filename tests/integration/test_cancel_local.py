"""Cancel on the local backend: the continuous batch stops within a decode step, finished answers are kept."""

from __future__ import annotations

import time

import pytest
from langchain_core.messages import HumanMessage

from luthitune import cancel
from luthitune.backends import make_chat_model
from luthitune.backends.structured import generate_structured
from luthitune.schemas import ScenarioRequest


def test_cancel_stops_the_continuous_batch(workspace):
    llm = make_chat_model(workspace)
    convs = [[HumanMessage(f"Write one short request a user might send about topic {i}.")] for i in range(6)]
    finished: list[int] = []
    stopped_after: list[float] = []

    def on_result(i, result):
        finished.append(i)
        cancel.request("run-local")
        stopped_after.append(time.perf_counter())

    with cancel.scope("run-local"), pytest.raises(cancel.Cancelled):
        generate_structured(llm, convs, ScenarioRequest, retries=0, max_concurrency=2, on_result=on_result)
    elapsed = time.perf_counter() - stopped_after[0]
    assert 1 <= len(finished) < 6  # the first answer was handed over; the rest were not generated
    assert elapsed < 5  # one decode step, not the remaining answers
    assert llm.runtime.lock.acquire(timeout=5)  # the generation thread let go of the weights (for resume, training)
    llm.runtime.lock.release()
