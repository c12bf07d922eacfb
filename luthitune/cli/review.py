"""What a run changed and where it came from: ``eval``, ``provenance`` and ``constitution show|history|diff``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from luthitune.cli import WorkspaceOpt, workspace_arg
from luthitune.errors import NotFound
from luthitune.logs import console


def _open(ctx: typer.Context, workspace):
    from luthitune.store import Store
    from luthitune.workspace import Workspace

    ws = Workspace.open(workspace_arg(ctx, workspace))
    return ws, Store(ws.db_path)


def show_evaluation(store, key: str, cycle: int, checks: list[dict]) -> None:
    """The cycle's numbers, each with its n and 95% interval, the change and what it reads as, and the thresholds."""
    from luthitune.evaluation.report import estimate, fmt, in_words, load

    values = load(store, key, cycle)
    t = Table("metric", "by", "n", "base", "adapter", "change", "reading", title=f"evaluation: {key}, cycle {cycle}")
    for metric in sorted({m for _, m in values}):
        b, a, c = (estimate(values.get((k, metric))) for k in ("base", "adapter", "change"))
        t.add_row(
            metric,
            values[next(k for k in (("adapter", metric), ("base", metric), ("change", metric)) if k in values)][
                "scorer"
            ],
            str(c.n or a.n or b.n or "–"),
            fmt(b, digits=2) if b.value is not None else "–",
            fmt(a, digits=2) if a.value is not None else "–",
            fmt(c, signed=True, digits=2) if c.value is not None else "–",
            c.reads() if c.value is not None else "",
        )
    console.print(t)
    for line in in_words(values):
        console.print(line, highlight=False)
    measured = [c for c in checks if c["adapter_measured"]]
    passed = [c["metric"] for c in measured if c["adapter_pass"] is True]
    failed = [c["metric"] for c in measured if c["adapter_pass"] is False]
    unshown = [c["metric"] for c in measured if c["adapter_pass"] is None]
    console.print(
        f"Humane thresholds (the whole 95% interval must clear them): {len(passed)} of {len(checks)} passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + (f"; not shown by this sample: {', '.join(unshown)}" if unshown else ""),
        highlight=False,
    )


