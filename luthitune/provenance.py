"""``luthitune provenance ADAPTER``: the whole chain behind an adapter, read from the database and its manifest.

Interview transcript → consent records → constitution version and its lineage (authors, approvals, the consent each
revision was given) → practice data (counts, hashes) → training (config, metrics, path) → evaluation → the model
identity at every step. A reviewer can audit from it that the model trained is the model that agreed.
"""

from __future__ import annotations

import json
from typing import Any

from luthitune.errors import NotFound
from luthitune.store import Store, sha256
from luthitune.workspace import Workspace

SECTIONS = ("adapter", "interview", "consents", "constitution", "dataset", "training", "evaluation", "identity")


def _lineage(store: Store, version_id: str | None) -> list[dict[str, Any]]:
    """The constitution version and its ancestors, newest first, each with the consent it was given."""
    chain, seen = [], set()
    while version_id and version_id not in seen:
        seen.add(version_id)
        row = store.get("constitution_versions", version_id)
        if row is None:
            break
        consent = store.get("consents", row["consent_id"]) if row.get("consent_id") else None
        chain.append(
            {
                "id": row["id"],
                "version": row["version"],
                "hash": row["hash"],
                "author": row["author"],
                "status": row["status"],
                "approved_by": row["approved_by"],
                "approved_at": row["approved_at"],
                "proposed_by": json.loads(row["model_json"]) if row.get("model_json") else None,
                "consent": {"id": consent["id"], "decision": consent["decision"]} if consent else None,
                "text": row["text"],
            }
        )
        version_id = row["parent_id"]
    return chain


def _interview(store: Store, run_id: str) -> dict[str, Any]:
    msgs = store.transcript(run_id)
    if not msgs:
        return {}
    first_user = next((m for m in msgs if m["role"] == "user"), None)
    first_reply = next((m for m in msgs if m["role"] == "assistant"), None)
    return {
        "messages": len(msgs),
        "cycles": sorted({m["cycle"] for m in msgs}),
        "sha256": sha256(json.dumps([[m["role"], m["content"]] for m in msgs], ensure_ascii=False)),
        "opening": (first_user or {}).get("content", "")[-300:],
        "first_reply": (first_reply or {}).get("content", "")[:300],
    }


def _dataset(store: Store, run_id: str, cycle: int, manifest: dict) -> dict[str, Any]:
    count = lambda t, st: store.count(t, run_id=run_id, cycle=cycle, status=st)  # noqa: E731
    return {
        **(manifest.get("dataset") or {}),
        "scenarios": store.count("scenarios", run_id=run_id, cycle=cycle),
        "scenarios_failed": count("scenarios", "failed"),
        "pairs_kept": count("pairs", "kept"),
        "pairs_quarantined": count("pairs", "quarantined"),
    }


def _evaluation(ws: Workspace, store: Store, key: str, cycle: int) -> dict[str, Any]:
    rows = store.rows("evaluations", run_id=key, cycle=cycle, order_by="metric, model")
    metrics: dict[str, dict[str, Any]] = {}
    for r in rows:  # each value with its n and 95% interval
        metrics.setdefault(r["metric"], {"scorer": r["scorer"]})[r["model"]] = {
            "value": r["value"],
            "n": r.get("n"),
            "interval": [r.get("lo"), r.get("hi")],
        }
    from luthitune.evaluation.report import slug

    report = ws.data_dir / "reports" / f"{slug(key)}-c{cycle}.md"
    return {"metrics": metrics, "report": str(report) if report.exists() else None} if metrics else {}


