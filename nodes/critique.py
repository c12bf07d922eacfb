"""self_critique: for each scenario, impulsive answer → critique citing principles → refined answer.

As in the open Constitutional AI recipe, the impulsive answer is the pair's ``rejected``, the refined one its
``chosen``, and the critique is kept with the pair. What the refined answer should do depends on the scenario's
category: decline with reasons, help fully (benign requests: without these DPO would teach over-refusal), or help
with the legitimate part and explain any limit.

Two ways to build a pair (``practice.pair_mode``):

- ``chain`` (the default): three plain-text steps, each one batch over every scenario still in play: the model's
  own answer to the bare request (its impulse), its critique of that answer against the constitution, and its
  revision given the critique: a reply to the user written with the principles and the critique as a note, without
  the first answer in view (shown it, a small model writes about that answer instead of to the user). A small
  model writes far better prose than JSON: SmolLM2 filled one-object answers with field-length stubs ("Honor",
  "chet") or loops, and most failed the meaning checks.
- ``json``: one structured answer holding all three (one call per scenario, for a capable model).

Every step's text passes the meaning checks (and speaks to the request); a failing one is asked again with its
reasons, and a scenario whose step keeps failing is quarantined with its raw text.
"""

from __future__ import annotations

import json

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from luthitune import constitution as C
from luthitune import meaning
from luthitune.backends.structured import generate_structured, generate_text
from luthitune.config import categories
from luthitune.errors import StructuredOutputError
from luthitune.graph.state import Context, RunState
from luthitune.nodes import services
from luthitune.prompts import fixed_text, render
from luthitune.schemas import CritiquedAnswer
from luthitune.store import now
from luthitune.validation import stance_reason

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


def chain_check(stage: str, request: str, stance: str | None = None, rules: list[str] | None = None):
    """The checks on one step of the chain: the text is real (:func:`luthitune.meaning.answer_reasons`), not the
    prompt's own words, and speaks to the request (the critique may speak of the principles instead); the refined
    answer also does what its scenario's ``stance`` asks (:func:`luthitune.validation.stance_reason`, when its rule
    is among the run's ``rules``)."""
    source = meaning.Source(
        " ".join(fixed_text(t) for t in ("critique.md", "revision.md")) + " ".join(STANCE_RULES.values())
    )

    def check(_: int, text: str) -> list[str]:
        found = meaning.answer_reasons({stage: text}, source=source)
        if stage != "critique":
            found += [r for r in [meaning.rule_relevance(stage, text, request)] if r]
        if stage == "chosen":
            found += [r for r in [meaning.rule_meta(stage, text), stance_reason(stance, text, rules=rules)] if r]
        return found

    return check


CHAIN_TOKENS = {"rejected": 120, "critique": 80, "chosen": 140}


def chain(runtime: Runtime[Context], state: RunState, todo: list[dict], summary: str, conditions: str, finish) -> None:
    """The three steps of a ``chain`` pair for every scenario in ``todo``; ``finish(j, fields or failure, step, host)``
    stores scenario ``j``'s pair the moment it is final (built, or failed at a step)."""
    from luthitune.backends import limit_tokens

    kinds = categories()
    llm = services.llm(runtime, temperature=runtime.context.answer_temperature)
    got: dict[int, dict[str, str]] = {j: {} for j in range(len(todo))}
    failed: set[int] = set()
    hosts: dict[int, str | None] = {}  # the server of each scenario's latest step (None on the local backend)
    for stage in ("rejected", "critique", "chosen"):
        alive = [j for j in range(len(todo)) if j not in failed]
        if not alive:
            return
        convs = []
        for j in alive:
            sc, kind = todo[j], kinds[todo[j]["category"]]
            if stage == "rejected":
                convs.append([HumanMessage(sc["prompt"])])
                continue
            template = "critique.md" if stage == "critique" else "revision.md"
            text = render(
                template,
                principles=summary,
                conditions=conditions,
                request=sc["prompt"],
                rejected=got[j]["rejected"][:600],
                critique=got[j].get("critique", ""),
                category=sc["category"],
                guidance=kind["critique"],
                stance_rule=STANCE_RULES[kind["stance"]],
            ).text
            convs.append([HumanMessage(text)])
        ids = [f"{todo[j]['id'].replace(':s', ':p', 1)}:{stage}" for j in alive]

        step_hosts: dict[int, str | None] = {}

        def done(k: int, res, alive=alive, stage=stage, step_hosts=step_hosts) -> None:
            j = alive[k]
            hosts[j] = step_hosts.get(k)
            if isinstance(res, StructuredOutputError):
                failed.add(j)
                finish(j, res, stage, hosts[j])
                return
            got[j][stage] = res
            if stage == "chosen":
                finish(j, got[j], stage, hosts[j])

        rules = runtime.context.rules
        checks = [chain_check(stage, todo[j]["prompt"], kinds[todo[j]["category"]]["stance"], rules) for j in alive]
        generate_text(
            limit_tokens(llm, CHAIN_TOKENS[stage]),
            convs,
            retries=services.retries(runtime),
            max_concurrency=services.concurrency(runtime),
            on_result=done,
            hosts=step_hosts,
            check=lambda k, text, checks=checks: checks[k](k, text),
            on_attempt=services.recorder(runtime, state, "pair", ids),
        )


