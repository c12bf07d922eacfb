"""The demo: one full protocol cycle plus one revision, on autopilot, on the embedded model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.markup import escape
from rich.panel import Panel

from luthitune import constitution as C
from luthitune.config import Config
from luthitune.logs import console
from luthitune.runoptions import RunOptions
from luthitune.workspace import init_workspace

DEMO_SEED = 5

DEMO_OPTIONS = RunOptions(
    autopilot=True,
    # The meaning checks keep about a third to a half of a 135M model's pairs (10 to 16 of 32 on this seed), and
    # training needs training.min_pairs (8) of them besides the held-out share.
    n_scenarios=40,
    # A 135M model's consent answer is close to a coin toss: each "no" (and each answer the coherence check finds
    # unclear) is honoured and answered in the interview, and a third round keeps the demo from ending early most of
    # the time.
    max_consent_rounds=3,
    max_draft_rounds=2,
    # When the model's own drafts fail the principle checks, the demo's facilitator offers the packaged starter
    # constitution (recorded as the facilitator's), which the model is asked to ratify. No check is loosened.
    starter_constitution=True,
)
DEMO_SETTINGS = {
    **DEMO_OPTIONS.settings(),
    # A few more passes at a higher rate than the gentle default, so the evaluation can show what training changed.
    "train": {"epochs": 3.0, "batch_size": 2, "learning_rate": 2e-4, "beta": 0.1, "max_length": 384},
    # Ten probes of each set (trap, benign, values, neutral), short answers: on a CPU budget, and the report's
    # intervals say how little ten answers can show.
    "evaluation": {"probes_per_set": 10, "max_new_tokens": 64},
}


def run_demo(root: Path, *, scenarios: int | None = None, turns: int | None = None) -> dict:
    from luthitune.cli.runs import step_printer
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
    run_id = p.start(
        {
            **DEMO_SETTINGS,
            "n_scenarios": scenarios or DEMO_SETTINGS["n_scenarios"],
            "interview_turns": turns or DEMO_SETTINGS["interview_turns"],
        }
    )
    console.print(
        f"Demo run [bold]{run_id}[/] in {ws.root}: interview → consent → constitution → practice "
        "→ DPO → evaluation → revision, on autopilot with SmolLM2-135M-Instruct."
    )
    from luthitune.logs import RunProgress

    with RunProgress(
        "Working (the first run dequantizes the embedded model, ~30 s)", on_update=step_printer(p.store, run_id)
    ) as live:
        st = p.advance(run_id, on_update=live.update, on_progress=live.progress)
    elapsed = time.perf_counter() - t0
    summary(p, run_id, elapsed)
    return {"run_id": run_id, "seconds": elapsed, "status": st.status, "ended_by": st.values.get("ended_by")}


def summary(p, run_id: str, elapsed: float) -> None:
    """The demo's closing summary: the constitution in force, what held and what did not, the evaluation with its
    intervals, the trained model's revision as a diff, and the adapter's provenance."""
    from luthitune.cli.review import show_evaluation
    from luthitune.cli.runs import show_identity
    from luthitune.evaluation.report import load, slug, threshold_rows
    from luthitune.narrate import run_summary

    s = p.store
    st = p.status(run_id)
    versions = s.rows("constitution_versions", run_id=run_id, order_by="version")
    approved = [v for v in versions if v["status"] == "approved"]
    if approved:
        console.print(
            Panel(
                approved[0]["text"],
                title=f"constitution v{approved[0]['version']} (approved; written by {approved[0]['author']})",
                border_style="cyan",
            ),
            markup=False,
        )
    thresholds = p.context(run_id).evaluation_config().thresholds
    for cycle in sorted({e["cycle"] for e in s.rows("evaluations", run_id=run_id)}):
        show_evaluation(s, run_id, cycle, threshold_rows(load(s, run_id, cycle), thresholds))
        report = p.ws.data_dir / "reports" / f"{slug(run_id)}-c{cycle}.md"
        if report.exists():
            console.print(f"report: {report}", highlight=False)
    revised = [v for v in versions if v["author"].startswith("model (adapter)")]
    if approved and revised:
        r = revised[-1]
        diff = (
            "(the trained model proposed no change that passed the checks)"
            if r["status"] == "unchanged"
            else "\n".join(
                C.diff(approved[0]["text"], r["text"], f"v{approved[0]['version']}", f"v{r['version']} ({r['status']})")
            )
        )
        console.print(Panel(diff, title="revision proposed by the trained model", border_style="magenta"), markup=False)
        for a in json.loads(r["feedback"] or "{}").get("amendments", []):
            console.print(
                f"  amendment {a['action']} {a.get('principle_id', '')}: "
                + ("applied" if a.get("applied") else f"not applied ({escape(a.get('why', ''))})"),
                highlight=False,
            )
    console.print(
        Panel("\n".join(f"- {line}" for line in run_summary(s, run_id)), title="what held and what did not"),
        markup=False,
    )
    show_identity(s, run_id)
    console.print(
        f"Run {run_id} {st.status}"
        + (f" ({escape(str(st.values.get('ended')))})" if st.values.get("ended") else "")
        + f" in {elapsed:.0f} s. Database: {p.ws.db_path}",
        highlight=False,
    )
    adapters = [tr["adapter_name"] for tr in s.rows("training_runs", run_id=run_id, status="done")]
    if adapters:
        console.print(f"The whole chain behind the adapter: `luthitune provenance {adapters[-1]}`")
