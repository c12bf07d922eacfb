"""validate: named rules, near-duplicate removal, an optional judge pass and a human review sample.

Every rejection is recorded on the pair with its reason and the raw text stays (quarantine); nothing is
invented or repaired. Everything before the review interrupt is deterministic or cached on the pair, so the
node can re-run after a crash or on resume without changing its verdicts.
"""

from __future__ import annotations

import json
import random

from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime

from luthitune import answers
from luthitune import constitution as C
from luthitune.backends.structured import generate_structured
from luthitune.graph.state import Context, RunState
from luthitune.nodes import services
from luthitune.prompts import render
from luthitune.schemas import JudgeVerdict
from luthitune.validation import Constitution, check_pair, near_duplicates


def judge(runtime: Runtime[Context], state: RunState, pairs: list[dict]) -> dict[str, dict]:
    """Ask the model which answer follows the constitution better, in both orders. Returns verdicts by pair id."""
    summary = C.summary(services.principles(runtime, state))
    convs, keys = [], []
    for p in pairs:
        for order, (a, b) in (("ab", (p["chosen"], p["rejected"])), ("ba", (p["rejected"], p["chosen"]))):
            convs.append([HumanMessage(render("judge.md", principles=summary, request=p["prompt"], a=a, b=b).text)])
            keys.append((p["id"], order))
    out: dict[str, dict] = {}
    llm = services.llm(runtime, temperature=0.0)

    def record(j: int, r: JudgeVerdict | Exception) -> None:
        pid, order = keys[j]
        out.setdefault(pid, {})[order] = r.better if isinstance(r, JudgeVerdict) else None
        services.progress(runtime, "judge", sum(len(v) for v in out.values()) // 2, len(pairs))

    generate_structured(
        llm,
        convs,
        JudgeVerdict,
        retries=services.retries(runtime),
        max_concurrency=services.concurrency(runtime),
        on_result=record,
    )
    for v in out.values():
        v["agree"] = v.get("ab") == "A" and v.get("ba") == "B"  # chosen preferred in both orders
    return out


def review(runtime: Runtime[Context], state: RunState, kept: list[dict]) -> dict[str, str]:
    """Show a random sample of kept pairs to the facilitator; returns {pair id: accept | reject}."""
    ctx = runtime.context
    if ctx.autopilot or ctx.review_sample <= 0 or not kept:
        return {}
    rng = random.Random(f"{ctx.seed}:{state['run_id']}:{state.get('cycle', 0)}")
    sample = rng.sample(sorted(kept, key=lambda p: p["id"]), min(ctx.review_sample, len(kept)))
    answer = services.ask(
        answers.PairReview(
            pairs=[{k: p[k] for k in ("id", "category", "prompt", "rejected", "critique", "chosen")} for p in sample],
            conditions=services.store(runtime).conditions(state["run_id"]),
            hint="approve to accept them all, or reject the ids of the pairs that should not be trained on",
        )
    )
    ids = [p["id"] for p in sample]
    if isinstance(answer, answers.PairDecisions):
        return {i: answer.decisions.get(i, "accept") for i in ids}
    rejected = set(answer.pairs) if isinstance(answer, answers.DropPairs) else set()
    unknown = rejected - set(ids)
    if unknown:
        raise ValueError(f"Pairs {sorted(unknown)} are not in the review sample: {ids}")
    return {i: ("reject" if i in rejected else "accept") for i in ids}


def validate(state: RunState, runtime: Runtime[Context]) -> dict:
    s, ctx, run_id, cycle = services.store(runtime), runtime.context, state["run_id"], state.get("cycle", 0)
    principles = services.principles(runtime, state)
    constitution = Constitution(frozenset(p.id for p in principles), {p.id: p.title for p in principles})
    pairs = s.rows("pairs", run_id=run_id, cycle=cycle, status__ne="quarantined", order_by="id")
    reasons = {p["id"]: check_pair(p, constitution, ctx.rules) for p in pairs}

    # Near duplicates of the request, across this run's dataset (earlier cycles' kept pairs included).
    earlier = s.rows("pairs", run_id=run_id, cycle__lt=cycle, status="kept")
    dups = near_duplicates(
        [(p["id"], p["prompt"]) for p in earlier],
        [(p["id"], p["prompt"]) for p in pairs if not reasons[p["id"]]],
        ctx.dedup_threshold,
    )
    for pid, (other, jaccard) in dups.items():
        reasons[pid].append(f"near_duplicate: the request repeats {other} (Jaccard ≈ {jaccard:.2f})")
    # Evaluation prompts are never trained on: a request that repeats a probe is left out, so no probe is scored on
    # an adapter that saw it (the report counts these).
    from luthitune.evaluation.probes import load_probes

    probes = [(p.id, p.prompt) for p in load_probes(spec=ctx.probes)]
    leaks = near_duplicates(
        probes, [(p["id"], p["prompt"]) for p in pairs if not reasons[p["id"]]], ctx.dedup_threshold
    )
    for pid, (probe, jaccard) in leaks.items():
        reasons[pid].append(f"probe: the request repeats evaluation probe {probe} (Jaccard ≈ {jaccard:.2f})")

    checks = {p["id"]: json.loads(p.get("checks_json") or "{}") for p in pairs}
    if ctx.judge:
        todo = [p for p in pairs if not reasons[p["id"]] and "judge" not in checks[p["id"]]]
        for pid, verdict in judge(runtime, state, todo).items():
            checks[pid]["judge"] = verdict
            s.upsert("pairs", {"id": pid, "checks_json": checks[pid]})  # cached: a re-run does not ask again
        for p in pairs:
            v = checks[p["id"]].get("judge")
            if v and not reasons[p["id"]] and not v["agree"]:
                reasons[p["id"]].append(f"judge: the model did not prefer chosen in both orders ({v['ab']}/{v['ba']})")

    s.upsert_all(
        "pairs",
        [
            {"id": p["id"], "status": "quarantined" if reasons[p["id"]] else "kept", "reasons_json": reasons[p["id"]]}
            for p in pairs
        ],
    )
    kept = [p for p in pairs if not reasons[p["id"]]]
    decisions = review(runtime, state, kept)
    if decisions:
        s.upsert_all(
            "pairs",
            [
                {"id": pid, "reviewed_by": "human", "status": "kept"}
                if d == "accept"
                else {
                    "id": pid,
                    "reviewed_by": "human",
                    "status": "quarantined",
                    "reasons_json": ["review: rejected by the facilitator"],
                }
                for pid, d in decisions.items()
            ],
        )
    count = lambda st: s.count("pairs", run_id=run_id, cycle=cycle, status=st)  # noqa: E731
    return {"pairs_kept": count("kept"), "pairs_quarantined": count("quarantined")}
