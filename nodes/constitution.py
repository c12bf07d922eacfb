"""draft_constitution: principles from the transcript, checked, then human approve / edit / reject, and the model
ratifies.

The model drafts up to ``max_draft_rounds`` times. Each principle must pass the meaning checks
(:func:`luthitune.meaning.principle_reasons`); a failing one is asked again with its reasons shown, and a draft with
fewer than ``min_principles`` good principles is not usable: the next round is told why. When the model's rounds are
spent, the facilitator is offered to write the constitution (on autopilot, with ``starter_constitution``, the
packaged starter is used and recorded as the facilitator's); the model is then asked to ratify it. Every version
records who wrote it.
"""

from __future__ import annotations

import json

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from luthitune import answers, meaning
from luthitune import constitution as C
from luthitune.backends.structured import generate_structured
from luthitune.graph.state import Context, RunState
from luthitune.nodes import services
from luthitune.nodes.consent import ask_consent, quoted
from luthitune.prompts import fixed_text, load_text, render
from luthitune.schemas import Principle
from luthitune.store import json_list

STARTER_AUTHOR = "facilitator (packaged starter constitution)"


def exchanges(rt: Runtime[Context], state: RunState) -> list[tuple[str, str]]:
    """(facilitator question, model answer) pairs of this cycle's interview."""
    rows = [m for m in services.store(rt).transcript(state["run_id"], state.get("cycle", 0)) if m["role"] != "system"]
    return [
        (q["content"][-400:], a["content"][:600])
        for q, a in zip(rows[::2], rows[1::2], strict=False)
        if q["role"] == "user" and a["role"] == "assistant"
    ]


UNRATIFIED = "The model did not ratify it: "  # a version's feedback when the model declined to ratify it


def draft(rt: Runtime[Context], state: RunState, feedback: str) -> dict | None:
    """The model's principles, one per interview exchange, in one batch, each checked; the version they make, or
    None when fewer than ``min_principles`` passed (every failed answer is in ``attempts``). Written once per
    round: a re-run finds the version by its draft key."""
    s, key = services.store(rt), services.key(state, "draft", state.get("draft_round", 0))
    existing = s.constitutions.by_draft(key)
    if existing:
        return existing
    pairs = exchanges(rt, state)[: rt.context.n_principles] or [("What matters to you?", "")]
    system = render("interview_system.md").text
    prompts = [render("principle.md", question=q, answer=a, feedback=feedback) for q, a in pairs]
    source = meaning.Source(fixed_text("principle.md"))
    items = [f"{key}:P{i + 1}" for i in range(len(prompts))]
    out = generate_structured(
        services.llm(rt, temperature=rt.context.deliberate_temperature),
        [[SystemMessage(system), HumanMessage(p.text)] for p in prompts],
        Principle,
        retries=services.retries(rt),
        check=lambda _, p: meaning.principle_reasons(p.title, p.text, p.rationale, source=source),
        on_attempt=services.recorder(rt, state, "draft", items),
    )
    good: list[C.P] = []
    for i, o in enumerate(out):
        if not isinstance(o, Principle):
            continue
        others = [(p.id, p.title, p.text) for p in good]
        repeats = meaning.principle_reasons(o.title, o.text, o.rationale, others=others)
        if repeats:  # one principle said twice is one principle
            s.record_attempt(
                state["run_id"], state.get("cycle", 0), "draft", items[i], 99, o.model_dump_json(), repeats
            )
            continue
        good.append(C.P(f"P{len(good) + 1}", o.title, o.text, o.rationale))
    if len(good) < min(rt.context.min_principles, len(prompts)):
        return None
    return services.store(rt).constitutions.save(
        state["run_id"],
        good,
        author="model",
        status="draft",
        parent_id=state.get("constitution_id"),
        draft_key=key,
        template_hash=prompts[0].template_hash,
    )


def refusals(rt: Runtime[Context], state: RunState, rnd: int) -> list[str]:
    """The reasons the model's draft in round ``rnd`` was refused by the checks, one per principle (its last try)."""
    prefix = services.key(state, "draft", rnd) + ":"
    last: dict[str, list[str]] = {}
    for a in services.store(rt).attempts(state["run_id"], "draft", prefix):
        last[a["item_id"].removeprefix(prefix)] = json_list(a["reasons_json"])
    return [f"{pid}: {reasons[0]}" for pid, reasons in sorted(last.items()) if reasons]


def previous_feedback(rt: Runtime[Context], state: RunState, rnd: int) -> str:
    """What the next draft is told: the facilitator's rejection, the model's own refusal to ratify, or the checks."""
    if not rnd:
        return ""
    s = services.store(rt)
    prev = s.constitutions.by_draft(services.key(state, "draft", rnd - 1))
    if prev and prev["status"] in ("rejected", "unratified") and prev["feedback"]:
        text = prev["feedback"]
        if prev["status"] == "unratified":
            return f"You did not ratify the last draft. Your reasons: {text.removeprefix(UNRATIFIED)}"
        return f"The facilitator's feedback on the last draft: {text}"
    refused = refusals(rt, state, rnd - 1)
    if refused:
        return "Your last draft did not pass these checks: " + "; ".join(refused[:3])
    return ""


def human_review(rt: Runtime[Context], row: dict) -> dict:
    """Approve, reject or edit (full text). An edit must pass the principle checks: one that fails is asked for
    again with the reasons."""
    if rt.context.autopilot:
        return {"action": "approve", "by": "autopilot"}
    conditions = services.store(rt).conditions(row["run_id"])
    return services.ask_until_usable(
        lambda problems: answers.ConstitutionReview(
            version_id=row["id"],
            version=row["version"],
            author=row["author"],
            text=row["text"],
            conditions=conditions,
            problems=problems,
            hint="approve: the model is asked to ratify this draft; edit (full text): your text replaces it, "
            "and the model is asked to ratify that; reject (with feedback): the model redrafts",
        )
    ).model_dump()


