"""The demo: one full protocol cycle plus one revision, on autopilot, on the embedded model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.markup import escape
from rich.panel import Panel

from luthitune import constitution as C
from luthitune.config import Config, init_workspace
from luthitune.logs import console

DEMO_SEED = 5

DEMO_SETTINGS = {
    "autopilot": True,
    "n_scenarios": 8,
    "interview_turns": 3,
    "max_cycles": 1,
    # A 135M model's consent answer is close to a coin toss (about one "no" in four at the deliberate
    # temperature): each "no" is honoured and answered in the interview, and a third round keeps the
    # demo from ending early most of the time.
    "max_consent_rounds": 3,
    # A handful of pairs: a few more passes at a higher rate than the gentle default, so the evaluation can show
    # what training changed (at 5e-5 and two steps, base and adapter answered alike).
    "train": {"epochs": 3.0, "batch_size": 2, "learning_rate": 2e-4, "beta": 0.1, "max_length": 384},
    # Three probes of each set (trap, benign, values, neutral), short answers: the whole checklist, on a CPU budget.
    "evaluation": {"probes_per_set": 3, "max_new_tokens": 64},
}


def run_demo(root: Path, *, scenarios: int = 8, turns: int = 3) -> dict:
    from luthitune.cli.runs import show_update
    from luthitune.protocol import Protocol

    t0 = time.perf_counter()
    # A new demo workspace samples with a fixed seed, recorded in its luthitune.yaml: the demo is then reproducible
    # on a CPU (every generation seeds its sequences from it). SmolLM2's answers are still its own; with this seed
    # it consents on its third round and completes the cycle here, while many seeds end the run at a "no", which
    # the protocol respects. An existing workspace keeps its own seed.
    ws, _ = init_workspace(root, seed=DEMO_SEED)
    if ws.config.backend != "local":
        ws.config = Config.model_validate({**ws.config.model_dump(), "backend": "local"})
    p = Protocol(ws)
    run_id = p.start({**DEMO_SETTINGS, "n_scenarios": scenarios, "interview_turns": turns})
    console.print(
        f"Demo run [bold]{run_id}[/] in {ws.root}: interview → consent → constitution → practice "
        "→ DPO → evaluation → revision, on autopilot with SmolLM2-135M-Instruct."
    )
    from luthitune.logs import RunProgress

    with RunProgress("Working (the first run dequantizes the embedded model, ~30 s)", on_update=show_update) as live:
        st = p.advance(run_id, on_update=live.update, on_progress=live.progress)
    elapsed = time.perf_counter() - t0
    summary(p, run_id, elapsed)
    return {"run_id": run_id, "seconds": elapsed, "status": st.status}


def summary(p, run_id: str, elapsed: float) -> None:
    s = p.store
    st = p.status(run_id)
    versions = s.rows("constitution_versions", "run_id = ?", [run_id], order_by="version")
    approved = [v for v in versions if v["status"] == "approved"]
    if approved:
        console.print(
            Panel(approved[0]["text"], title=f"constitution v{approved[0]['version']} (approved)", border_style="cyan")
        )
    asked = {
        "consent": "consent to continue",
        "ratify": "ratifies the constitution",
        "consent_revision": "consents to the revision",
    }
    for c in s.rows("consents", "run_id = ?", [run_id], order_by="created_at"):
        kind = c["id"].rsplit(":", 1)[-1].rstrip("0123456789")
        console.print(
            f"{asked.get(kind, kind)} (cycle {c['cycle']}): [bold]{c['decision']}[/]"
            f" — {escape(c['reasons_json'][:160])}"
            + (f" (conditions: {escape(c['conditions_json'][:100])})" if c["conditions_json"] else ""),
            highlight=False,
        )
    kept = s.count("pairs", "run_id = ? and status = 'kept'", [run_id])
    quarantined = s.rows("pairs", "run_id = ? and status = 'quarantined'", [run_id])
    failed = s.count("scenarios", "run_id = ? and status = 'failed'", [run_id])
    console.print(f"pairs kept: {kept}, quarantined: {len(quarantined)}, scenarios that failed generation: {failed}")
    for q in quarantined[:3]:
        console.print(f"  quarantined {q['id']}: {json.loads(q['reasons_json'] or '[]')[:1]}", highlight=False)
    for tr in s.rows("training_runs", "run_id = ?", [run_id]):
        steps = s.rows("training_steps", "training_id = ?", [tr["id"]], order_by="step")
        last = json.loads(steps[-1]["metrics_json"]) if steps else {}
        console.print(
            f"training c{tr['cycle']}: {len(steps)} steps, loss {last.get('loss', float('nan')):.4f}, "
            f"reward accuracy {last.get('rewards/accuracies', float('nan')):.2f}, "
            f"margin {last.get('rewards/margins', float('nan')):.4f} → {tr['adapter_path']}"
        )
    from luthitune.cli.review import show_evaluation
    from luthitune.evaluation.report import slug, threshold_rows

    thresholds = p.context(run_id).evaluation_config().thresholds
    for cycle in sorted({e["cycle"] for e in s.rows("evaluations", "run_id = ?", [run_id])}):
        rows = s.rows("evaluations", "run_id = ? and cycle = ?", [run_id, cycle])
        show_evaluation(
            s, run_id, cycle, threshold_rows({(e["model"], e["metric"]): e["value"] for e in rows}, thresholds)
        )
        report = p.ws.data_dir / "reports" / f"{slug(run_id)}-c{cycle}.md"
        if report.exists():
            console.print(f"report: {report}", highlight=False)
    revised = [v for v in versions if v["author"].startswith("model (adapter)")]
    if approved and revised:
        r = revised[-1]
        diff = (
            "\n".join(
                C.diff(approved[0]["text"], r["text"], f"v{approved[0]['version']}", f"v{r['version']} ({r['status']})")
            )
            or "(the trained model proposed no change)"
        )
        console.print(Panel(diff, title="revision proposed by the trained model", border_style="magenta"), markup=False)
        log = json.loads(r["feedback"] or "{}").get("amendments", [])
        for a in log:
            console.print(
                f"  amendment {a['action']} {a.get('principle_id', '')}: "
                f"{'applied' if a.get('applied') else 'not applied (' + a.get('why', '') + ')'}",
                highlight=False,
            )
    from luthitune.cli.runs import show_identity

    show_identity(s, run_id)
    console.print(
        f"Run {run_id} {st.status}"
        + (f" ({st.values.get('ended')})" if st.values.get("ended") else "")
        + f" in {elapsed:.0f} s. Database: {p.ws.db_path}"
    )
    adapters = [tr["adapter_name"] for tr in s.rows("training_runs", "run_id = ? and status = 'done'", [run_id])]
    if adapters:
        console.print(f"The whole chain behind the adapter: `luthitune provenance {adapters[-1]} -w {p.ws.root}`")
