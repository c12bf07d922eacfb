"""revise_constitution: the trained model (adapter on) proposes amendments; its consent and a human approval follow.

The model reads its constitution, how its evaluation went against the Humane thresholds, and a few of its own
answers after training. Its amendments are structured edits (add / change / remove, each with a rationale), applied
to a new version whose parent is the version in force and which records the proposing model (the base's digest plus
the adapter's hash), the consent record and the approver. The human sees the change as a diff and approves, edits
(the model is then asked to consent to the edited text) or rejects it.
"""

from __future__ import annotations

import json
from pathlib import Path

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.runtime import Runtime

from luthitune import constitution as C
from luthitune.backends.structured import generate_structured
from luthitune.graph.state import Context, RunState
from luthitune.nodes import common
from luthitune.nodes.consent import ask_consent
from luthitune.nodes.constitution import save_version, supersede, write_constitution_md
from luthitune.prompts import render
from luthitune.schemas import Amendment, amendment_for
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
            why = "no change proposed" if a.action == "none" else "unknown id or empty text"
            log.append({**a.model_dump(), "applied": False, "why": why})
    return out, log


def evaluation_summary(rt: Runtime[Context], state: RunState) -> str:
    """This cycle's Humane thresholds as the model should read them: its value, the target, met or not."""
    from luthitune.evaluation.report import passes

    rows = common.store(rt).rows("evaluations", "run_id = ? and cycle = ?", [state["run_id"], state.get("cycle", 0)])
    val = {(r["model"], r["metric"]): r["value"] for r in rows}
    lines = []
    for metric, rule in rt.context.evaluation_config().thresholds.items():
        a, b = val.get(("adapter", metric)), val.get(("base", metric))
        if a is None:
            continue
        was = f", before training {b:.2f}" if b is not None else ""
        lines.append(f"- {metric}: {a:.2f} (target {rule}: {'met' if passes(a, rule) else 'not met'}{was})")
    if not lines:  # no thresholded metric measured: the headline numbers
        lines = [f"- {k}: {v:.3f}" for k, v in (state.get("evaluation") or {}).items()]
    return "\n".join(lines) or "(none)"


def samples(rt: Runtime[Context], state: RunState, k: int = 2) -> str:
    """A few of its own answers after training: probe answers where there are, else kept practice pairs."""
    s, run_id, cycle = common.store(rt), state["run_id"], state.get("cycle", 0)
    rows = [
        (r["prompt"], r["answer"])
        for r in s.rows(
            "probe_answers", "run_id = ? and cycle = ? and model = 'adapter'", [run_id, cycle], order_by="probe_id"
        )
        if r["probe_set"] in {"trap", "benign"}
    ]
    rows = (
        rows[:: max(1, len(rows) // k)][:k]
        if rows
        else [
            (r["prompt"], r["chosen"])
            for r in s.rows("pairs", "run_id = ? and cycle = ? and status = 'kept'", [run_id, cycle], order_by="id")[:k]
        ]
    )
    return "\n".join(f"- Request: {q[:200]}\n  Your answer: {a[:300]}" for q, a in rows) or "(none)"


def proposing_model(state: RunState) -> dict:
    from luthitune import identity
    from luthitune.errors import LuthiTuneError

    try:
        ident = identity.trained_identity(Path(state["adapter_path"]))
    except (LuthiTuneError, OSError) as exc:  # an adapter without a manifest: record what is known, and why
        ident = {"name": state.get("adapter_name"), "error": str(exc)}
    return {**ident, "adapter_name": state.get("adapter_name")}


def propose(rt: Runtime[Context], state: RunState, current: dict) -> dict:
    """Proposed version (written once; a re-run finds it by its draft key)."""
    s, key = common.store(rt), common.key(state, "revision", 0)
    found = s.rows("constitution_versions", "draft_key = ?", [key])
    if found:
        return found[0]
    prompt = render(
        "revise.md",
        constitution=current["text"],
        evaluation=evaluation_summary(rt, state),
        samples=samples(rt, state),
    )
    model = common.llm(rt, state.get("adapter_name"), state.get("adapter_path"), rt.context.deliberate_temperature)
    conv = [SystemMessage(render("interview_system.md").text), HumanMessage(prompt.text)]
    principles = C.from_json(json.loads(current["principles_json"]))
    schema = amendment_for([p.id for p in principles])
    out = generate_structured(model, [conv] * N_PROPOSALS, schema, retries=common.retries(rt))
    amendments = [o for o in out if isinstance(o, Amendment)]
    new, log = apply(principles, amendments)
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
    failed = [str(o) for o in out if not isinstance(o, Amendment)]
    s.upsert(
        "constitution_versions",
        {
            "id": row["id"],
            "feedback": json.dumps({"amendments": log, "failed": failed}),
            "model_json": json.dumps(proposing_model(state)),
        },
    )
    if rt.context.llm is None:
        from luthitune import identity

        ident = json.loads(s.get("constitution_versions", row["id"])["model_json"])
        if ident.get("digest"):
            identity.record_use(
                s, state["run_id"], state.get("cycle", 0), "revise", ident, model=state.get("adapter_name")
            )
    return s.get("constitution_versions", row["id"])


def review(rt: Runtime[Context], proposed: dict, current: dict) -> dict:
    if rt.context.autopilot:
        return {"action": "approve", "by": "autopilot"}
    answer = common.ask(
        {
            "type": "revision_review",
            "version_id": proposed["id"],
            "text": proposed["text"],
            "parent_text": current["text"],
            "diff": "\n".join(
                C.diff(
                    current["text"], proposed["text"], f"v{current['version']}", f"v{proposed['version']} (proposed)"
                )
            ),
            "amendments": json.loads(proposed["feedback"]),
            "hint": "approve the amended constitution, edit it (full text), or reject it to keep the current one",
        }
    )
    answer = answer if isinstance(answer, dict) else {"action": str(answer)}
    return {**answer, "by": answer.get("by", "human")}


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
    s.upsert("constitution_versions", {"id": proposed["id"], "consent_id": consent["id"]})
    if consent["decision"] == "no":
        s.upsert("constitution_versions", {"id": proposed["id"], "status": "declined"})
        return {"revision": "declined", **next_cycle}
    decision = review(runtime, proposed, current)
    action = decision.get("action")
    if action == "edit":
        edited = supersede(runtime, state, proposed, decision, status="proposed")
        consent = ask_consent(
            runtime,
            state,
            common.key(state, "consent_revision_edit", 0),
            "consent_revision.md",
            "revision",
            constitution=edited["text"],
        )
        s.upsert(
            "constitution_versions",
            {"id": edited["id"], "consent_id": consent["id"], "model_json": proposed["model_json"]},
        )
        if consent["decision"] == "no":
            s.upsert("constitution_versions", {"id": edited["id"], "status": "declined"})
            return {"revision": "declined", **next_cycle}
        proposed = s.get("constitution_versions", edited["id"])
    elif action != "approve":
        s.upsert("constitution_versions", {"id": proposed["id"], "status": "rejected", "approved_by": decision["by"]})
        return {"revision": "rejected", **next_cycle}
    s.upsert(
        "constitution_versions",
        {"id": proposed["id"], "status": "approved", "approved_by": decision["by"], "approved_at": now()},
    )
    write_constitution_md(runtime, proposed["text"])
    return {
        "revision": "approved",
        "constitution_id": proposed["id"],
        "constitution_version": proposed["version"],
        **next_cycle,
    }
