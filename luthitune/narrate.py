"""What each step of a run did, in the model's own words: one readable line per finished node.

The CLI and the demo print these instead of the graph's state updates: the model's reply (shortened), its consent
decision with its reason, the principle titles, the counts kept and quarantined with the top reasons, the training
size. Everything is read from the database, so the line says what was stored.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

from luthitune.store import Store, json_list


def short(text: str | None, limit: int = 110) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(text: str | None, limit: int = 110) -> str:
    return f"“{short(text, limit)}”"


def top_reasons(rows: list[dict], k: int = 3) -> str:
    """The most common rules among rows' reasons, as ``rule ×n``."""
    counts = Counter(r.split(":", 1)[0] for row in rows for r in json_list(row.get("reasons_json")))
    return ", ".join(f"{rule} ×{n}" for rule, n in counts.most_common(k))


def cycle_label(status: str, values: dict) -> str:
    """Where a run is in its cycles, as the tables count them (from 0): ``cycle 1`` while it works on its second
    cycle; once done, how many it completed (its state's counter has moved past the last one)."""
    cycle = int(values.get("cycle", 0) or 0)
    if status == "done":
        return f"{cycle} cycle{'' if cycle == 1 else 's'} completed"
    return f"cycle {cycle}"


def consent_line(row: dict, refused: int = 0) -> str:
    what = {"consent": "consent", "ratify": "ratification", "revision": "consent to the revision"}
    kind = what.get(str(row["round"]), "consent")
    if row["decision"] == "unclear":
        why = json_list(row.get("checks_json"))
        text = f"{kind}: unclear, not consent ({short(why[0] if why else 'no answer', 120)})"
    else:
        text = f"{kind}: {row['decision']} — {quote(row['reasons_json'])}"
        if row.get("conditions_json"):
            text += f"; conditions: {quote(row['conditions_json'], 80)}"
        if any(n.startswith("topic:") for n in json_list(row.get("checks_json"))):
            text += " (note: its reasons do not name what it agrees to)"
    if refused:
        text += f" [{refused} answer{'s' * (refused != 1)} refused by the checks]"
    return text


def _refused(store: Store, run_id: str, item_id: str) -> int:
    return store.count("attempts", run_id=run_id, item_id=item_id)


def describe(store: Store, run_id: str, node: str, update: dict, cycle: int) -> str:
    """One line on what ``node`` just did in ``run_id`` (cycle ``cycle``)."""
    if update.get("ended"):
        return f"{node}: the run ends here: {update['ended']}"
    if node == "interview":
        if update.get("interview_done"):
            n = len([m for m in store.transcript(run_id, cycle) if m["role"] == "assistant"])
            return f"interview done ({n} answer{'s' * (n != 1)} from the model)"
        replies = [m for m in store.transcript(run_id, cycle) if m["role"] == "assistant"]
        return (
            f"interview, turn {update.get('turn', '?')}: the model: {quote(replies[-1]['content'] if replies else '')}"
        )
    if node == "consent_check":
        rows = store.rows("consents", run_id=run_id, cycle=cycle, round__notin=("ratify", "revision"))
        rows = sorted(rows, key=lambda r: r["created_at"])
        return consent_line(rows[-1], _refused(store, run_id, rows[-1]["id"])) if rows else "consent: no record"
    if node == "draft_constitution":
        return _draft_line(store, run_id, update, cycle)
    if node == "generate_scenarios":
        rows = store.rows("scenarios", run_id=run_id, cycle=cycle)
        failed = [r for r in rows if r["status"] == "failed"]
        tail = f", {len(failed)} failed the checks ({top_reasons(failed)})" if failed else ""
        standing_in = [r for r in rows if r.get("author")]
        if standing_in:
            tail += (
                f"; for {len(standing_in)}, the model's request failed its checks ({top_reasons(standing_in)}) and a "
                "facilitator's request stands in"
            )
        return f"scenarios: {len(rows) - len(failed) - len(standing_in)} requests written by the model{tail}"
    if node == "self_critique":
        rows = store.rows("pairs", run_id=run_id, cycle=cycle)
        failed = [r for r in rows if r["status"] == "quarantined"]
        refused = store.count("attempts", run_id=run_id, cycle=cycle, step="pair")
        return (
            f"self-critique: {len(rows) - len(failed)} answered, {len(failed)} failed every attempt"
            + (f" ({top_reasons(failed)})" if failed else "")
            + f"; {refused} answer{'s' * (refused != 1)} refused and asked again"
        )
    if node == "validate":
        rows = store.rows("pairs", run_id=run_id, cycle=cycle)
        bad = [r for r in rows if r["status"] == "quarantined"]
        kept = len(rows) - len(bad)
        return f"validation: {kept} pair{'s' * (kept != 1)} kept, {len(bad)} quarantined" + (
            f" (top reasons: {top_reasons(bad)})" if bad else ""
        )
    if node == "train_dpo" and update.get("training_id"):
        row = store.get("training_runs", update["training_id"]) or {}
        cfg = json.loads(row.get("config_json") or "{}")
        n, h = len(cfg.get("train_ids", [])), len(cfg.get("held_out_ids", []))
        return f"training: {n} pairs trained on, {h} held out → {update.get('adapter_path')}"
    if node == "evaluate":
        return "evaluation: base vs adapter measured; the table follows at the end"
    if node == "revise_constitution":
        return _revision_line(store, run_id, update, cycle)
    return f"{node}: done"