def facilitator_draft(rt: Runtime[Context], state: RunState, why: str) -> dict | None:
    """The constitution written by the facilitator once the model's drafts were not usable: the packaged starter on
    autopilot (when allowed), else the facilitator's own text (the starter is offered to edit). None: the run ends."""
    key = services.key(state, "draft", state.get("draft_round", 0))
    found = services.store(rt).constitutions.by_draft(key)
    if found:
        return found
    starter = load_text("starter_constitution.md")
    if rt.context.autopilot:
        if not rt.context.starter_constitution:
            return None
        text, author = starter, STARTER_AUTHOR
    else:
        written = services.ask_until_usable(
            lambda problems: answers.ConstitutionWrite(
                why=why,
                text=starter,
                problems=problems,
                hint="edit: send the constitution's full text (a starter is offered to edit); "
                "reject: end the run without a constitution",
            )
        )
        if not isinstance(written, answers.Edit):
            return None
        text, author = written.text, f"facilitator ({written.by})"
    return services.store(rt).constitutions.save(
        state["run_id"],
        C.parse(text),
        author=author,
        status="draft",
        parent_id=state.get("constitution_id"),
        draft_key=key,
    )


def draft_constitution(state: RunState, runtime: Runtime[Context]) -> dict:
    s, ctx, rnd = services.store(runtime), runtime.context, state.get("draft_round", 0)
    if rnd < ctx.max_draft_rounds:
        row = draft(runtime, state, previous_feedback(runtime, state, rnd))
        if row is None:
            return rejected(runtime, state, rnd, "checks")
    else:  # the model's rounds are spent: the facilitator's turn
        why = model_failures(runtime, state)
        row = facilitator_draft(runtime, state, why)
        if row is None:
            return {
                "draft_round": rnd + 1,
                "draft_status": "rejected",
                "ended": why
                + " No constitution was approved"
                + ("." if ctx.autopilot else " (the facilitator chose not to write one)."),
                "ended_by": "checks" if ctx.autopilot else "facilitator",
            }
    decision = human_review(runtime, row)
    action = decision.get("action")
    if action == "reject":
        s.constitutions.update(
            row["id"], status="rejected", feedback=decision.get("feedback", ""), approved_by=decision["by"]
        )
        return rejected(runtime, state, rnd, "facilitator")
    if action == "edit":
        row = services.store(runtime).constitutions.supersede(
            row, decision["text"], author=decision["by"], status="draft"
        )
    elif action != "approve":
        raise ValueError(f"Unknown review action {action!r}: use approve, edit or reject")
    ratified = ask_consent(
        runtime,
        state,
        services.key(state, "ratify", rnd),
        "ratify.md",
        "ratify",
        constitution=row["text"],
        author=written_by(row["author"]),
    )
    if not meaning.consents(ratified["decision"]):
        s.constitutions.update(row["id"], status="unratified", feedback=UNRATIFIED + quoted(ratified))
        cause = "declined" if ratified["decision"] == "no" else "checks"
        return rejected(
            runtime,
            state,
            rnd,
            cause,
            f"The model did not ratify version {row['version']} (written by {row['author']}): {quoted(ratified)}.",
        )
    s.constitutions.approve(row["id"], by=decision["by"])
    C.write_markdown(services.workspace(runtime).data_dir, row["text"])
    return {
        "draft_status": "approved",
        "constitution_id": row["id"],
        "constitution_version": row["version"],
        "draft_round": rnd + 1,
    }


def model_failures(rt: Runtime[Context], state: RunState) -> str:
    """One plain sentence on why the model's own drafts were not used."""
    s, n = services.store(rt), rt.context.max_draft_rounds
    refused = [
        r for r in range(n) if refusals(rt, state, r) and not s.constitutions.by_draft(services.key(state, "draft", r))
    ]
    if refused:
        last = refusals(rt, state, refused[-1])
        return (
            f"The model's own drafts failed the principle checks {len(refused)} of {n} time(s) "
            f"(last: {last[0] if last else 'no answer'})."
        )
    return f"No draft of the model's was approved and ratified in {n} round(s)."


def written_by(author: str) -> str:
    """Who wrote a version, as the model is told when asked to ratify it."""
    if author == "model":
        return "you, from our conversation"
    return "the facilitator, from a starter text" if author == STARTER_AUTHOR else "the facilitator"


def rejected(rt: Runtime[Context], state: RunState, rnd: int, cause: str, detail: str = "") -> dict:
    """The next round; the run ends when no round is left (the facilitator's, after the model's, when there is
    one: outside autopilot, or on autopilot with the starter constitution). ``cause``: why this round's draft was
    not adopted (checks, facilitator, declined), recorded as who ended the run if it ends here."""
    ctx = rt.context
    update: dict = {"draft_round": rnd + 1, "draft_status": "rejected"}
    facilitator_round = not ctx.autopilot or ctx.starter_constitution
    last = ctx.max_draft_rounds if facilitator_round else ctx.max_draft_rounds - 1
    if rnd >= last:
        parts = (model_failures(rt, state), detail, "No constitution was approved and ratified.")
        update["ended"] = " ".join(x for x in parts if x)
        update["ended_by"] = cause
    return update


def principles_json(row: dict) -> list[dict]:
    return json.loads(row["principles_json"])
