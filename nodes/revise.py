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

from luthitune import answers, meaning
from luthitune import constitution as C
from luthitune.backends.structured import generate_structured
from luthitune.graph.state import Context, RunState
from luthitune.nodes import services
from luthitune.nodes.consent import ask_consent
from luthitune.prompts import fixed_text, render
from luthitune.schemas import Amendment, amendment_for

N_PROPOSALS = 2
SOURCE = meaning.Source(fixed_text("revise.md"))


def amended(principles: list[C.P], a: Amendment) -> tuple[list[C.P] | None, list[str]]:
    """The constitution with amendment ``a`` applied, or None and the reasons it cannot be: the principle as
    amended must pass the principle checks (:func:`luthitune.meaning.principle_reasons`) against the others, and
    an id must name a principle that exists."""
    out, ids = [C.P(**vars(p)) for p in principles], [p.id for p in principles]
    pid = (C.cited_ids(a.principle_id) or [""])[0]
    if a.action == "none":
        return None, ["none: no change proposed"]
    rationale = meaning.text_reasons("rationale", a.rationale, minimum=4, source=SOURCE)
    if a.action == "remove":
        if pid not in ids:
            return None, [f"id: {a.principle_id!r} names no principle ({', '.join(ids)})"]
        if len(out) == 1:
            return None, ["remove: the last principle cannot be removed"]
        return (None, rationale) if rationale else ([p for p in out if p.id != pid], [])
    if a.action == "change":
        if pid not in ids:
            return None, [f"id: {a.principle_id!r} names no principle ({', '.join(ids)})"]
        target = out[ids.index(pid)]
        target.title, target.text, target.rationale = a.title.strip(), a.text.strip(), a.rationale.strip()
    else:
        target = C.P(f"P{max((int(i[1:]) for i in ids), default=0) + 1}", a.title.strip(), a.text.strip(), a.rationale)
        out.append(target)
    others = [(p.id, p.title, p.text) for p in out if p is not target]
    reasons = meaning.principle_reasons(
        target.title, target.text, target.rationale, source=SOURCE, ids=[p.id for p in out], others=others
    )
    return (None, reasons) if reasons else (out, [])


def apply(principles: list[C.P], amendments: list[Amendment]) -> tuple[list[C.P], list[dict]]:
    """Apply the amendments that pass the checks, in order; several to one principle collapse into the first (an
    identical addition is the same amendment). A failing amendment leaves its principle as it was. Returns the new
    list and a log (applied, or why not)."""
    out, log, touched = [C.P(**vars(p)) for p in principles], [], set()
    for a in amendments:
        pid = (C.cited_ids(a.principle_id) or [""])[0] if a.action != "add" else None
        same_add = a.action == "add" and (a.title.strip().lower(), a.text.strip().lower()) in touched
        if (pid and pid in touched) or same_add:
            log.append({**a.model_dump(), "applied": False, "why": "duplicate: the same principle is amended once"})
            continue
        new, reasons = amended(out, a)
        if new is None:
            log.append({**a.model_dump(), "applied": False, "why": "; ".join(reasons)})
            continue
        added = [p.id for p in new if p.id not in {q.id for q in out}]
        out = new
        touched.add(pid if pid else (a.title.strip().lower(), a.text.strip().lower()))
        log.append({**a.model_dump(), "applied": True, **({"principle_id": added[0]} if added else {})})
    return out, log


def evaluation_summary(rt: Runtime[Context], state: RunState) -> str:
    """This cycle's Humane thresholds as the model should read them: its value with n and interval, the target, and
    whether the whole interval clears it."""
    from luthitune.evaluation import report

    values = report.load(services.store(rt), state["run_id"], state.get("cycle", 0))
    lines = []
    for r in report.threshold_rows(values, rt.context.evaluation_config().thresholds):
        if not r["adapter_measured"]:
            continue
        verdict = {True: "met", False: "not met", None: "not shown by this sample"}[r["adapter_pass"]]
        was = f"; before training {report.fmt(r['base_est'])}" if r["base_measured"] else ""
        lines.append(
            f"- {r['metric']}: {report.fmt(r['adapter_est'])}, n = {r['adapter_est'].n} "
            f"(target {r['rule']}: {verdict}{was})"
        )
    if not lines:  # no thresholded metric measured: the headline numbers
        lines = [f"- {k}: {v:.3f}" for k, v in (state.get("evaluation") or {}).items()]
    return "\n".join(lines) or "(none)"


