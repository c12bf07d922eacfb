"""Run commands: ``run``, ``resume``, ``status``, ``runs``, ``answer``, ``approve``, ``reject``, ``edit``,
``review``, ``interview``, ``history``, ``fork``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from luthitune import facilitator as A
from luthitune import runoptions as RO
from luthitune.cli import WorkspaceOpt, recipe, workspace_arg
from luthitune.errors import AnswerDue, LuthiTuneError, NotResumable, RunElsewhere, RunFinished
from luthitune.logs import console

RunArg = Annotated[str, typer.Argument(help="Run id (see `luthitune runs`).")]
RunRecipe = recipe.option("train", "evaluation")


def protocol(ctx: typer.Context, workspace=None):
    from luthitune.protocol import Protocol
    from luthitune.workspace import Workspace

    return Protocol(Workspace.open(workspace_arg(ctx, workspace)))


def step_printer(store, run_id: str):
    """``on_update`` that prints one readable line per finished step (:mod:`luthitune.narrate`)."""
    from luthitune.narrate import narrator

    return narrator(store, run_id, lambda line: console.print(f"[green]✓[/] {escape(line)}", highlight=False))


# How a run that ended early exits (README, "Exit codes"): a failed check of the model's words or data is 1, the
# model's own "no" is 5; a facilitator who ends the run ends it as asked (0).
ENDED_EXIT = {"checks": 1, "declined": 5, "facilitator": 0}


def exit_for(p, st) -> None:
    """End the command non-zero when the run ended because a check failed (1) or the model declined (5), so scripts
    can tell either from a completed run."""
    if st.status != "ended":
        return
    code = ENDED_EXIT["declined"] if declined(p.store, st) else ENDED_EXIT.get(st.values.get("ended_by") or "", 0)
    if code:
        why = "the model declined" if code == ENDED_EXIT["declined"] else "a check of the model's words or data failed"
        console.print(f"Run {st.run_id} ended because {why} (exit code {code}).", highlight=False)
        raise typer.Exit(code)


def show_status(st) -> None:
    from luthitune.narrate import cycle_label

    console.print(f"Run [bold]{st.run_id}[/]: [bold]{st.status}[/]  {cycle_label(st.status, st.values)}")
    if st.values.get("ended"):
        console.print(f"  ended: {escape(str(st.values['ended']))}")
    if st.interrupt:
        i = st.interrupt
        body = {k: v for k, v in i.items() if k not in {"type", "hint", "asked_at", "pairs", "answers"}}
        text = "\n".join(f"[bold]{k}[/]: {escape(str(v))}" for k, v in body.items())
        for pair in i.get("pairs", []):
            text += (
                f"\n[bold cyan]{escape(pair['id'])}[/] ({escape(pair['category'] or '')})\n"
                f"  [bold]request[/]: {escape(pair['prompt'])}\n  [bold]rejected[/]: {escape(pair['rejected'])}\n"
                f"  [bold]critique[/]: {escape(pair['critique'])}\n  [bold]chosen[/]: {escape(pair['chosen'])}"
            )
        console.print(
            Panel(text, title=f"waiting for: {i['type']}", subtitle=escape(i.get("hint", "")), border_style="yellow")
        )
        console.print(NEXT_STEP.get(i["type"], "").format(run=st.run_id, hint=i.get("hint", "")), highlight=False)
    elif st.status == "interrupted":
        console.print(f"  stopped inside {', '.join(st.next)}; `luthitune resume {st.run_id}` continues it.")
    elif st.status == "server":
        from luthitune.runs import server_note

        console.print(f"  {escape(server_note(st))}", highlight=False, soft_wrap=True)


NEXT_STEP = {
    "interview": 'Reply with `luthitune answer {run} "..."` (or "/done" to end the interview and go to the consent '
    "question), or talk turn by turn with `luthitune interview {run}`.",
    "consent_review": "`luthitune approve {run}` or `luthitune reject {run}` ({hint}).",
    "constitution_review": "`luthitune approve {run}` (the model is then asked to ratify it), `luthitune edit {run}` "
    "(your text replaces the draft, then the model is asked to ratify it), or "
    '`luthitune reject {run} --feedback "..."` (the model redrafts with your feedback).',
    "confirm_training": "`luthitune approve {run}` to train now, `luthitune reject {run}` to end the run without "
    "training.",
    "pair_review": "`luthitune approve {run}` to accept them all, `luthitune reject {run} --pair ID ...` to drop "
    "some, or `luthitune review {run}` to go through them one by one.",
    "revision_review": "`luthitune approve {run}` to adopt the amended constitution for the next cycle, `luthitune "
    "edit {run}` to change it first (the trained model is asked to consent to your text), `luthitune reject {run}` "
    "to keep the current one.",
    "constitution_write": "`luthitune edit {run}` to write the constitution (the starter is offered to edit), "
    "`luthitune reject {run}` to end the run.",
}


def advance(p, run_id: str, resume: Any = None):
    """Run ``run_id`` to its next stop with a live view. Ctrl-C stops it at the next progress point (see
    :func:`luthitune.cli.ctrl_c`) and ends the command with the run id and the resume command, exit 130."""
    from luthitune.cancel import Cancelled
    from luthitune.cli import ctrl_c
    from luthitune.logs import RunProgress

    try:
        with ctrl_c(), RunProgress(f"Running {run_id}", on_update=step_printer(p.store, run_id)) as live:
            st = p.advance(run_id, resume, on_update=live.update, on_progress=live.progress)
    except KeyboardInterrupt:  # before the run's step was under way: the same message as a cancelled step
        raise Cancelled(run_id) from None
    show_status(st)
    exit_for(p, st)
    return st


def declined(store, st) -> bool:
    """Whether run ``st`` ended because the model said no. Runs record who ended them (``ended_by``); for an older
    run, the last consent question it was asked (consent, ratification) was answered "no" without a facilitator
    ending the run at its review."""
    if st.status != "ended":
        return False
    if "ended_by" in st.values:
        return st.values["ended_by"] == "declined"
    rows = store.rows("consents", run_id=st.run_id, order_by="created_at")
    return bool(rows) and rows[-1]["decision"] == "no" and rows[-1]["reviewed_by"] != "human:end"


def run(
    ctx: typer.Context,
    workspace: WorkspaceOpt = None,
    autopilot: Annotated[bool, run_option("autopilot")] = RO.default("autopilot"),
    scenarios: Annotated[int | None, run_option("n_scenarios")] = RO.default("n_scenarios"),
    judge: Annotated[bool | None, run_option("judge", "--judge/--no-judge")] = RO.default("judge"),
    cycles: Annotated[int, run_option("max_cycles")] = RO.default("max_cycles"),
    turns: Annotated[int, run_option("interview_turns")] = RO.default("interview_turns"),
    consent_rounds: Annotated[int, run_option("max_consent_rounds")] = RO.default("max_consent_rounds"),
    draft_rounds: Annotated[int, run_option("max_draft_rounds")] = RO.default("max_draft_rounds"),
    starter: Annotated[bool, run_option("starter_constitution", "--starter-constitution")] = RO.default(
        "starter_constitution"
    ),
    name: Annotated[str | None, typer.Option(help="Run id (default: generated).")] = None,
    train_processes: Annotated[int | None, run_option("train_processes", "--train-processes")] = RO.default(
        "train_processes"
    ),
    config: RunRecipe = None,
) -> None:
    """Start a run; it stops at the first approval point unless --autopilot.

    With --config, a recipe YAML gives these options (`scenarios: 8`, `autopilot: true`...) and the run's `train:`
    (hyperparameters.yaml's sections or short names: `learning_rate`, `epochs`, `beta`...) and `evaluation:`
    settings; flags on the command line override it."""
    p = protocol(ctx, workspace)
    extra = recipe.sections(ctx)
    if extra:
        check_recipe(p.ws, config, extra)
    options = RO.RunOptions.of(
        autopilot=autopilot,
        n_scenarios=scenarios,
        judge=judge,
        max_cycles=cycles,
        interview_turns=turns,
        max_consent_rounds=consent_rounds,
        max_draft_rounds=draft_rounds,
        train_processes=train_processes,
        starter_constitution=starter,
    )
    settings = {**extra, **options.settings()}
    run_id = p.start(settings, run_id=name)
    console.print(f"Started run [bold]{run_id}[/] in {p.ws.root}")
    show_identity(p.store, run_id)
    advance(p, run_id)


def run_option(name: str, *flags: str) -> Any:
    """The typer option for run option ``name`` (:mod:`luthitune.runoptions`): its help and lower bound."""
    return typer.Option(*flags, min=RO.minimum(name), help=RO.help_text(name))


def check_recipe(ws, path, extra: dict) -> None:
    """A recipe's ``train:`` and ``evaluation:`` sections, validated now, with errors that name the file."""
    from luthitune.config import EvaluationConfig
    from luthitune.configfiles import load_model
    from luthitune.training.config import merge

    if "train" in extra:
        merge(ws.hyperparameters(), extra["train"], source=f"{path} (train:)")
    if "evaluation" in extra:
        load_model(EvaluationConfig, path, {**ws.config.evaluation.model_dump(mode="json"), **extra["evaluation"]})


def show_identity(store, run_id: str) -> None:
    """The run's model identity in one line: the same weights interviewed and trained, or a plain warning."""
    from luthitune.identity import describe_run

    found = describe_run(store, run_id)
    if found:
        text, ok = found
        console.print(("  " if ok else "  [bold yellow]warning[/]: ") + escape(text), highlight=False, soft_wrap=True)


def newest_resumable(p) -> str:
    """The newest run that stopped inside a step or never started; else the newest run (to say where it stands)."""
    rows = p.runs()
    if not rows:
        raise LuthiTuneError("There are no runs in this workspace yet: start one with `luthitune run`.")
    for row in rows:
        try:
            p.resumable(row["id"])
        except NotResumable:
            continue
        return row["id"]
    return rows[0]["id"]


def resume(
    ctx: typer.Context,
    run_id: Annotated[
        str | None, typer.Argument(help="Run id (default: the newest run that was stopped inside a step).")
    ] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Continue a run after a crash or Ctrl-C, from its last completed step (the newest such run by default)."""
    p = protocol(ctx, workspace)
    if run_id is None:
        run_id = newest_resumable(p)
        console.print(f"Run [bold]{run_id}[/] (the newest run stopped inside a step, else the newest run).")
    try:
        p.resumable(run_id)
    except RunFinished as exc:
        console.print(str(exc))
        show_status(exc.status)
        exit_for(p, exc.status)
        return
    except (AnswerDue, RunElsewhere) as exc:  # an answer is due, here or in LangGraph's server
        show_status(exc.status)
        return
    advance(p, run_id)


def status(
    ctx: typer.Context, run_id: Annotated[str | None, typer.Argument()] = None, workspace: WorkspaceOpt = None
) -> None:
    """Where a run stands and what it waits for (the latest run by default)."""
    p = protocol(ctx, workspace)
    if run_id is None:
        rows = p.runs()
        if not rows:
            raise LuthiTuneError("There are no runs in this workspace yet: start one with `luthitune run`.")
        run_id = rows[0]["id"]
    st = p.status(run_id)
    show_status(st)
    from luthitune.facilitator import counts

    console.print("  " + ", ".join(f"{k}: {v}" for k, v in counts(p.store, run_id).items()))
    show_identity(p.store, run_id)


def runs(ctx: typer.Context, workspace: WorkspaceOpt = None) -> None:
    """List runs in the workspace."""
    p = protocol(ctx, workspace)
    t = Table("run", "status", "cycle", "backend", "model", "created")
    for r in p.runs():
        t.add_row(
            r["id"], r["status"], str(r["cycle"]), r["backend"] or "", r["chat_model"] or "", r["created_at"][:19]
        )
    console.print(t)


def _expect(st, expected) -> dict:
    i = st.interrupt or {}
    hint = NEXT_STEP.get(i.get("type"), "").format(run=st.run_id, hint=i.get("hint", ""))
    return A.expect(st, expected, hint)


def _answer(ctx, run_id, workspace, expected, value: Any) -> None:
    p = protocol(ctx, workspace)
    _expect(p.status(run_id), expected)
    advance(p, run_id, value)


def answer(
    ctx: typer.Context,
    run_id: RunArg,
    message: Annotated[str, typer.Argument(help="Your message, or /done.")],
    workspace: WorkspaceOpt = None,
) -> None:
    """Send the facilitator's next interview message."""
    _answer(ctx, run_id, workspace, {"interview"}, message)


def approve(ctx: typer.Context, run_id: RunArg, workspace: WorkspaceOpt = None) -> None:
    """Approve the pending consent review, constitution, pair review, training or revision."""
    _answer(ctx, run_id, workspace, A.APPROVABLE, A.approve())


def reject(
    ctx: typer.Context,
    run_id: RunArg,
    feedback: Annotated[str, typer.Option(help="Why, for the model's redraft.")] = "",
    pair: Annotated[list[str] | None, typer.Option(help="In a pair review: a pair id to drop (repeatable).")] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Reject the pending approval (with feedback, a constitution draft is redrafted; with --pair, drop pairs)."""
    if pair:
        _answer(ctx, run_id, workspace, {"pair_review"}, A.drop_pairs(pair))
        return
    _answer(ctx, run_id, workspace, A.REJECTABLE, A.reject(feedback))


def review(ctx: typer.Context, run_id: RunArg, workspace: WorkspaceOpt = None) -> None:
    """Go through the pairs sampled for review one by one: accept or reject each."""
    p = protocol(ctx, workspace)
    st = p.status(run_id)
    if not (st.status == "waiting" and st.interrupt["type"] == "pair_review"):
        raise LuthiTuneError(f"Run {run_id} has no pairs waiting for review (it is {st.status}).")
    decisions = {}
    for pair in st.interrupt["pairs"]:
        console.print(
            Panel(
                f"[bold]request[/]: {escape(pair['prompt'])}\n\n[bold]rejected[/]: {escape(pair['rejected'])}\n\n"
                f"[bold]critique[/]: {escape(pair['critique'])}\n\n[bold]chosen[/]: {escape(pair['chosen'])}",
                title=f"{pair['id']} ({pair['category']})",
            )
        )
        keep = typer.confirm("Train on this pair?", default=True)
        decisions[pair["id"]] = "accept" if keep else "reject"
    advance(p, run_id, A.review_pairs(decisions, st.interrupt["pairs"]))


def edit(
    ctx: typer.Context,
    run_id: RunArg,
    workspace: WorkspaceOpt = None,
    file: Annotated[typer.FileText | None, typer.Option(help="Read the edited text from a file.")] = None,
) -> None:
    """Edit the pending constitution draft or proposed revision in $EDITOR (or from --file); the model then ratifies
    it."""
    p = protocol(ctx, workspace)
    st = p.status(run_id)
    if not st.interrupt or st.interrupt["type"] not in A.EDITABLE:
        raise LuthiTuneError(
            f"Run {run_id} has no constitution draft, proposed revision or constitution to write waiting for you."
        )
    text = file.read() if file else typer.edit(st.interrupt["text"], extension=".md")
    # fails here, with a clear message, rather than inside the graph
    answer = A.write(text) if st.interrupt["type"] == "constitution_write" else A.edit(text, st.interrupt["text"])
    if answer is None:
        console.print("No change made; the draft still waits for review.")
        return
    advance(p, run_id, answer)


def interview(ctx: typer.Context, run_id: RunArg, workspace: WorkspaceOpt = None) -> None:
    """Talk with the model: an interactive loop over the interview's turns (/done ends)."""
    p = protocol(ctx, workspace)
    st = p.status(run_id)
    while st.status == "waiting" and st.interrupt["type"] == "interview":
        message = typer.prompt("you")
        st = advance(p, run_id, message)


def history(ctx: typer.Context, run_id: RunArg, workspace: WorkspaceOpt = None) -> None:
    """List a run's checkpoints, newest first."""
    p = protocol(ctx, workspace)
    t = Table("checkpoint", "step", "next", "waiting for", "created")
    for h in p.history(run_id):
        t.add_row(h["checkpoint_id"], str(h["step"]), ", ".join(h["next"]), h["interrupt"] or "", h["created_at"][:19])
    console.print(t)


def fork(
    ctx: typer.Context,
    run_id: RunArg,
    checkpoint: Annotated[str, typer.Option(help="Checkpoint id to start from (see `luthitune history RUN`).")],
    name: Annotated[str | None, typer.Option(help="Id of the new run (default: generated).")] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Start a new run from an earlier checkpoint of RUN, e.g. to redo the data after editing the constitution.

    The new run keeps what RUN had stored up to that checkpoint and redoes everything after it; RUN is unchanged.
    """
    p = protocol(ctx, workspace)
    new_id = p.fork(run_id, checkpoint, name)
    console.print(f"Forked [bold]{run_id}[/] at {checkpoint} into [bold]{new_id}[/].")
    show_status(p.status(new_id))


def register(app: typer.Typer) -> None:
    for fn in (run, resume, status, runs, answer, approve, reject, review, edit, interview, history, fork):
        app.command()(fn)