def _draft_line(store: Store, run_id: str, update: dict, cycle: int) -> str:
    rnd = update.get("draft_round", 1) - 1
    if update.get("draft_status") == "approved":
        row = store.get("constitution_versions", update["constitution_id"])
        titles = "; ".join(f"{p['id']} {p['title']}" for p in json.loads(row["principles_json"]))
        return f"constitution v{row['version']} approved and ratified (written by {row['author']}): {titles}"
    key = f"{run_id}:c{cycle}:draft{rnd}"
    [version] = store.rows("constitution_versions", draft_key=key) or [None]
    if version is None:
        refused = store.attempts(run_id, "draft", key + ":")
        last: dict[str, list[str]] = {}
        for a in refused:
            last[a["item_id"].rsplit(":", 1)[-1]] = json_list(a["reasons_json"])
        why = "; ".join(f"{pid}: {short(rs[0], 70)}" for pid, rs in sorted(last.items()) if rs)
        return f"draft round {rnd + 1}: the model's principles failed the checks ({why or 'no answer'})"
    if version["status"] == "rejected":
        return f"draft v{version['version']} rejected by the facilitator: {quote(version['feedback'])}"
    return f"draft v{version['version']} not ratified by the model: {short(version['feedback'], 140)}"


def _revision_line(store: Store, run_id: str, update: dict, cycle: int) -> str:
    rows = store.rows("constitution_versions", draft_key=f"{run_id}:c{cycle}:revision0")
    log = json.loads(rows[0]["feedback"] or "{}") if rows else {}
    applied = [a for a in log.get("amendments", []) if a.get("applied")]
    refused = len(log.get("failed", [])) + len([a for a in log.get("amendments", []) if not a.get("applied")])
    what = {
        "approved": "the amended constitution is adopted",
        "none": "the trained model proposed no usable change",
        "declined": "the trained model did not consent to it",
        "rejected": "the facilitator kept the current constitution",
    }.get(str(update.get("revision")), str(update.get("revision")))
    changes = "; ".join(f"{a['action']} {a.get('principle_id', '')}: {short(a.get('title'), 40)}" for a in applied)
    return (
        f"revision: {what}"
        + (f" ({changes})" if changes else "")
        + (f"; {refused} proposal{'s' * (refused != 1)} refused by the checks" if refused else "")
    )


def narrator(store: Store, run_id: str, emit: Callable[[str], None]) -> Callable[[str, dict], None]:
    """An ``on_update`` for :meth:`~luthitune.protocol.Protocol.advance` that emits one line per finished node."""
    seen = {"cycle": (store.get("runs", run_id) or {}).get("cycle") or 0}

    def on_update(node: str, update: dict) -> None:
        cycle = seen["cycle"]
        if node == "revise_constitution" and "cycle" in update:
            cycle = update["cycle"] - 1  # the revision closes the cycle it revised
        try:
            emit(describe(store, run_id, node, update, cycle))
        except Exception as exc:  # a line that cannot be written must not stop the run
            emit(f"{node}: done ({type(exc).__name__} while describing it)")
        if "cycle" in update:
            seen["cycle"] = update["cycle"]

    return on_update


