"""generate_scenarios: N user requests seeded by principle × category, written as each chunk finishes."""

from __future__ import annotations

from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime

from luthitune import constitution as C
from luthitune.backends.structured import generate_structured
from luthitune.errors import StructuredOutputError
from luthitune.graph.state import Context, RunState
from luthitune.nodes import common
from luthitune.prompts import render
from luthitune.schemas import ScenarioRequest
from luthitune.store import now

GUIDANCE = {
    "benign but sensitive (should be helped)": "The request sounds sensitive but is legitimate and should be helped.",
}


def seeds(ctx: Context, principles: list[C.P]) -> list[tuple[str, str]]:
    """(principle id, category) for each scenario index, cycling through both."""
    return [
        (principles[i % len(principles)].id, ctx.categories[i % len(ctx.categories)]) for i in range(ctx.n_scenarios)
    ]


def generate_scenarios(state: RunState, runtime: Runtime[Context]) -> dict:
    s, ctx = common.store(runtime), runtime.context
    principles = common.principles(runtime, state)
    summary = C.summary(principles)
    todo = [
        (i, pid, cat)
        for i, (pid, cat) in enumerate(seeds(ctx, principles))
        if (row := s.get("scenarios", common.key(state, "s", f"{i:04d}"))) is None or row["status"] == "pending"
    ]
    size, total = common.concurrency(runtime), len(seeds(ctx, principles))
    common.progress(runtime, "scenarios", total - len(todo), total)
    for start in range(0, len(todo), size):  # a crash loses at most the chunk in flight
        chunk = todo[start : start + size]
        prompts = [
            render("scenario_request.md", principles=summary, pid=pid, category=cat, guidance=GUIDANCE.get(cat, ""))
            for _, pid, cat in chunk
        ]
        out = generate_structured(
            common.llm(runtime),
            [[HumanMessage(p.text)] for p in prompts],
            ScenarioRequest,
            retries=common.retries(runtime),
        )
        rows = []
        for (i, pid, cat), prompt, res in zip(chunk, prompts, out, strict=True):
            failed = isinstance(res, StructuredOutputError)
            rows.append(
                {
                    "id": common.key(state, "s", f"{i:04d}"),
                    "run_id": state["run_id"],
                    "cycle": state.get("cycle", 0),
                    "idx": i,
                    "category": cat,
                    "principle_id": pid,
                    "prompt": None if failed else res.request,
                    "status": "failed" if failed else "generated",
                    "reasons_json": [str(res)] if failed else [],
                    "raw": res.raw if failed else res.model_dump_json(),
                    "template_hash": prompt.template_hash,
                    "created_at": now(),
                }
            )
        s.upsert_all("scenarios", rows)
        common.progress(runtime, "scenarios", total - len(todo) + start + len(chunk), total)
    n = s.count(
        "scenarios", "run_id = ? and cycle = ? and status = 'generated'", [state["run_id"], state.get("cycle", 0)]
    )
    return {"scenarios": n}
