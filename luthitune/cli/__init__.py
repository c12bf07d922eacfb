"""The ``luthitune`` command line (typer). Errors print one clear message and exit non-zero."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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
        from luthitune.cancel import Cancelled
        from luthitune.errors import LuthiTuneError

        try:
            return super().invoke(ctx)
        except Cancelled as exc:
            err_console.print(f"\n[yellow]Interrupted.[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
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
            # A bug or an unforeseen failure: one clear message; the traceback with --verbose.
            import logging

            logging.getLogger("luthitune").debug("Traceback", exc_info=True)
            err_console.print(
                f"[bold red]Unexpected error:[/] {type(exc).__name__}: {exc}\n"
                "Everything finished before it is saved: `luthitune status` shows where each run stands, and "
                "`luthitune resume RUN` retries from the last completed step. Run with --verbose for the "
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


@contextmanager
def ctrl_c() -> Iterator[None]:
    """Around a command that drives runs: the first Ctrl-C stops them at their next progress point (the command
    then ends with :class:`~luthitune.cancel.Cancelled`: run id, resume command, exit 130); the second exits at once,
    without waiting for any thread, like a kill: what was stored stays, and ``resume`` continues from the last
    completed step."""
    from luthitune import cancel

    def notify(runs: list[str]) -> None:
        err_console.print(
            f"\n[yellow]Stopping {', '.join(runs)}[/] at the next progress point (Ctrl-C again to quit at once).",
            highlight=False,
        )

    def force(runs: list[str]) -> None:
        resume = " / ".join(f"`luthitune resume {r}`" for r in runs)
        err_console.print(
            f"\n[yellow]Interrupted.[/] Stopped at once; {resume or '`luthitune resume RUN`'} continues from the last "
            "completed step.",
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)

    with cancel.ctrl_c(notify, force):
        yield


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
    """Console-script entry point.

    An interrupted command (exit 130) leaves without the interpreter's teardown: everything it did is stored by
    then, so it waits for no thread still finishing its share of a step (``threading._shutdown`` would join it)
    and skips the second or so that unloading torch and transformers takes."""
    try:
        app(args=argv, prog_name="luthitune")
    except SystemExit as exc:
        if exc.code == 130:
            import logging

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise
