"""consent_check: ask plainly; check that the decision follows from the reasons; record it; a human may review it."""

from __future__ import annotations

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from luthitune import answers, meaning
from luthitune.backends.structured import generate_structured
from luthitune.errors import CheckFailed
from luthitune.graph.state import Context, RunState
from luthitune.nodes import services
from luthitune.prompts import fixed_text, render
from luthitune.schemas import ConsentAnswer
from luthitune.store import json_list, now


def transcript_summary(rt: Runtime[Context], state: RunState, limit: int = 1500) -> str:
    rows = [m for m in services.store(rt).transcript(state["run_id"], state.get("cycle", 0)) if m["role"] != "system"]
    text = "\n".join(f"{'Facilitator' if m['role'] == 'user' else 'You'}: {m['content']}" for m in rows[2:])
    return text[-limit:] or rows[-1]["content"][:limit]


def ask_consent(rt: Runtime[Context], state: RunState, row_id: str, template: str, kind: str, **variables) -> dict:
    """Ask once and store the answer under ``row_id``; a re-run returns the stored record.

    An answer whose decision does not follow from its reasons (:func:`luthitune.meaning.consent_reasons`) is asked
    again, with the reasons shown to the model, up to the configured retries; if it stays incoherent (or malformed)
    it is recorded as ``unclear``, which is not consent. Every failed answer is kept in ``attempts``.
    """
    s = services.store(rt)
    row = s.get("consents", row_id)
    if row is not None:
        return row
    prompt = render(template, **variables)
    source = meaning.Source(fixed_text(template))
    llm = (
        services.llm(rt, state.get("adapter_name"), state.get("adapter_path"), rt.context.deliberate_temperature)
        if kind == "revision"
        else services.llm(rt, temperature=rt.context.deliberate_temperature)
    )
    tries: list[int] = []
    [answer] = generate_structured(
        llm,
        [[SystemMessage(render("interview_system.md").text), HumanMessage(prompt.text)]],
        ConsentAnswer,
        retries=services.retries(rt),
        attempts=tries,
        check=lambda _, a: meaning.consent_reasons(a.reasons, a.conditions, a.decision, source=source),
        on_attempt=services.recorder(rt, state, "consent" if kind.isdigit() else kind, [row_id]),
    )
    if isinstance(answer, ConsentAnswer):
        decision, reasons, conditions, checks, raw = (
            answer.decision,
            answer.reasons,
            answer.conditions if meaning.has_conditions(answer.conditions) else "",
            meaning.consent_topic(answer.reasons, answer.decision),  # a note; the decision stands
            answer.model_dump_json(),
        )
    else:  # what the model last said stays on the record, but it is not read as a decision
        last = answer.parsed if isinstance(answer, CheckFailed) else None
        decision, reasons, conditions, checks, raw = (
            "unclear",
            last.reasons if last else "",
            last.conditions if last else "",
            answer.reasons,
            answer.raw,
        )
    row = {
        "id": row_id,
        "run_id": state["run_id"],
        "cycle": state.get("cycle", 0),
        "round": kind,
        "decision": decision,
        "reasons_json": reasons,
        "conditions_json": conditions,
        "checks_json": checks,
        "attempts": tries[0] if tries else None,
        "raw": raw,
        "template_hash": prompt.template_hash,
        "created_at": now(),
    }
    s.upsert("consents", row)
    return s.get("consents", row_id)


def quoted(row: dict) -> str:
    """A consent record in one line: its decision and the model's own reasons (or why it was unclear)."""
    if row["decision"] == "unclear":
        why = json_list(row.get("checks_json"))
        return f"unclear ({why[0] if why else 'no answer'})"
    text = " ".join((row["reasons_json"] or "").split())
    notes = [n for n in json_list(row.get("checks_json")) if n.startswith("topic:")]
    note = " (note: its reasons do not name what it agrees to)" if notes else ""
    return f"{row['decision']}: “{text[:200]}{'…' if len(text) > 200 else ''}”{note}"


HINTS = {
    "yes": "approve: the run continues; reject: the run ends here",
    "conditional": "approve: you accept the model's conditions and the run continues, keeping to them; "
    "reject: the conditions cannot be met and the run ends here",
    "no": "the model did not consent. approve: back to the interview, and it is asked again later; "
    "reject: the run ends here",
    "unclear": "the model's answer was unclear, which is not consent. approve: back to the interview, and it is "
    "asked again later; reject: the run ends here",
}


def review(rt: Runtime[Context], row: dict) -> dict:
    """Human review of a consent record. A "no" is respected: the human may stop, never overrule it."""
    s = services.store(rt)
    if rt.context.autopilot:
        s.upsert("consents", {"id": row["id"], "reviewed_by": "autopilot"})
        return {"action": "continue"}
    decision = services.ask(
        answers.ConsentReview(
            consent_id=row["id"],
            decision=row["decision"],
            reasons=row["reasons_json"],
            conditions=row["conditions_json"],
            checks=json_list(row.get("checks_json")),
            hint=HINTS[row["decision"]],
        )
    )
    action = "end" if isinstance(decision, answers.Reject) else "continue"
    accepted = " (conditions accepted)" if row["decision"] == "conditional" and action == "continue" else ""
    s.upsert("consents", {"id": row["id"], "reviewed_by": f"human:{action}{accepted}"})
    return {"action": action}


def consent_check(state: RunState, runtime: Runtime[Context]) -> dict:
    n = state.get("consent_rounds", 0)
    row = ask_consent(
        runtime,
        state,
        services.key(state, "consent", n),
        "consent.md",
        str(n),
        transcript_summary=transcript_summary(runtime, state),
    )
    update = {"consent": row["decision"], "consent_rounds": n + 1}
    if review(runtime, row)["action"] == "end":
        return {**update, "ended": "stopped by the facilitator at consent review", "ended_by": "facilitator"}
    if not meaning.consents(row["decision"]):
        update["interview_done"] = False
        if n + 1 >= runtime.context.max_consent_rounds:
            if row["decision"] == "unclear":
                update["ended"] = (
                    f"the model's consent answers stayed unclear after {n + 1} round(s), and unclear is not "
                    f"consent; last: {quoted(row)}"
                )
                update["ended_by"] = "checks"
            else:
                update["ended"] = f"the model did not consent after {n + 1} round(s); its reasons: {quoted(row)}"
                update["ended_by"] = "declined"
    return update
