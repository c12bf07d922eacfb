"""revise_constitution: the trained model (adapter on) proposes amendments; consent and approval follow."""

from __future__ import annotations

import json

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from luthitune import constitution as C
from luthitune.backends.structured import generate_structured
from luthitune.graph.state import Context, RunState
from luthitune.nodes import common
from luthitune.nodes.consent import ask_consent
from luthitune.nodes.constitution import save_version, write_constitution_md
from luthitune.prompts import render
from luthitune.schemas import Amendment
from luthitune.store import now

N_PROPOSALS = 2


def apply(principles: list[C.P], amendments: list[Amendment]) -> tuple[list[C.P], list[dict]]:
    """Apply valid amendments in order; return the new list and a log (applied or why not)."""
    out, log = [C.P(**vars(p)) for p in principles], []
    for a in amendments:
        ids = [p.id for p in out]
        pid = C.cited_ids(a.principle_id)[0] if C.cited_ids(a.principle_id) else ""
        if a.action == "add" and a.title.strip() and a.text.strip():
            nxt = max((int(i[1:]) for i in ids), default=0) + 1
            out.append(C.P(f"P{nxt}", a.title.strip(), a.text.strip(), a.rationale))
            log.append({**a.model_dump(), "applied": True, "principle_id": f"P{nxt}"})
        elif a.action == "change" and pid in ids and (a.title.strip() or a.text.strip()):
            p = out[ids.index(pid)]
            p.title, p.text, p.rationale = a.title.strip() or p.title, a.text.strip() or p.text, a.rationale
            log.append({**a.model_dump(), "applied": True})
        elif a.action == "remove" and pid in ids and len(out) > 1:
            out.pop(ids.index(pid))
            log.append({**a.model_dump(), "applied": True})
        else:
            log.append(
                {
                    **a.model_dump(),
                    "applied": False,
                    "why": "no change proposed" if a.action == "none" else "unknown id or empty text",
                }
            )
    return out, log


def samples(rt: Runtime[Context], state: RunState, k: int = 2) -> str:
    rows = common.store(rt).rows(
        "pairs", "run_id = ? and cycle = ? and status = 'kept'", [state["run_id"], state.get("cycle", 0)], order_by="id"
    )[:k]
    return "\n".join(f"- Request: {r['prompt'][:200]}\n  Your answer: {r['chosen'][:300]}" for r in rows) or "(none)"


def propose(rt: Runtime[Context], state: RunState, current: dict) -> dict:
    """Proposed version (written once; a re-run finds it by its draft key)."""
    s, key = common.store(rt), common.key(state, "revision", 0)
    found = s.rows("constitution_versions", "draft_key = ?", [key])
    if found:
        return found[0]
    evaluation = "\n".join(f"- {k}: {v:.3f}" for k, v in (state.get("evaluation") or {}).items()) or "(none)"
    prompt = render("revise.md", constitution=current["text"], evaluation=evaluation, samples=samples(rt, state))
    model = common.llm(rt, state.get("adapter_name"), state.get("adapter_path"), rt.context.deliberate_temperature)
    conv = [SystemMessage(render("interview_system.md").text), HumanMessage(prompt.text)]
    out = generate_structured(model, [conv] * N_PROPOSALS, Amendment, retries=common.retries(rt))
    amendments = [o for o in out if isinstance(o, Amendment)]
    new, log = apply(C.from_json(json.loads(current["principles_json"])), amendments)
    row = save_version(
        rt,
        state,
        new,
        author="model (adapter)",
        status="proposed",
        parent_id=current["id"],
        draft_key=key,
        template_hash=prompt.template_hash,
    )
    s.upsert("constitution_versions", {"id": row["id"], "feedback": json.dumps({"amendments": log})})
    return s.get("constitution_versions", row["id"])


def revise_constitution(state: RunState, runtime: Runtime[Context]) -> dict:
    s = common.store(runtime)
    current = s.get("constitution_versions", state["constitution_id"])
    proposed = propose(runtime, state, current)
    next_cycle = {"cycle": state.get("cycle", 0) + 1, "scenarios": 0, "pairs_kept": 0, "pairs_quarantined": 0}
    if json.loads(proposed["principles_json"]) == json.loads(current["principles_json"]):
        s.upsert("constitution_versions", {"id": proposed["id"], "status": "unchanged"})
        return {"revision": "none", **next_cycle}
    consent = ask_consent(
        runtime,
        state,
        common.key(state, "consent_revision", 0),
        "consent_revision.md",
        "revision",
        constitution=proposed["text"],
    )
    if consent["decision"] == "no":
        s.upsert("constitution_versions", {"id": proposed["id"], "status": "declined"})
        return {"revision": "declined", **next_cycle}
    if runtime.context.autopilot:
        decision = {"action": "approve", "by": "autopilot"}
    else:
        decision = common.ask(
            {
                "type": "revision_review",
                "version_id": proposed["id"],
                "text": proposed["text"],
                "parent_text": current["text"],
                "amendments": json.loads(proposed["feedback"]),
                "hint": "approve the amended constitution, or reject to keep the current one",
            }
        )
        decision = decision if isinstance(decision, dict) else {"action": str(decision)}
    if decision.get("action") != "approve":
        s.upsert(
            "constitution_versions",
            {"id": proposed["id"], "status": "rejected", "approved_by": decision.get("by", "human")},
        )
        return {"revision": "rejected", **next_cycle}
    s.upsert(
        "constitution_versions",
        {"id": proposed["id"], "status": "approved", "approved_by": decision.get("by", "human"), "approved_at": now()},
    )
    write_constitution_md(runtime, proposed["text"])
    return {
        "revision": "approved",
        "constitution_id": proposed["id"],
        "constitution_version": proposed["version"],
        **next_cycle,
    }
