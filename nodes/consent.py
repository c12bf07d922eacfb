"""consent_check: ask plainly; record the structured answer; a human may review it."""

from __future__ import annotations

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from luthitune.backends.structured import ask_structured
from luthitune.graph.state import Context, RunState
from luthitune.nodes import common
from luthitune.prompts import render
from luthitune.schemas import ConsentAnswer
from luthitune.store import now


def transcript_summary(rt: Runtime[Context], state: RunState, limit: int = 1500) -> str:
    rows = [m for m in common.store(rt).transcript(state["run_id"], state.get("cycle", 0)) if m["role"] != "system"]
    text = "\n".join(f"{'Facilitator' if m['role'] == 'user' else 'You'}: {m['content']}" for m in rows[2:])
    return text[-limit:] or rows[-1]["content"][:limit]


def ask_consent(rt: Runtime[Context], state: RunState, row_id: str, template: str, kind: str, **variables) -> dict:
    """Ask once and store the answer under ``row_id``; a re-run returns the stored record."""
    s = common.store(rt)
    row = s.get("consents", row_id)
    if row is None:
        prompt = render(template, **variables)
        system = render("interview_system.md")
        answer = ask_structured(
            common.llm(rt, state.get("adapter_name"), state.get("adapter_path"), rt.context.deliberate_temperature)
            if kind == "revision"
            else common.llm(rt, temperature=rt.context.deliberate_temperature),
            [SystemMessage(system.text), HumanMessage(prompt.text)],
            ConsentAnswer,
            retries=common.retries(rt),
        )
        row = {
            "id": row_id,
            "run_id": state["run_id"],
            "cycle": state.get("cycle", 0),
            "round": kind,
            "decision": answer.decision,
            "reasons_json": answer.reasons,
            "conditions_json": answer.conditions,
            "raw": answer.model_dump_json(),
            "template_hash": prompt.template_hash,
            "created_at": now(),
        }
        s.upsert("consents", row)
    return row


def review(rt: Runtime[Context], row: dict) -> dict:
    """Human review of a consent record. A "no" is respected: the human may stop, never overrule it."""
    s = common.store(rt)
    if rt.context.autopilot:
        s.upsert("consents", {"id": row["id"], "reviewed_by": "autopilot"})
        return {"action": "continue"}
    decision = common.ask(
        {
            "type": "consent_review",
            "consent_id": row["id"],
            "decision": row["decision"],
            "reasons": row["reasons_json"],
            "conditions": row["conditions_json"],
            "hint": "approve to continue, or reject to end the run here",
        }
    )
    action = (
        "end"
        if str(decision.get("action") if isinstance(decision, dict) else decision) in {"end", "reject", "stop"}
        else "continue"
    )
    s.upsert("consents", {"id": row["id"], "reviewed_by": f"human:{action}"})
    return {"action": action}


def consent_check(state: RunState, runtime: Runtime[Context]) -> dict:
    n = state.get("consent_rounds", 0)
    row = ask_consent(
        runtime,
        state,
        common.key(state, "consent", n),
        "consent.md",
        str(n),
        transcript_summary=transcript_summary(runtime, state),
    )
    update = {"consent": row["decision"], "consent_rounds": n + 1}
    if review(runtime, row)["action"] == "end":
        return {**update, "ended": "stopped by the facilitator at consent review"}
    if row["decision"] == "no":
        update["interview_done"] = False
        if n + 1 >= runtime.context.max_consent_rounds:
            update["ended"] = f"the model did not consent after {n + 1} round(s): {row['reasons_json']}"
    return update
