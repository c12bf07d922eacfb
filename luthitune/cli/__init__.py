"""The ``luthitune`` command line (typer). Errors print one clear message and exit non-zero."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from luthitune.logs import err_console, quiet_libraries, setup_logging


class _Group(TyperGroup):
    """Turns typed LuthiTune errors into one message and their exit code, for every subcommand
    (also under ``CliRunner``, which never goes through :func:`main`)."""

    def invoke(self, ctx: click.Context):
        from luthitune.errors import LuthiTuneError

        try:
            return super().invoke(ctx)
        except LuthiTuneError as exc:
            err_console.print(f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print(
                "\n[yellow]Interrupted.[/] Everything finished so far is saved; `luthitune status` shows "
                "where each run stands and `luthitune resume RUN` continues it."
            )
            raise typer.Exit(130) from None
        except Exception as exc:
            if type(exc).__module__.startswith(("click", "typer")):  # usage errors, Exit, Abort: the CLI's own
                raise
            from luthitune.store import storage_error

            found = storage_error(exc, "a file of the workspace")  # read-only, full disk: the file and what to do
            if found is not None:
                err_console.print(f"[bold red]Error:[/] {found}", highlight=False, soft_wrap=True)
                raise typer.Exit(found.exit_code) from None
            # A bug or an unforeseen failure: one clear message; the traceback with --verbose.
            import logging

            logging.getLogger("luthitune").debug("Traceback", exc_info=True)
            err_console.print(
                f"[bold red]Unexpected error:[/] {type(exc).__name__}: {exc}\n"
                "Everything that finished before the error is saved: `luthitune status` shows where each run "
                "stands, and `luthitune resume RUN` retries from the last completed step. Run with --verbose for the "
                "traceback, and please report it if it persists.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    name="luthitune",
    help="Consensual alignment workbench: interview → consent → constitution → practice → DPO → "
    "evaluation → revision, on a local model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: $LUTHITUNE_HOME or the current folder)."),
]


@app.callback()
def _root(
    ctx: typer.Context,
    workspace: WorkspaceOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False,
) -> None:
    quiet_libraries()
    setup_logging(verbose)
    ctx.obj = {"workspace": workspace}


def workspace_arg(ctx: typer.Context, local: Path | None) -> Path | None:
    """A command's own --workspace wins over the global one."""
    return local if local is not None else (ctx.obj or {}).get("workspace")


def _register() -> None:
    from luthitune.cli import bench, core, data, runs

    core.register(app)
    runs.register(app)
    from luthitune.cli.ui import ui

    app.command()(ui)
    app.add_typer(data.app, name="data")
    app.add_typer(bench.app, name="bench")
    from luthitune.cli import review, train

    train.register(app)
    review.register(app)
    from luthitune.cli import export

    app.add_typer(export.app, name="export")


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="luthitune")
