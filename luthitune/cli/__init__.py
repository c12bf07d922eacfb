"""The ``luthitune`` command line (typer). Errors print one clear message and exit non-zero."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from luthitune.logs import console, err_console, quiet_libraries, setup_logging

BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0", "y", "n", "t", "f"}


def _flags_without_type() -> None:
    """typer's rich help prints a type (``<bool>``) beside every flag, as if it took a value, which invites
    ``--autopilot true`` ("unexpected extra argument"). A flag takes none: show no type for it. (typer's plain help
    already leaves it out: ``TyperOption.get_help_record`` checks ``is_flag``.)"""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "luthitune", False):
        return

    def display_type_rich(self, ctx) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.luthitune = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_type()


def _flag_hint(exc: Exception) -> None:
    """`--autopilot true` fails with "unexpected extra argument (true)": say that flags take no value."""
    message = getattr(exc, "message", None)
    extra = re.search(r"unexpected extra argument(?:s|\(s\))? \((.+)\)", message) if isinstance(message, str) else None
    if extra and set(extra.group(1).lower().split()) <= BOOL_WORDS:
        exc.message = (  # type: ignore[attr-defined]
            f"{message}\nOn/off options are flags and take no value: write `--autopilot` or `--no-autopilot`, "
            "not `--autopilot true`."
        )


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
        except BrokenPipeError:  # `luthitune ... | head`: the reader stopped reading, which is not an error
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # no second error while Python flushes stdout at exit
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            err_console.print(
                "\n[yellow]Interrupted.[/] Everything finished so far is saved; `luthitune status` shows "
                "where each run stands and `luthitune resume RUN` continues it."
            )
            raise typer.Exit(130) from None
        except Exception as exc:
            if type(exc).__module__.startswith(("click", "typer")):  # usage errors, Exit, Abort: the CLI's own
                _flag_hint(exc)
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
                + "Everything that finished before the error is saved: `luthitune status` shows where each run "
                "stands, and `luthitune resume RUN` retries from the last completed step. Run with --verbose "
                "for the traceback, and please report it if it persists.",
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
            f"\n[yellow]Interrupted.[/] Stopped at once; {resume or '`luthitune resume RUN`'} continues from the "
            "last completed step.",
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
    remember_workspace(None)  # a new command (CliRunner runs several in one process)


def workspace_arg(ctx: typer.Context, local: Path | None) -> Path | None:
    """A command's own --workspace wins over the global one."""
    chosen = local if local is not None else (ctx.obj or {}).get("workspace")
    if chosen is not None:
        remember_workspace(chosen)
    return chosen


_chosen: Path | None = None  # this command's workspace, where a signal handler (outside click's context) finds it


def remember_workspace(path: Path | None) -> None:
    """Note the workspace this command works on, for the commands its messages suggest (:func:`for_workspace`)."""
    global _chosen
    _chosen = Path(path) if path is not None else None


_SUGGESTED = re.compile(r"`luthitune ([^`]*)`")  # a suggested command, between backticks
_NAMES_WORKSPACE = re.compile(r"(?:^|\s)(?:-w|--workspace)(?:\s|=|$)")


def for_workspace(text: str) -> str:
    """``text`` with every command it suggests (`` `luthitune resume RUN` ``) run on this command's workspace:
    ``luthitune -w ROOT ...`` where that is not the one a bare ``luthitune`` opens (``$LUTHITUNE_HOME``, else the
    current folder)."""
    if _chosen is None or "`luthitune " not in text:
        return text
    default = Path(os.environ.get("LUTHITUNE_HOME") or os.getcwd()).resolve()
    if _chosen.resolve() == default:
        return text
    import shlex

    flag = f"-w {shlex.quote(str(_chosen))}"

    def on_workspace(m: re.Match) -> str:
        return m.group(0) if _NAMES_WORKSPACE.search(m.group(1)) else f"`luthitune {flag} {m.group(1)}`"

    return _SUGGESTED.sub(on_workspace, text)


# Every message this CLI prints, errors and hints, panels and tables, suggests its commands on its workspace.
console.rewrite = err_console.rewrite = for_workspace


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
