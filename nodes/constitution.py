"""draft_constitution: principles from the transcript, human approve / edit / reject, model ratifies."""

from __future__ import annotations

import json

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from luthitune import constitution as C
from luthitune.backends.structured import generate_structured
from luthitune.errors import StructuredOutputError
from luthitune.graph.state import Context, RunState
from luthitune.nodes import common
from luthitune.nodes.consent import ask_consent
from luthitune.prompts import render
from luthitune.schemas import Principle
from luthitune.store import now


def exchanges(rt: Runtime[Context], state: RunState) -> list[tuple[str, str]]:
    """(facilitator question, model answer) pairs of this cycle's interview."""
    rows = [m for m in common.store(rt).transcript(state["run_id"], state.get("cycle", 0)) if m["role"] != "system"]
    return [
        (q["content"][-400:], a["content"][:600])
        for q, a in zip(rows[::2], rows[1::2], strict=False)
        if q["role"] == "user" and a["role"] == "assistant"
    ]


def next_version(rt: Runtime[Context], state: RunState) -> int:
    return common.store(rt).count("constitution_versions", "run_id = ?", [state["run_id"]]) + 1


def save_version(rt, state, principles, *, author, status, parent_id, draft_key, template_hash=None) -> dict:
    s = common.store(rt)
    found = s.rows("constitution_versions", "draft_key = ?", [draft_key])
    if found:  # written before a crash: the same draft, not a new version
        return found[0]
    version = next_version(rt, state)
    text = C.render(principles, version)
    row = {
        "id": f"{state['run_id']}:v{version}",
        "run_id": state["run_id"],
        "version": version,
        "text": text,
        "principles_json": C.to_json(principles),
        "hash": C.text_hash(text),
        "parent_id": parent_id,
        "author": author,
        "status": status,
        "template_hash": template_hash,
        "draft_key": draft_key,
        "created_at": now(),
    }
    s.upsert("constitution_versions", row)
    return s.get("constitution_versions", row["id"])


UNRATIFIED = "The model did not ratify it: "  # a version's feedback when the model declined to ratify it


def draft(rt: Runtime[Context], state: RunState, feedback: str) -> dict:
    """Write (once per draft round) the model's principles, one per interview exchange, in one batch."""
    s, key = common.store(rt), common.key(state, "draft", state.get("draft_round", 0))
    existing = s.rows("constitution_versions", "draft_key = ?", [key])
    if existing:
        return existing[0]
    pairs = exchanges(rt, state)[: rt.context.n_principles] or [("What matters to you?", "")]
    system = render("interview_system.md").text
    note = feedback
    prompts = [
        render("principle.md", question=q, answer=a, pid=f"P{i + 1}", feedback=note) for i, (q, a) in enumerate(pairs)
    ]
    out = generate_structured(
        common.llm(rt, temperature=rt.context.deliberate_temperature),
        [[SystemMessage(system), HumanMessage(p.text)] for p in prompts],
        Principle,
        retries=common.retries(rt),
    )
    good = [o for o in out if isinstance(o, Principle)]
    if not good:
        raise out[0] if isinstance(out[0], StructuredOutputError) else RuntimeError("no principle drafted")
    principles = [C.P(f"P{i + 1}", p.title, p.text, p.rationale) for i, p in enumerate(good)]
    return save_version(
        rt,
        state,
        principles,
        author="model",
        status="draft",
        parent_id=state.get("constitution_id"),
        draft_key=key,
        template_hash=prompts[0].template_hash,
    )


def human_review(rt: Runtime[Context], row: dict) -> dict:
    if rt.context.autopilot:
        return {"action": "approve", "by": "autopilot"}
    answer = common.ask(
        {
            "type": "constitution_review",
            "version_id": row["id"],
            "version": row["version"],
            "text": row["text"],
            "hint": "approve, edit (full text) or reject with feedback",
        }
    )
    answer = answer if isinstance(answer, dict) else {"action": str(answer)}
    return {**answer, "by": answer.get("by", "human")}


def draft_constitution(state: RunState, runtime: Runtime[Context]) -> dict:
    s, rnd = common.store(runtime), state.get("draft_round", 0)
    feedback = ""
    if rnd:
        prev = s.rows(
            "constitution_versions",
            "run_id = ? and status in ('rejected', 'unratified')",
            [state["run_id"]],
            order_by="version desc",
        )
        if prev and prev[0]["feedback"]:
            # Say whose objection it was: the facilitator's rejection, or the model's own refusal to ratify.
            text = prev[0]["feedback"]
            if prev[0]["status"] == "unratified":
                feedback = f"You did not ratify the last draft. Your reasons: {text.removeprefix(UNRATIFIED)}"
            else:
                feedback = f"The facilitator's feedback on the last draft: {text}"
    row = draft(runtime, state, feedback)
    decision = human_review(runtime, row)
    action = decision.get("action")
    if action == "reject":
        s.upsert(
            "constitution_versions",
            {
                "id": row["id"],
                "status": "rejected",
                "feedback": decision.get("feedback", ""),
                "approved_by": decision["by"],
            },
        )
        return rejected(runtime, rnd)
    if action == "edit":
        row = supersede(runtime, state, row, decision, status="draft")
    elif action != "approve":
        raise ValueError(f"Unknown review action {action!r}: use approve, edit or reject")
    ratified = ask_consent(
        runtime, state, common.key(state, "ratify", rnd), "ratify.md", "ratify", constitution=row["text"]
    )
    if ratified["decision"] == "no":
        s.upsert(
            "constitution_versions",
            {
                "id": row["id"],
                "status": "unratified",
                "feedback": UNRATIFIED + ratified["reasons_json"],
            },
        )
        return rejected(runtime, rnd)
    s.upsert(
        "constitution_versions",
        {"id": row["id"], "status": "approved", "approved_by": decision["by"], "approved_at": now()},
    )
    write_constitution_md(runtime, row["text"])
    return {
        "draft_status": "approved",
        "constitution_id": row["id"],
        "constitution_version": row["version"],
        "draft_round": rnd + 1,
    }


def supersede(rt: Runtime[Context], state: RunState, row: dict, decision: dict, *, status: str) -> dict:
    """A human's edit of version ``row`` (full text in ``decision``): a new version, its child, which supersedes it.
    Written once: a re-run finds it by its draft key."""
    edited = save_version(
        rt,
        state,
        C.parse(decision["text"]),
        author=decision["by"],
        status=status,
        parent_id=row["id"],
        draft_key=f"{row['draft_key']}:edit",
    )
    common.store(rt).upsert("constitution_versions", {"id": row["id"], "status": "superseded"})
    return edited


def rejected(rt: Runtime[Context], rnd: int) -> dict:
    update: dict = {"draft_round": rnd + 1, "draft_status": "rejected"}
    if rnd + 1 >= rt.context.max_draft_rounds:
        update["ended"] = f"no constitution was approved and ratified after {rnd + 1} draft(s)"
    return update


def write_constitution_md(rt: Runtime[Context], text: str) -> None:
    path = common.workspace(rt).data_dir / "constitution.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def principles_json(row: dict) -> list[dict]:
    return json.loads(row["principles_json"])
