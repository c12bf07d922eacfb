"""Workspace commands: ``init``, ``doctor``, ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from luthitune.cli import WorkspaceOpt, workspace_arg
from luthitune.logs import console


def init(
    ctx: typer.Context,
    directory: Annotated[Path | None, typer.Argument(help="Folder to set up (default: the workspace).")] = None,
    workspace: WorkspaceOpt = None,
    force: Annotated[bool, typer.Option(help="Overwrite luthitune.yaml and hyperparameters.yaml.")] = False,
    print_defaults: Annotated[bool, typer.Option(help="Print the default luthitune.yaml and exit.")] = False,
) -> None:
    """Create a workspace: luthitune.yaml, config/, checkpoints/, data/, models/."""
    from luthitune.config import default_config_yaml
    from luthitune.workspace import init_workspace, resolve_workspace

    if print_defaults:
        console.print(default_config_yaml(), markup=False, highlight=False)
        return
    if directory is not None and workspace is not None and Path(directory).resolve() != Path(workspace).resolve():
        raise typer.BadParameter(
            f"two folders given: {directory} and -w {workspace}; give one", param_hint="DIRECTORY / -w"
        )
    root = resolve_workspace(directory if directory is not None else workspace_arg(ctx, workspace))
    ws, created = init_workspace(root, force=force)
    from luthitune.store import Store

    store = Store(ws.db_path)
    store.close()
    console.print(f"Workspace ready at [bold]{ws.root}[/]")
    for p in created:
        console.print(f"  created {p.relative_to(ws.root)}")
    console.print(f"  database {ws.db_path.relative_to(ws.root)}")
    console.print("Next: `luthitune doctor`, then `luthitune demo`.")


def doctor(ctx: typer.Context, workspace: WorkspaceOpt = None) -> None:
    """Check the backend, the model, GPU/CUDA, unsloth and library versions. Exit 1 if a required check fails."""
    from luthitune.doctor import failed, run_checks

    checks = run_checks(workspace_arg(ctx, workspace))
    table = Table(title="luthitune doctor", show_lines=False)
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for c in checks:
        mark = "[green]ok[/]" if c.ok else ("[red]FAIL[/]" if c.required else "[yellow]warn[/]")
        table.add_row(escape(c.name), mark, escape(c.detail))
    console.print(table)
    if failed(checks):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(doctor)
    from luthitune.cli.demo import demo

    app.command()(demo)
