"""``luthitune data``: export, stats and quarantine of the practice dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from luthitune.cli import WorkspaceOpt, workspace_arg
from luthitune.logs import console

app = typer.Typer(help="The practice dataset: export it, see its stats and its quarantine.", no_args_is_help=True)

RunOpt = Annotated[str | None, typer.Option("--run", help="Run id (default: the newest run with pairs).")]
CycleOpt = Annotated[int | None, typer.Option(help="Cycle (default: the run's newest).")]


def _open(ctx: typer.Context, workspace):
    from luthitune.store import Store
    from luthitune.workspace import Workspace

    ws = Workspace.open(workspace_arg(ctx, workspace))
    return ws, Store(ws.db_path)


@app.command("export")
def export(
    ctx: typer.Context,
    run: RunOpt = None,
    cycle: CycleOpt = None,
    out: Annotated[Path | None, typer.Option(help="Folder to write (default: data/exports/RUN-cCYCLE).")] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Write the kept pairs in TRL's conversational preference format (JSONL + datasets folder) with provenance."""
    from luthitune.dataset import export as do_export

    ws, _ = _open(ctx, workspace)
    rec = do_export(ws, run, cycle, out)
    console.print(
        f"Exported run {rec['run_id']} cycle {rec['cycle']}: {rec['split']['train']} train + "
        f"{rec['split']['held_out']} held-out pairs (dataset {rec['dataset_hash'][:12]})."
    )
    for k, v in rec["files"].items():
        console.print(f"  {k}: {v}")
    console.print(f"  provenance: {Path(rec['files']['train']).parent / 'provenance.json'}")


@app.command("stats")
def stats(
    ctx: typer.Context,
    run: RunOpt = None,
    cycle: CycleOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Counts, category mix, rejection reasons and length distributions of a run's practice data."""
    from luthitune.dataset import resolve
    from luthitune.dataset import stats as compute

    _, store = _open(ctx, workspace)
    st = compute(store, *resolve(store, run, cycle))
    if as_json:
        console.print_json(json.dumps(st))
        return
    console.print(
        f"Run {st['run_id']} cycle {st['cycle']}: {st['scenarios']} scenarios ({st['scenarios_failed']} failed), "
        f"{st['pairs']} pairs: [green]{st['kept']} kept[/], [yellow]{st['quarantined']} quarantined[/]"
    )
    t = Table("category", "scenarios", "failed", "kept", "quarantined", title="by category")
    for cat, c in st["by_category"].items():
        t.add_row(cat, *(str(c.get(k, 0)) for k in ("scenarios", "failed", "kept", "quarantined")))
    console.print(t)
    if st["by_reason"] or st["scenario_reasons"]:
        t = Table("rule", "failed requests", "quarantined pairs", title="why (each rule's rejections)")
        for rule in dict.fromkeys([*st["scenario_reasons"], *st["by_reason"]]):
            t.add_row(rule, str(st["scenario_reasons"].get(rule, 0)), str(st["by_reason"].get(rule, 0)))
        console.print(t)
    fr = st["facilitator_requests"]
    if fr["scenarios"]:
        console.print(
            f"{fr['scenarios']} request(s) written by the facilitator (a category's template, after the model's own "
            f"failed its checks); {fr['kept']} of them kept."
        )
    on = st["on_topic"]
    if on["of"]:
        console.print(
            f"{on['kept']} of {on['of']} kept requests speak of the topic their scenario was seeded with "
            "(share a content word with it)."
        )
    t = Table("field", "min", "median", "p90", "max", title="lengths of kept pairs (characters)")
    for f, d in st["lengths"].items():
        if d:
            t.add_row(f, *(f"{d[k]:.0f}" for k in ("min", "median", "p90", "max")))
    console.print(t)


@app.command("quarantine")
def quarantine(
    ctx: typer.Context,
    run: RunOpt = None,
    cycle: CycleOpt = None,
    raw: Annotated[bool, typer.Option(help="Show the raw model output in full.")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Quarantined pairs and failed scenarios, with the rule that rejected each and the model's raw text."""
    from luthitune.dataset import quarantine as listing
    from luthitune.dataset import resolve

    _, store = _open(ctx, workspace)
    run_id, _ = resolve(store, run, cycle)
    items = listing(store, run_id, cycle)
    if not items:
        console.print(f"Nothing quarantined in run {run_id}.")
        return
    for q in items:
        console.print(f"[bold]{escape(q['id'])}[/] ({q['kind']}, {escape(q['category'] or '?')})")
        if q["prompt"]:
            console.print(f"  request: {escape(q['prompt'])}", highlight=False)
        for r in q["reasons"]:
            console.print(f"  [yellow]✗[/] {escape(r)}", highlight=False)
        text = q["raw"] or ""
        console.print(
            f"  raw: {escape(text if raw else text[:200] + ('…' if len(text) > 200 else ''))}", highlight=False
        )
    console.print(f"{len(items)} item(s) in quarantine.")
