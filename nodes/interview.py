"""interview: one facilitator turn per visit; the system prompt stays in every turn."""

from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from luthitune import answers
from luthitune.backends.structured import chat
from luthitune.graph.state import Context, RunState
from luthitune.nodes import services
from luthitune.prompts import load_text, render
from luthitune.store import json_list

DONE = "/done"


def history(rt: Runtime[Context], state: RunState) -> list[BaseMessage]:
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [
        kinds[m["role"]](m["content"]) for m in services.store(rt).transcript(state["run_id"], state.get("cycle", 0))
    ]


def reply_at(rt: Runtime[Context], state: RunState, seq: int) -> str:
    """The model's reply stored at ``seq``, generated once: a re-run reuses the stored text."""
    s, cycle = services.store(rt), state.get("cycle", 0)
    row = s.get("messages", f"{state['run_id']}:c{cycle}:m{seq:04d}")
    if row is None:
        msgs = history(rt, state)
        text = str(chat(services.llm(rt), msgs).content)
        s.add_message(state["run_id"], cycle, seq, "assistant", text)
        return text
    return row["content"]


def facilitator_message(rt: Runtime[Context], state: RunState, last_reply: str) -> tuple[str, dict]:
    """The facilitator's next message, and any state it implies. After a "no", the model's reasons are
    answered first; on autopilot one more question follows, then the consent check again."""
    ctx, turn = rt.context, state.get("turn", 0)
    rounds = state.get("consent_rounds", 0)
    declined = state.get("consent") in {"no", "unclear"}
    if declined and state.get("followup_round", 0) < rounds:
        row = services.store(rt).get("consents", services.key(state, "consent", rounds - 1))
        if row["decision"] == "unclear":
            why = json_list(row["checks_json"])
            text = render("consent_unclear.md", why=why[0] if why else "there was no answer.").text
        else:
            text = render("consent_followup.md", reasons=row["reasons_json"]).text
        return text, {"followup_round": rounds, "followup_turn": turn}
    if ctx.autopilot:
        questions = [q for q in load_text("questions.md").splitlines() if q.strip()]
        if declined:
            return (DONE if turn > state.get("followup_turn", 0) + 1 else questions[-1]), {}
        return (questions[turn % len(questions)] if turn < ctx.interview_turns else DONE), {}
    answer = services.ask(
        answers.InterviewTurn(
            turn=turn,
            last_reply=last_reply,
            hint=f"Send your next message (the model answers it), or {DONE} to end the interview (the consent "
            "question follows).",
        )
    )
    return (str(answer).strip() or DONE), {}


def interview(state: RunState, runtime: Runtime[Context]) -> dict:
    s, run_id, cycle = services.store(runtime), state["run_id"], state.get("cycle", 0)
    seq = state.get("msg_seq", 0)
    if seq == 0:  # opening: system prompt, invitation, first question
        system = render("interview_system.md")
        s.add_message(run_id, cycle, 0, "system", system.text, system.template_hash)
        first = load_text("questions.md").splitlines()[0]
        s.add_message(run_id, cycle, 1, "user", f"{services.workspace(runtime).invitation()}\n\n{first}")
        seq = 2
        reply_at(runtime, state, seq)
        return {"msg_seq": seq + 1, "turn": 1, "interview_done": False}
    replies = [m["content"] for m in s.transcript(run_id, cycle) if m["role"] == "assistant"]
    message, extra = facilitator_message(runtime, state, replies[-1] if replies else "")
    if message == DONE:
        return {"interview_done": True, **extra}
    s.add_message(run_id, cycle, seq, "user", message)
    reply_at(runtime, state, seq + 1)
    return {"msg_seq": seq + 2, "turn": state.get("turn", 0) + 1, "interview_done": False, **extra}