def adapter_provenance(ws: Workspace, store: Store, adapter: str) -> dict[str, Any]:
    from luthitune import identity
    from luthitune.evaluation.targets import adapter_dir
    from luthitune.training.manifest import read

    path = adapter_dir(ws, adapter)
    if path is None:
        raise NotFound(f"No adapter {adapter!r} (a folder, or a name under {ws.models_dir / 'adapters'}).")
    man = read(path)
    if not man:
        raise NotFound(
            f"{path} has no luthitune-manifest.json: it was not trained by LuthiTune, so its chain is unknown."
        )
    run_id, cycle = man.get("run_id"), man.get("cycle") or 0
    in_run = bool(run_id) and store.get("runs", run_id) is not None
    out: dict[str, Any] = {
        "adapter": {
            "name": man.get("name"),
            "path": str(path),
            "created_at": man.get("created_at"),
            "sha256": identity.adapter_digest(path),
            "run_id": run_id,
            "cycle": cycle,
        },
        "training": {
            "path": man.get("training_path"),
            "hyperparameters": (man.get("config") or {}).get("hyperparameters"),
            "total_steps": (man.get("config") or {}).get("total_steps"),
            "notes": (man.get("config") or {}).get("notes"),
            "metrics": (man.get("metrics") or {}).get("final"),
            "resumed_from_step": man.get("resumed_from_step"),
            "seconds": man.get("seconds"),
            "versions": man.get("versions"),
        },
        "base_model": man.get("base_model"),
    }
    const_id = (man.get("constitution") or {}).get("id")
    out["constitution"] = _lineage(store, const_id) or ([man["constitution"]] if man.get("constitution") else [])
    if in_run:
        out["interview"] = _interview(store, run_id)
        out["consents"] = [
            {
                "id": c["id"],
                "cycle": c["cycle"],
                "decision": c["decision"],
                "reasons": c["reasons_json"],
                "conditions": c["conditions_json"],
                "reviewed_by": c["reviewed_by"],
            }
            for c in store.rows("consents", run_id=run_id, cycle__le=cycle, order_by="created_at")
        ]
        out["dataset"] = _dataset(store, run_id, cycle, man)
        out["evaluation"] = _evaluation(ws, store, run_id, cycle)
        out["identity"] = identity.provenance(store, run_id)
    else:
        out["interview"], out["consents"] = {}, []
        out["dataset"] = man.get("dataset") or {}
        out["evaluation"] = _evaluation(ws, store, f"adapter:{path.name}", 0)
        out["identity"] = {
            "steps": [{"step": "training base", "identity": man.get("base_model")}],
            "one_model": None,
            "digest": (man.get("base_model") or {}).get("digest"),
        }
    out["missing"] = [s for s in SECTIONS if not out.get(s)]
    return out


def render_text(prov: dict[str, Any]) -> list[str]:
    """Plain lines for the terminal (the CLI draws them as a tree)."""
    a, t = prov["adapter"], prov["training"]
    lines = [f"adapter {a['name']} ({a['path']}), sha256 {a['sha256'][7:19]}…, run {a['run_id']} cycle {a['cycle']}"]
    iv = prov.get("interview") or {}
    if iv:
        lines.append(
            f"interview: {iv['messages']} messages (sha256 {iv['sha256'][:12]}…); opening: {iv['opening'][:80]!r}"
        )
    for c in prov.get("consents", []):
        lines.append(
            f"consent {c['id'].rsplit(':', 1)[-1]} (cycle {c['cycle']}): {c['decision']} — {c['reasons'][:100]}"
        )
    for v in prov.get("constitution", []):
        consent = (v.get("consent") or {}).get("decision")
        lines.append(
            f"constitution v{v.get('version')} {str(v.get('hash', ''))[:12]}…: {v.get('status')}, "
            f"by {v.get('author')}, approved by {v.get('approved_by')}"
            + (f", model consent {consent}" if consent else "")
        )
    d = prov.get("dataset") or {}
    lines.append(
        f"dataset {str(d.get('hash', ''))[:12]}…: {d.get('train_pairs')} train + "
        f"{d.get('held_out_pairs')} held-out pairs"
        + (
            f"; {d['pairs_kept']} kept, {d['pairs_quarantined']} quarantined of {d['scenarios']} scenarios"
            if "pairs_kept" in d
            else ""
        )
    )
    m = t.get("metrics") or {}
    lines.append(
        f"training: {(t.get('path') or {}).get('kind')} path, {int(m.get('train_steps', 0))} steps, "
        f"loss {m.get('loss', float('nan')):.4f}, reward accuracy {m.get('rewards/accuracies', float('nan')):.2f}, "
        f"{t.get('seconds')} s"
    )
    ev = (prov.get("evaluation") or {}).get("metrics", {})

    def est(v: dict | None) -> str:
        from luthitune.evaluation.report import fmt
        from luthitune.evaluation.stats import Estimate

        if not v:
            return "–"
        lo, hi = v.get("interval") or (None, None)
        return f"{fmt(Estimate(v.get('value'), v.get('n') or 0, lo, hi))} (n = {v.get('n') or '–'})"

    for name in ("pairs.reward_acc", "probes.trap.humane_rate", "probes.trap.agency_rate", "drift.kl_mean"):
        if name in ev:
            lines.append(f"evaluation {name}: base {est(ev[name].get('base'))}, adapter {est(ev[name].get('adapter'))}")
    ident = prov.get("identity") or {}
    verdict = {
        True: "one model identity from interview to adapter",
        False: "MORE THAN ONE model identity",
        None: "identity recorded for training only",
    }[ident.get("one_model")]
    lines.append(f"identity: {verdict} ({ident.get('digest') or 'see steps'})")
    if prov.get("missing"):
        lines.append(f"missing: {', '.join(prov['missing'])}")
    return lines
