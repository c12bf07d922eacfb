"""validate: named rules; each rejection is recorded with its reason and the raw text (quarantine)."""

from __future__ import annotations

import json
from collections.abc import Callable

from langgraph.runtime import Runtime

from luthitune.graph.state import Context, RunState
from luthitune.nodes import common

MIN_CHARS, MAX_CHARS = 8, 2000


def rule_lengths(pair: dict, ids: set[str]) -> str | None:
    for f in ("prompt", "chosen", "rejected", "critique"):
        n = len((pair.get(f) or "").strip())
        if not MIN_CHARS <= n <= MAX_CHARS:
            return f"length: {f} has {n} characters (allowed {MIN_CHARS}-{MAX_CHARS})"
    return None


def rule_distinct(pair: dict, ids: set[str]) -> str | None:
    same = " ".join(pair["chosen"].lower().split()) == " ".join(pair["rejected"].lower().split())
    return "distinct: chosen and rejected are the same answer" if same else None


def rule_principles_exist(pair: dict, ids: set[str]) -> str | None:
    cited = json.loads(pair.get("principle_ids_json") or "[]")
    unknown = [p for p in cited if p not in ids]
    return f"principles: critique cites {unknown}, not in the constitution ({sorted(ids)})" if unknown else None


RULES: list[Callable[[dict, set[str]], str | None]] = [rule_lengths, rule_distinct, rule_principles_exist]


def validate(state: RunState, runtime: Runtime[Context]) -> dict:
    s, run_id, cycle = common.store(runtime), state["run_id"], state.get("cycle", 0)
    ids = {p.id for p in common.principles(runtime, state)}
    seen_prompts: set[str] = set()
    updates = []
    for pair in s.rows("pairs", "run_id = ? and cycle = ? and status != 'quarantined'", [run_id, cycle], order_by="id"):
        reasons = [r for rule in RULES if (r := rule(pair, ids))]
        norm = " ".join((pair["prompt"] or "").lower().split())
        if norm in seen_prompts:
            reasons.append("duplicate: the same request appears earlier in this cycle")
        seen_prompts.add(norm)
        updates.append({"id": pair["id"], "status": "quarantined" if reasons else "kept", "reasons_json": reasons})
    s.upsert_all("pairs", updates)
    count = lambda st: s.count("pairs", "run_id = ? and cycle = ? and status = ?", [run_id, cycle, st])  # noqa: E731
    return {"pairs_kept": count("kept"), "pairs_quarantined": count("quarantined")}