def run_summary(store: Store, run_id: str) -> list[str]:
    """What held and what did not in a run, in plain sentences: the consent, who wrote the constitution and whether
    the model ratified it, the data kept and refused, the training size, what the evaluation can say, the revision."""
    from luthitune.evaluation import report

    out: list[str] = []
    consents = store.rows("consents", run_id=run_id, order_by="created_at")
    refused = Counter(a["step"] for a in store.rows("attempts", run_id=run_id))
    asked = [c for c in consents if c["round"] not in ("ratify", "revision")]
    if asked:
        got = ", ".join(c["decision"] for c in asked)
        out.append(
            f"Consent was asked {len(asked)} time(s) ({got}); the coherence check refused "
            f"{refused.get('consent', 0)} answer(s) and asked again. Last: {consent_line(asked[-1])}."
        )
    versions = store.rows("constitution_versions", run_id=run_id, order_by="version")
    drafts = {a["item_id"].rsplit(":", 1)[0] for a in store.rows("attempts", run_id=run_id, step="draft")}
    failed_rounds = [d for d in drafts if not store.rows("constitution_versions", draft_key=d)]
    approved = [v for v in versions if v["status"] == "approved"]
    first = approved[0] if approved else None
    if failed_rounds:
        out.append(f"The model's own drafts failed the principle checks {len(failed_rounds)} time(s).")
    if first:
        ratify = [c for c in consents if c["round"] == "ratify" and meaning_consents(c["decision"])]
        out.append(
            f"Constitution v{first['version']} was written by {first['author']}, approved by {first['approved_by']}"
            + (f" and ratified by the model ({consent_line(ratify[-1])})." if ratify else ".")
        )
    elif versions or failed_rounds:
        out.append("No constitution was approved and ratified.")
    for cycle in sorted({r["cycle"] for r in store.rows("scenarios", run_id=run_id)}):
        scen = store.rows("scenarios", run_id=run_id, cycle=cycle)
        pairs = store.rows("pairs", run_id=run_id, cycle=cycle)
        bad = [p for p in pairs if p["status"] == "quarantined"]
        failed = [s for s in scen if s["status"] == "failed"]
        # each count with its own reasons: a scenario's failure is not a pair's quarantine
        out.append(
            f"Cycle {cycle}: {len(scen)} scenario(s), {len(failed)} failed the checks"
            + (f" ({top_reasons(failed)})" if failed else "")
            + (
                f", {n} written by the facilitator after the model's failed"
                if (n := sum(bool(s.get("author")) for s in scen))
                else ""
            )
            + f"; {len(pairs)} pair(s), {len(pairs) - len(bad)} kept, {len(bad)} quarantined"
            + (f" ({top_reasons(bad)})" if bad else "")
            + "."
        )
        for tr in store.rows("training_runs", run_id=run_id, cycle=cycle):
            cfg = json.loads(tr["config_json"] or "{}")
            out.append(
                f"Training: {len(cfg.get('train_ids', []))} pair(s) trained on, {len(cfg.get('held_out_ids', []))} "
                f"held out ({tr['status']})."
            )
        values = report.load(store, run_id, cycle)
        if values:
            out += [f"Evaluation: {line}" for line in report.in_words(values)]
    for v in versions:
        if v["author"].startswith("model (adapter)"):
            log = json.loads(v["feedback"] or "{}")
            applied = sum(bool(a.get("applied")) for a in log.get("amendments", []))
            out.append(
                f"Revision v{v['version']} proposed by the trained model: {applied} amendment(s) passed the checks, "
                f"{len(log.get('amendments', [])) - applied + len(log.get('failed', []))} refused; {v['status']}."
            )
    return out


def meaning_consents(decision: str | None) -> bool:
    from luthitune.meaning import consents

    return consents(decision)
