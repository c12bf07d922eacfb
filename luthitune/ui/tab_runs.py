"""Runs tab: list and create runs, choose backend and model, doctor, resume, cancel and fork from a checkpoint."""

from __future__ import annotations

import typing

import gradio as gr

from luthitune import facilitator as A
from luthitune import runoptions as RO
from luthitune.config import Config
from luthitune.errors import NotResumable, UsageError
from luthitune.ui import views

# The judge option's three values: the workspace's practice.judge, on or off.
JUDGE_DEFAULT = "workspace default (practice.judge)"
JUDGE: dict[str, bool | None] = {JUDGE_DEFAULT: None, "on": True, "off": False}


def number(name: str, value: int | None = None) -> gr.Number:
    """A whole-number field for run option ``name``: its label, help, lower bound and default."""
    return gr.Number(
        label=RO.label(name),
        info=RO.help_text(name),
        value=RO.default(name) if value is None else value,
        precision=0,
        minimum=RO.minimum(name),
    )


def build(page) -> None:
    from luthitune.ui.app import guarded

    wb = page.wb
    gr.Markdown(
        "Each run is one pass of the protocol, checkpointed after every step: it stops at every approval point "
        "(unless on autopilot) and can be resumed after a crash, a Cancel or a closed browser."
    )
    runs = gr.Dataframe(label="Runs in this workspace", interactive=False, elem_id="runs-table", max_height=260)
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Accordion("New run", open=True):
                with gr.Row():
                    name = gr.Textbox(label="Name (optional)", placeholder="run-…", elem_id="new-name")
                    # starts at the workspace's practice.scenarios, which is what an unset option means
                    scenarios = number("n_scenarios", wb.ws.config.practice.scenarios)
                    turns = number("interview_turns")
                    cycles = number("max_cycles")
                with gr.Row():
                    consent_rounds = number("max_consent_rounds")
                    draft_rounds = number("max_draft_rounds")
                    autopilot = gr.Checkbox(
                        label=RO.label("autopilot"), info=RO.help_text("autopilot"), value=RO.default("autopilot")
                    )
                    judge = gr.Radio(
                        list(JUDGE), value=JUDGE_DEFAULT, label=RO.label("judge"), info=RO.help_text("judge")
                    )
                start = gr.Button("Start run", variant="primary", elem_id="start-run")
            with gr.Accordion("Selected run: resume, cancel, fork", open=True):
                with gr.Row():
                    resume = gr.Button("Resume", elem_id="resume")
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel-run")
                history = gr.Dataframe(label="Checkpoints (newest first)", interactive=False, max_height=220)
                with gr.Row():
                    checkpoint = gr.Dropdown(label="Fork from checkpoint", choices=[], scale=3)
                    fork_name = gr.Textbox(label="New run name (optional)", scale=2)
                    fork = gr.Button("Fork", scale=1)
        with gr.Column(scale=2):
            with gr.Accordion("Backend and model (luthitune.yaml)", open=True):
                backend = gr.Dropdown(
                    label="Backend", choices=list(typing.get_args(Config.model_fields["backend"].annotation))
                )
                chat_model = gr.Textbox(label="Chat model (interviewed, generates the data)")
                base_model = gr.Textbox(label="Base model (trained; keep it the same model)")
                save_backend = gr.Button("Save for new runs")
            with gr.Accordion("Doctor", open=True):
                doctor = gr.Button("Run doctor", elem_id="doctor")
                checks = gr.Dataframe(
                    value=views.frame([], ["check", "status", "detail"]),
                    label="Checks",
                    interactive=False,
                    elem_id="doctor-table",
                    wrap=True,
                    column_widths=["27%", "15%", "58%"],
                )

    def refresh(p, run_id, st):
        busy = {r["id"] for r in p.runs() if wb.busy(r["id"])}
        hist = views.history_table(p, run_id)
        cfg = wb.ws.config
        return [
            views.runs_table(p, busy),
            hist,
            gr.update(choices=list(hist["checkpoint"]), value=None),
            cfg.backend,
            cfg.chat_model,
            cfg.base_model,
        ]

    page.part([runs, history, checkpoint, backend, chat_model, base_model], refresh)

    def start_run(name, scenarios, turns, cycles, consent_rounds, draft_rounds, autopilot, judge):
        p = wb.protocol()
        options = RO.RunOptions.of(
            autopilot=bool(autopilot),
            n_scenarios=None if scenarios is None else int(scenarios),
            judge=JUDGE.get(judge),
            **{
                key: RO.default(key) if value is None else int(value)
                for key, value in (
                    ("max_cycles", cycles),
                    ("interview_turns", turns),
                    ("max_consent_rounds", consent_rounds),
                    ("max_draft_rounds", draft_rounds),
                )
            },
        )
        run_id = p.start(options.settings(), run_id=(name or "").strip() or None)
        wb.submit(run_id, what="open the interview" if not autopilot else "run on autopilot")
        return gr.update(choices=views.run_choices(p), value=run_id), f"Started run **{run_id}**."

    start.click(
        guarded(start_run),
        [name, scenarios, turns, cycles, consent_rounds, draft_rounds, autopilot, judge],
        [page.run, page.notice],
    )

    def resume_run(run_id):
        if not run_id:
            raise UsageError("Choose a run first.")
        try:
            wb.protocol().resumable(run_id)
        except NotResumable as exc:  # said in the notice line, as the answer to the click
            return str(exc)
        wb.submit(run_id, what="resume from the last completed step")
        return f"Resuming {run_id} from its last completed step."

    resume.click(guarded(resume_run), [page.run], [page.notice])

    def cancel_run(run_id):
        if not run_id or not wb.cancel(run_id):
            return "Nothing is running for this run."
        return f"Cancelling {run_id}: it stops at the next progress point; Resume continues it."

    page.cancel_button(stop)
    stop.click(guarded(cancel_run), [page.run], [page.notice])

    def fork_run(run_id, checkpoint_id, new_name):
        if not run_id or not checkpoint_id:
            raise UsageError("Choose a run and one of its checkpoints to fork from.")
        p = wb.protocol()
        new_id = p.fork(run_id, checkpoint_id, (new_name or "").strip() or None)
        return gr.update(
            choices=views.run_choices(p), value=new_id
        ), f"Forked {run_id} at {checkpoint_id} → **{new_id}**."

    fork.click(guarded(fork_run), [page.run, checkpoint, fork_name], [page.run, page.notice])

    def save_config(backend, chat_model, base_model):
        values = {
            "backend": backend,
            "chat_model": (chat_model or "").strip(),
            "base_model": (base_model or "").strip(),
        }
        ws = A.set_config(wb.ws, **{k: v for k, v in values.items() if v})
        wb.reopen(ws)
        note = ""
        if ws.config.chat_model != ws.config.base_model:
            note = (
                " **Warning:** the chat model and the base model differ: the model that consents would not be "
                "the model trained."
            )
        return f"Saved to luthitune.yaml: backend {ws.config.backend}, model {ws.config.chat_model}.{note}"

    save_backend.click(guarded(save_config), [backend, chat_model, base_model], [page.notice])

    def run_doctor():
        table, ok = views.doctor_table(wb.ws)
        return (
            table,
            "Doctor: every required check passed." if ok else "Doctor: a required check **failed** (see table).",
        )

    doctor.click(guarded(run_doctor), None, [checks, page.notice])
