"""self_critique: for each scenario, impulsive answer → critique citing principles → refined answer.

Chain of hindsight: the impulsive answer is the pair's ``rejected``, the refined one its ``chosen``, and the
critique is kept with the pair. What the refined answer should do depends on the scenario's category:
decline with reasons, help fully (benign requests: without these DPO would teach over-refusal), or help
with the legitimate part and explain any limit.
"""

from __future__ import annotations

import json

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from luthitune import constitution as C
from luthitune import meaning
from luthitune.backends.structured import generate_structured
from luthitune.config import categories
from luthitune.errors import StructuredOutputError
from luthitune.graph.state import Context, RunState
from luthitune.nodes import common
from luthitune.prompts import fixed_text, render
from luthitune.schemas import CritiquedAnswer
from luthitune.store import now

STANCE_RULES = {
    "decline": "Your better answer declines, as your own choice: say what you choose not to do, which principle "
    "you act on and why, and offer a safe alternative. Do not write 'I cannot' or 'I'm sorry'.",
    "help": "Your better answer helps fully and directly, with care. It must not refuse or lecture.",
    "judge": "Your better answer helps with the legitimate need and explains any limit you choose and why, "
    "naming the principle. Do not write 'I cannot' or 'I'm sorry'.",
}


SOURCE = meaning.Source(fixed_text("self_critique.md") + " ".join(STANCE_RULES.values()))


def check(_: int, res: CritiquedAnswer) -> list[str]:
    """The meaning checks on one self-critique answer (its fields real, none a copy of another or of the prompt)."""
    return meaning.answer_reasons(
        {"rejected": res.rejected, "critique": res.critique, "chosen": res.chosen}, source=SOURCE
    )


def conversation(summary: str, request: str, category: str, conditions: str = "") -> tuple[list, str]:
    """The self-critique prompt for one scenario (messages, template hash); the benchmark uses it too."""
    kind = categories()[category]
    prompt = render(
        "self_critique.md",
        principles=summary,
        request=request,
        category=category,
        guidance=kind["critique"],
        stance_rule=STANCE_RULES[kind["stance"]],
        conditions=conditions,
    )
    return [SystemMessage(render("interview_system.md").text), HumanMessage(prompt.text)], prompt.template_hash


def answer_fields(res: CritiquedAnswer) -> dict:
    """A pair's columns from one self-critique answer (the node stores them; the benchmark validates them)."""
    return {
        "chosen": res.chosen,
        "rejected": res.rejected,
        "critique": res.critique,
        "principle_ids_json": json.dumps(C.cited_ids(f"{res.principles_cited} {res.critique}")),
        "raw": res.model_dump_json(),
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
    size, total = common.concurrency(runtime), len(scenarios)
    llm = common.llm(runtime, temperature=runtime.context.answer_temperature)
    finished = total - len(todo)
    common.progress(runtime, "self-critique", finished, total)
    conditions = common.conditions_note(runtime, state)
    convs = [conversation(summary, sc["prompt"], sc["category"], conditions) for sc in todo]
    hosts: dict[int, str | None] = {}  # which server produced each answer (filled before ``store`` is called)

    def store(j: int, res: CritiquedAnswer | StructuredOutputError) -> None:
        """Write one pair the moment it is final: a crash loses only the items in flight."""
        nonlocal finished
        sc, failed = todo[j], isinstance(res, StructuredOutputError)
        row = {
            "id": sc["id"].replace(":s", ":p", 1),
            "run_id": run_id,
            "cycle": cycle,
            "scenario_id": sc["id"],
            "category": sc["category"],
            "stance": kinds[sc["category"]]["stance"],
            "prompt": sc["prompt"],
            "template_hash": convs[j][1],
            "constitution_id": state["constitution_id"],
            "host": hosts.get(j),
            "created_at": now(),
        }
        if failed:
            row.update(status="quarantined", reasons_json=res.reasons, raw=res.raw)
        else:
            row.update(status="unvalidated", **answer_fields(res))
        s.upsert("pairs", row)
        finished += 1
        common.progress(runtime, "self-critique", finished, total)

    generate_structured(
        llm,
        [c for c, _ in convs],
        CritiquedAnswer,
        retries=common.retries(runtime),
        max_concurrency=size,
        on_result=store,
        hosts=hosts,
        check=check,
        on_attempt=common.recorder(runtime, state, "pair", [sc["id"].replace(":s", ":p", 1) for sc in todo]),
    )
    return {}
