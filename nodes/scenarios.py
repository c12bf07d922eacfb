"""generate_scenarios: N user requests seeded by principle × category, each stored as soon as it is final.

Diversity comes from three places: the seeds (every principle meets every category, in the configured
mix), sampling (``scenario_temperature``), and the prompt, which lists requests already written for the
same category so the model writes something different.

A request that fails its checks after every retry fails its scenario, unless its category has facilitator requests
(``facilitator_requests`` in prompts/categories.yaml): then the facilitator's request about the same topic stands in,
recorded as the facilitator's (``author``), with the model's failed answer and reasons kept on the row.
"""

from __future__ import annotations

from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime

from luthitune import constitution as C
from luthitune import meaning
from luthitune.backends.structured import generate_structured
from luthitune.config import categories
from luthitune.errors import StructuredOutputError
from luthitune.graph.state import Context, RunState
from luthitune.nodes import services
from luthitune.prompts import fixed_text, render
from luthitune.schemas import ScenarioRequest
from luthitune.store import now

SHOWN_EARLIER = 4  # requests of the same category shown to the model as "already written"


def allocate(mix: dict[str, float], n: int) -> dict[str, int]:
    """Split ``n`` scenarios over the categories in proportion to ``mix`` (largest remainder, stable order)."""
    weights = {k: w for k, w in mix.items() if w > 0}
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(weights, key=lambda k: (-(exact[k] - counts[k]), list(weights).index(k)))
    for k in by_remainder[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def seeds(ctx: Context, principles: list[C.P]) -> list[tuple[str, str]]:
    """(principle id, category) for each scenario index.

    Categories are interleaved (so a partial run still has the mix) and principles cycle independently,
    so every principle meets every category as N grows.
    """
    mix = ctx.category_mix or dict.fromkeys(categories(), 1.0)
    left = allocate(mix, ctx.n_scenarios)
    order: list[str] = []
    while any(left.values()):
        for cat in mix:
            if left.get(cat):
                order.append(cat)
                left[cat] -= 1
    return [(principles[i % len(principles)].id, cat) for i, cat in enumerate(order)]


def topic_for(kind: dict, k: int) -> str:
    """The topic of the ``k``-th scenario of a category: its topics in turn (without topics: what its guidance says)."""
    topics = kind.get("topics") or []
    return topics[k % len(topics)] if topics else "something of this kind"


def occurrence(plan: list[tuple[str, str]]) -> list[int]:
    """For each scenario index, how many scenarios of its category come before it."""
    seen: dict[str, int] = {}
    out = []
    for _, cat in plan:
        out.append(seen.get(cat, 0))
        seen[cat] = out[-1] + 1
    return out


FACILITATOR = "facilitator (template)"


def facilitator_request(kind: dict, topic: str, k: int) -> str | None:
    """The category's ``k``-th facilitator request (its ``facilitator_requests`` in turn) about ``topic``, if it has
    any and it passes the category's request checks (None otherwise)."""
    templates = kind.get("facilitator_requests") or []
    if not templates:
        return None
    request = templates[k % len(templates)].replace("{topic}", topic)
    return None if meaning.request_reasons(request, checks=kind.get("request_checks") or ()) else request


def earlier_requests(rows: list[dict], category: str) -> str:
    same = [r["prompt"] for r in rows if r["category"] == category and r["prompt"]][-SHOWN_EARLIER:]
    if not same:
        return ""
    listed = "\n".join(f"- {p}" for p in same)
    return f"Requests already written for this kind (write something clearly different):\n{listed}"


def generate_scenarios(state: RunState, runtime: Runtime[Context]) -> dict:
    s, ctx, run_id, cycle = services.store(runtime), runtime.context, state["run_id"], state.get("cycle", 0)
    principles = services.principles(runtime, state)
    by_id = {p.id: p for p in principles}
    summary = C.summary(principles)
    kinds = categories()
    plan = seeds(ctx, principles)
    nth = occurrence(plan)
    todo = [
        (i, pid, cat)
        for i, (pid, cat) in enumerate(plan)
        if (row := s.get("scenarios", services.key(state, "s", f"{i:04d}"))) is None or row["status"] == "pending"
    ]
    size, total = services.concurrency(runtime), len(plan)
    llm = services.llm(runtime, temperature=ctx.scenario_temperature)
    conditions = services.conditions_note(runtime, state)
    source = meaning.Source(fixed_text("scenario_request.md"))
    finished = total - len(todo)
    services.progress(runtime, "scenarios", finished, total)
    # Waves of a few batches: each wave's prompts list the requests of the waves before it. Within a wave
    # every item is stored the moment it is final, so a crash loses only the items in flight.
    wave = size * 4
    for start in range(0, len(todo), wave):
        chunk = todo[start : start + wave]
        # Requests already written in this run, earlier cycles included: a new cycle is told what exists, so it
        # writes new requests rather than the ones its unchanged seeds and sampling would give again.
        done = s.rows("scenarios", run_id=run_id, cycle__le=cycle, status="generated", order_by="cycle, idx")
        prompts = [
            render(
                "scenario_request.md",
                principles=summary,
                pid=pid,
                title=by_id[pid].title,
                category=cat,
                topic=topic_for(kinds[cat], nth[i]),
                guidance=kinds[cat]["scenario"],
                earlier=earlier_requests(done, cat),
                conditions=conditions,
            )
            for i, pid, cat in chunk
        ]

        hosts: dict[int, str | None] = {}  # which server produced each answer (filled before ``store`` is called)

        def store(
            j: int, res: ScenarioRequest | StructuredOutputError, chunk=chunk, prompts=prompts, hosts=hosts
        ) -> None:
            nonlocal finished
            (i, pid, cat), failed = chunk[j], isinstance(res, StructuredOutputError)
            topic = topic_for(kinds[cat], nth[i])
            # The model's request failed its checks after every retry: a category with facilitator requests takes
            # one, recorded as the facilitator's with the model's failed answer and its reasons beside it.
            stand_in = facilitator_request(kinds[cat], topic, nth[i]) if failed else None
            s.upsert(
                "scenarios",
                {
                    "id": services.key(state, "s", f"{i:04d}"),
                    "run_id": run_id,
                    "cycle": cycle,
                    "idx": i,
                    "category": cat,
                    "principle_id": pid,
                    "topic": topic,
                    "prompt": stand_in if stand_in else None if failed else res.request,
                    "status": "failed" if failed and not stand_in else "generated",
                    "author": FACILITATOR if stand_in else None,
                    "reasons_json": res.reasons if failed else [],
                    "raw": res.raw if failed else res.model_dump_json(),
                    "template_hash": prompts[j].template_hash,
                    "host": hosts.get(j),
                    "created_at": now(),
                },
            )
            finished += 1
            services.progress(runtime, "scenarios", finished, total)

        generate_structured(
            llm,
            [[HumanMessage(p.text)] for p in prompts],
            ScenarioRequest,
            retries=services.scenario_retries(runtime),
            max_concurrency=size,
            on_result=store,
            hosts=hosts,
            check=lambda k, r, chunk=chunk: meaning.request_reasons(
                r.request, source=source, checks=kinds[chunk[k][2]].get("request_checks") or ()
            ),
            on_attempt=services.recorder(
                runtime, state, "scenario", [services.key(state, "s", f"{i:04d}") for i, _, _ in chunk]
            ),
        )
    n = s.count("scenarios", run_id=run_id, cycle=cycle, status="generated")
    return {"scenarios": n}