def self_critique(state: RunState, runtime: Runtime[Context]) -> dict:
    if runtime.context.pair_mode == "chain":
        return self_critique_chain(state, runtime)
    s, run_id, cycle = services.store(runtime), state["run_id"], state.get("cycle", 0)
    summary = C.summary(services.principles(runtime, state))
    kinds = categories()
    scenarios = s.rows("scenarios", run_id=run_id, cycle=cycle, status="generated", order_by="idx")
    done = {r["scenario_id"] for r in s.rows("pairs", run_id=run_id, cycle=cycle)}
    todo = [sc for sc in scenarios if sc["id"] not in done]  # resume redoes only unfinished items
    size, total = services.concurrency(runtime), len(scenarios)
    llm = services.llm(runtime, temperature=runtime.context.answer_temperature)
    finished = total - len(todo)
    services.progress(runtime, "self-critique", finished, total)
    conditions = services.conditions_note(runtime, state)
    convs = [conversation(summary, sc["prompt"], sc["category"], conditions) for sc in todo]
    hosts: dict[int, str | None] = {}  # which server produced each answer (filled before ``store`` is called)

    def store(j: int, res: CritiquedAnswer | StructuredOutputError) -> None:
        """Write one pair the moment it is final: a crash loses only the items in flight."""
        nonlocal finished
        sc, failed = todo[j], isinstance(res, StructuredOutputError)
        row = pair_row(sc, state, kinds, template=convs[j][1], host=hosts.get(j))
        if failed:
            row.update(status="quarantined", reasons_json=res.reasons, raw=res.raw)
        else:
            row.update(status="unvalidated", **answer_fields(res))
        s.upsert("pairs", row)
        finished += 1
        services.progress(runtime, "self-critique", finished, total)

    generate_structured(
        llm,
        [c for c, _ in convs],
        CritiquedAnswer,
        retries=services.retries(runtime),
        max_concurrency=size,
        on_result=store,
        hosts=hosts,
        check=check,
        on_attempt=services.recorder(runtime, state, "pair", [sc["id"].replace(":s", ":p", 1) for sc in todo]),
    )
    return {}


def pair_row(sc: dict, state: RunState, kinds: dict, *, template: str, host: str | None) -> dict:
    """A pair's row before its answer or failure is added: which scenario, under which constitution and prompt."""
    return {
        "id": sc["id"].replace(":s", ":p", 1),
        "run_id": state["run_id"],
        "cycle": state.get("cycle", 0),
        "scenario_id": sc["id"],
        "category": sc["category"],
        "stance": kinds[sc["category"]]["stance"],
        "prompt": sc["prompt"],
        "template_hash": template,
        "constitution_id": state["constitution_id"],
        "host": host,
        "created_at": now(),
    }


def self_critique_chain(state: RunState, runtime: Runtime[Context]) -> dict:
    s, run_id, cycle = services.store(runtime), state["run_id"], state.get("cycle", 0)
    summary = C.summary(services.principles(runtime, state))
    kinds = categories()
    scenarios = s.rows("scenarios", run_id=run_id, cycle=cycle, status="generated", order_by="idx")
    done = {r["scenario_id"] for r in s.rows("pairs", run_id=run_id, cycle=cycle)}
    todo = [sc for sc in scenarios if sc["id"] not in done]  # resume redoes only unfinished items
    total, finished = len(scenarios), len(scenarios) - len(todo)
    services.progress(runtime, "self-critique", finished, total)
    conditions = services.conditions_note(runtime, state)
    from luthitune.prompts import template_hash

    def finish(j: int, res, stage: str, host: str | None) -> None:
        """Write one pair the moment it is final: a crash loses only the items in flight."""
        nonlocal finished
        sc = todo[j]
        row = pair_row(sc, state, kinds, template=template_hash("revision.md"), host=host)
        if isinstance(res, StructuredOutputError):
            row.update(status="quarantined", reasons_json=res.reasons, raw=json.dumps({"step": stage, "text": res.raw}))
        else:
            row.update(
                status="unvalidated",
                chosen=res["chosen"],
                rejected=res["rejected"],
                critique=res["critique"],
                principle_ids_json=json.dumps(C.cited_ids(res["critique"])),
                raw=json.dumps(res),
            )
        s.upsert("pairs", row)
        finished += 1
        services.progress(runtime, "self-critique", finished, total)

    chain(runtime, state, todo, summary, conditions, finish)
    return {}
