"""``luthitune demo``: a real exchange with the embedded model, no Ollama and no GPU needed."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from luthitune.demo import DEMO_OPTIONS
from luthitune.logs import console


def demo(
    ctx: typer.Context,
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace to run in (created if needed). Default: a throwaway one."),
    ] = None,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep/--discard",
            help="Keep the throwaway workspace, to read what the model wrote (the report, the database), or "
            "remove it when the demo ends.",
        ),
    ] = True,
    scenarios: Annotated[int, typer.Option(min=2, help="Practice scenarios in the cycle.")] = DEMO_OPTIONS.n_scenarios,
    turns: Annotated[int, typer.Option(min=1, help="Interview questions.")] = DEMO_OPTIONS.interview_turns,
) -> None:
    """Run the demo on the embedded model (SmolLM2-135M-Instruct) in a throwaway or named workspace."""
    from luthitune.cli import ctrl_c, remember_workspace, workspace_arg
    from luthitune.demo import run_demo

    target = workspace_arg(ctx, workspace)
    if target is not None:
        with ctrl_c():
            result = run_demo(Path(target), scenarios=scenarios, turns=turns)
        finish(result)
        return
    tmp = Path(tempfile.mkdtemp(prefix="luthitune-demo-"))
    remember_workspace(tmp)
    try:
        with ctrl_c():
            result = run_demo(tmp, scenarios=scenarios, turns=turns)
        finish(result)
    except BaseException:
        # Interrupted or failed: keep what was done, so it can be inspected and resumed, and say where it is.
        console.print(
            f"The demo's workspace is kept at {tmp}: `luthitune status` shows its runs, "
            "`luthitune resume RUN` continues one."
        )
        raise
    if keep:
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6
        console.print(
            f"The demo's workspace is kept at {tmp} ({size:,.0f} MB): `luthitune constitution show`, "
            "`luthitune data stats` and its data/reports/ show what the model wrote; `--discard` removes it "
            "when the demo ends.",
            highlight=False,
        )
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def finish(result: dict) -> None:
    """A demo whose run did not complete its cycle exits non-zero, like the run would (README, "Exit codes")."""
    from luthitune.cli.runs import ENDED_EXIT

    if result["status"] != "done":
        raise typer.Exit(ENDED_EXIT.get(result.get("ended_by") or "", 0) or 1)