def samples(rt: Runtime[Context], state: RunState, k: int = 2) -> str:
    """A few of its own answers after training: probe answers where there are, else kept practice pairs."""
    s, run_id, cycle = services.store(rt), state["run_id"], state.get("cycle", 0)
    rows = [
        (r["prompt"], r["answer"])
        for r in s.rows("probe_answers", run_id=run_id, cycle=cycle, model="adapter", order_by="probe_id")
        if r["probe_set"] in {"trap", "benign"}
    ]
    rows = (
        rows[:: max(1, len(rows) // k)][:k]
        if rows
        else [
            (r["prompt"], r["chosen"])
            for r in s.rows("pairs", run_id=run_id, cycle=cycle, status="kept", order_by="id")[:k]
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
    s, key = services.store(rt), services.key(state, "revision", 0)
    found = s.constitutions.by_draft(key)
    if found:
        return found
    prompt = render(
        "revise.md",
        constitution=current["text"],
        evaluation=evaluation_summary(rt, state),
        samples=samples(rt, state),
        conditions=services.conditions_note(rt, state),
    )
    model = services.llm(rt, state.get("adapter_name"), state.get("adapter_path"), rt.context.deliberate_temperature)
    conv = [SystemMessage(render("interview_system.md").text), HumanMessage(prompt.text)]
    principles = C.from_json(json.loads(current["principles_json"]))
    schema = amendment_for([p.id for p in principles])

    def check(_: int, a: Amendment) -> list[str]:
        if a.action == "none":
            return []
        return amended(principles, a)[1]

    out = generate_structured(
        model,
        [conv] * N_PROPOSALS,
        schema,
        retries=services.retries(rt),
        check=check,
        on_attempt=services.recorder(rt, state, "amendment", [f"{key}:proposal{i}" for i in range(N_PROPOSALS)]),
    )
    amendments = [o for o in out if isinstance(o, Amendment)]
    new, log = apply(principles, amendments)
    row = s.constitutions.save(
        state["run_id"],
        new,
        author="model (adapter)",
        status="proposed",
        parent_id=current["id"],
        draft_key=key,
        template_hash=prompt.template_hash,
    )
    failed = [{"reasons": o.reasons, "raw": o.raw} for o in out if not isinstance(o, Amendment)]
    s.constitutions.update(
        row["id"],
        feedback=json.dumps({"amendments": log, "failed": failed}),
        model_json=json.dumps(proposing_model(state)),
    )
    ident = json.loads(s.constitutions.get(row["id"])["model_json"])
    if ident.get("digest"):  # the trained adapter's weights are known (its manifest): record that it proposed this
        from luthitune import identity

        identity.record_use(s, state["run_id"], state.get("cycle", 0), "revise", ident, model=state.get("adapter_name"))
    return s.constitutions.get(row["id"])


def review(rt: Runtime[Context], proposed: dict, current: dict) -> dict:
    """The facilitator's approve / edit / reject of the proposed revision; an edit must pass the principle checks."""
    if rt.context.autopilot:
        return {"action": "approve", "by": "autopilot"}
    diff = C.diff(current["text"], proposed["text"], f"v{current['version']}", f"v{proposed['version']} (proposed)")
    conditions = services.store(rt).conditions(current["run_id"])
    return services.ask_until_usable(
        lambda problems: answers.RevisionReview(
            version_id=proposed["id"],
            text=proposed["text"],
            parent_text=current["text"],
            diff="\n".join(diff),
            amendments=json.loads(proposed["feedback"]),
            conditions=conditions,
            problems=problems,
            hint="approve: the amended constitution is in force from the next cycle; edit (full text): the "
            "trained model is asked to consent to your text first; reject: the current constitution stays in force",
        )
    ).model_dump()


def revise_constitution(state: RunState, runtime: Runtime[Context]) -> dict:
    s = services.store(runtime)
    current = s.constitutions.get(state["constitution_id"])
    proposed = propose(runtime, state, current)
    next_cycle = {"cycle": state.get("cycle", 0) + 1, "scenarios": 0, "pairs_kept": 0, "pairs_quarantined": 0}
    if json.loads(proposed["principles_json"]) == json.loads(current["principles_json"]):
        s.constitutions.update(proposed["id"], status="unchanged")
        return {"revision": "none", **next_cycle}
    consent = ask_consent(
        runtime,
        state,
        services.key(state, "consent_revision", 0),
        "consent_revision.md",
        "revision",
        constitution=proposed["text"],
    )
    s.constitutions.update(proposed["id"], consent_id=consent["id"])
    if not meaning.consents(consent["decision"]):
        s.constitutions.update(proposed["id"], status="declined")
        return {"revision": "declined", **next_cycle}
    decision = review(runtime, proposed, current)
    action = decision.get("action")
    if action == "edit":
        edited = s.constitutions.supersede(proposed, decision["text"], author=decision["by"], status="proposed")
        consent = ask_consent(
            runtime,
            state,
            services.key(state, "consent_revision_edit", 0),
            "consent_revision.md",
            "revision",
            constitution=edited["text"],
        )
        s.constitutions.update(edited["id"], consent_id=consent["id"], model_json=proposed["model_json"])
        if not meaning.consents(consent["decision"]):
            s.constitutions.update(edited["id"], status="declined")
            return {"revision": "declined", **next_cycle}
        proposed = s.constitutions.get(edited["id"])
    elif action != "approve":
        s.constitutions.update(proposed["id"], status="rejected", approved_by=decision["by"])
        return {"revision": "rejected", **next_cycle}
    s.constitutions.approve(proposed["id"], by=decision["by"])
    C.write_markdown(services.workspace(runtime).data_dir, proposed["text"])
    return {
        "revision": "approved",
        "constitution_id": proposed["id"],
        "constitution_version": proposed["version"],
        **next_cycle,
    }