def eval_cmd(
    ctx: typer.Context,
    target: Annotated[
        str | None, typer.Argument(help="Run id or adapter (name or folder). Default: newest run.")
    ] = None,
    cycle: Annotated[int | None, typer.Option(help="The run's cycle (default: its newest trained cycle).")] = None,
    rerun: Annotated[bool, typer.Option(help="Measure again even when this cycle was evaluated already.")] = False,
    probes_per_set: Annotated[int | None, typer.Option(min=1, help="Probe prompts per set (default: config).")] = None,
    judge: Annotated[bool | None, typer.Option("--judge/--no-judge", help="Judge pass (default: config).")] = None,
    probes: Annotated[
        Path | None,
        typer.Option(
            help="A probe file (the shape of prompts/probes.yaml) for this evaluation: its sets replace the packaged "
            "sets of the same name and add the others."
        ),
    ] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Base vs adapter: held-out pairs, probe prompts (the Humane checklist) and drift; writes the report."""
    from luthitune.evaluation import report, targets
    from luthitune.logs import RunProgress

    ws, store = _open(ctx, workspace)
    t = targets.resolve(ws, store, target, cycle)
    updates = {k: v for k, v in {"probes_per_set": probes_per_set, "judge": judge}.items() if v is not None}
    t.evaluation = t.evaluation.model_copy(update=updates)
    if probes is not None:
        t.probes = ws.probe_sets(str(probes.expanduser().resolve()))  # checked before anything is measured
        updates["probes"] = str(probes)
    measured = store.count("evaluations", run_id=t.key, cycle=t.cycle)
    if rerun or updates or not measured:
        from luthitune.evaluation.judge import judge_model

        judge_llm = judge_model(ws, t.evaluation)
        with RunProgress(f"Evaluating {t.adapter_name}") as live:
            targets.evaluate(
                ws,
                store,
                t,
                judge_llm=judge_llm,
                progress=lambda task, done, total: live.progress({"task": task, "done": done, "total": total}),
            )
    md, png, checks = report.write(
        store,
        ws.data_dir / "reports",
        t.key,
        t.cycle,
        t.evaluation.thresholds,
        adapter=t.adapter_name,
        constitution=t.constitution,
        held_out=len(t.pairs),
        backend=ws.config.backend,
    )
    show_evaluation(store, t.key, t.cycle, checks)
    console.print(f"Report: [bold]{md}[/]" + (f"  chart: {png}" if png else ""), highlight=False)


def provenance(
    ctx: typer.Context,
    adapter: Annotated[str, typer.Argument(help="Adapter name (models/adapters/NAME) or folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole record as JSON.")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """The adapter's whole chain: interview, consent, constitution and approvals, data, training, evaluation, and
    the model identity at every step."""
    from luthitune.provenance import adapter_provenance, render_text

    ws, store = _open(ctx, workspace)
    prov = adapter_provenance(ws, store, adapter)
    if as_json:
        console.print_json(json.dumps(prov, default=str))
        return
    for line in render_text(prov):
        console.print(escape(line), highlight=False)
    if prov["missing"]:
        raise typer.Exit(1)


constitution_app = typer.Typer(help="The constitution's versions and their lineage.", no_args_is_help=True)
RunOpt = Annotated[str | None, typer.Option("--run", help="Run id (default: the newest run).")]


def _run(store, run: str | None) -> str:
    if run:
        if store.get("runs", run) is None:
            raise NotFound(f"No run named {run!r}; `luthitune runs` lists them.")
        return run
    rows = store.rows("runs", order_by="created_at desc")
    if not rows:
        raise NotFound("There are no runs in this workspace yet: `luthitune run`.")
    return rows[0]["id"]


def _version(store, run_id: str, ref: str) -> dict:
    rows = store.rows("constitution_versions", run_id=run_id, order_by="version")
    for r in rows:
        if ref in {r["id"], f"v{r['version']}", str(r["version"])}:
            return r
    known = ", ".join(f"v{r['version']}" for r in rows) or "none"
    raise NotFound(f"Run {run_id} has no constitution version {ref!r}; versions: {known}.")


@constitution_app.command("show")
def show(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Argument(help="v2, 2, or a version id (default: the one in force).")] = None,
    run: RunOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Print a constitution version (by default the latest approved one)."""
    _, store = _open(ctx, workspace)
    run_id = _run(store, run)
    if version is None:
        approved = store.rows("constitution_versions", run_id=run_id, status="approved", order_by="version desc")
        if not approved:
            raise NotFound(
                f"Run {run_id} has no approved constitution yet; `luthitune constitution history` lists drafts."
            )
        row = approved[0]
    else:
        row = _version(store, run_id, version)
    console.print(
        Panel(escape(row["text"]), title=f"{row['id']} ({row['status']})", subtitle=f"sha256 {row['hash'][:16]}…")
    )


@constitution_app.command("history")
def history(ctx: typer.Context, run: RunOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Every version with its parent, author, status, approver and the model's consent."""
    _, store = _open(ctx, workspace)
    run_id = _run(store, run)
    t = Table(
        "version",
        "parent",
        "author",
        "status",
        "approved by",
        "model consent",
        "hash",
        title=f"constitution of {run_id}",
    )
    by_id = {}
    for r in store.rows("constitution_versions", run_id=run_id, order_by="version"):
        by_id[r["id"]] = r
        parent = by_id.get(r["parent_id"]) if r["parent_id"] else None
        consent = store.get("consents", r["consent_id"]) if r.get("consent_id") else None
        t.add_row(
            f"v{r['version']}",
            f"v{parent['version']}" if parent else "",
            r["author"],
            r["status"],
            r["approved_by"] or "",
            consent["decision"] if consent else "",
            r["hash"][:12],
        )
    console.print(t)


@constitution_app.command("diff")
def diff(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="From version (v1, 1 or an id).")],
    b: Annotated[str, typer.Argument(help="To version.")],
    run: RunOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """A unified diff between two versions."""
    from luthitune import constitution as C

    _, store = _open(ctx, workspace)
    run_id = _run(store, run)
    va, vb = _version(store, run_id, a), _version(store, run_id, b)
    lines = C.diff(va["text"], vb["text"], f"v{va['version']}", f"v{vb['version']}")
    if not lines:
        console.print(f"v{va['version']} and v{vb['version']} are the same text.")
        return
    for line in lines:
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
        console.print(escape(line), style=style, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command()(provenance)
    app.add_typer(constitution_app, name="constitution")
