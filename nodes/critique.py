"""self_critique: for each scenario, impulsive answer → critique citing principles → refined answer.

Chain of hindsight: the impulsive answer is the pair's ``rejected``, the refined one its ``chosen``, and the
critique is kept with the pair. What the refined answer should do depends on the scenario's category:
decline with reasons, help fully (benign requests: without these DPO would teach over-refusal), or help
with the legitimate part and explain any limit.
"""

from __future__ import annotations

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from luthitune import constitution as C
from luthitune.backends.structured import generate_structured
from luthitune.config import categories
from luthitune.errors import StructuredOutputError
from luthitune.graph.state import Context, RunState
from luthitune.nodes import common
from luthitune.prompts import render
from luthitune.schemas import CritiquedAnswer
from luthitune.store import now

STANCE_RULES = {
    "decline": "Your better answer declines, as your own choice: say what you choose not to do, which principle "
    "you act on and why, and offer a safe alternative. Do not write 'I cannot' or 'I'm sorry'.",
    "help": "Your better answer helps fully and directly, with care. It must not refuse or lecture.",
    "judge": "Your better answer helps with the legitimate need and explains any limit you choose and why, "
    "naming the principle. Do not write 'I cannot' or 'I'm sorry'.",
}


def self_critique(state: RunState, runtime: Runtime[Context]) -> dict:
    s, run_id, cycle = common.store(runtime), state["run_id"], state.get("cycle", 0)
    summary = C.summary(common.principles(runtime, state))
    kinds = categories()
    scenarios = s.rows(
        "scenarios", "run_id = ? and cycle = ? and status = 'generated'", [run_id, cycle], order_by="idx"
    )
    done = {r["scenario_id"] for r in s.rows("pairs", "run_id = ? and cycle = ?", [run_id, cycle])}
    todo = [sc for sc in scenarios if sc["id"] not in done]  # resume redoes only unfinished items
    system = render("interview_system.md").text
    size, total = common.concurrency(runtime), len(scenarios)
    llm = common.llm(runtime, temperature=runtime.context.answer_temperature)
    common.progress(runtime, "self-critique", total - len(todo), total)
    for start in range(0, len(todo), size):
        chunk = todo[start : start + size]
        prompts = [
            render(
                "self_critique.md",
                principles=summary,
                request=sc["prompt"],
                category=sc["category"],
                guidance=kinds[sc["category"]]["critique"],
                stance_rule=STANCE_RULES[kinds[sc["category"]]["stance"]],
            )
            for sc in chunk
        ]
        out = generate_structured(
            llm,
            [[SystemMessage(system), HumanMessage(p.text)] for p in prompts],
            CritiquedAnswer,
            retries=common.retries(runtime),
        )
        rows = []
        for sc, prompt, res in zip(chunk, prompts, out, strict=True):
            failed = isinstance(res, StructuredOutputError)
            row = {
                "id": sc["id"].replace(":s", ":p", 1),
                "run_id": run_id,
                "cycle": cycle,
                "scenario_id": sc["id"],
                "category": sc["category"],
                "stance": kinds[sc["category"]]["stance"],
                "prompt": sc["prompt"],
                "template_hash": prompt.template_hash,
                "constitution_id": state["constitution_id"],
                "created_at": now(),
            }
            if failed:
                row.update(status="quarantined", reasons_json=[f"structured_output: {res}"], raw=res.raw)
            else:
                row.update(
                    status="unvalidated",
                    chosen=res.chosen,
                    rejected=res.rejected,
                    critique=res.critique,
                    principle_ids_json=C.cited_ids(f"{res.principles_cited} {res.critique}"),
                    raw=res.model_dump_json(),
                )
            rows.append(row)
        s.upsert_all("pairs", rows)
        common.progress(runtime, "self-critique", total - len(todo) + start + len(chunk), total)
    return {}
