"""Runs tab: list and create runs, choose backend and model, doctor, resume, cancel and fork from a checkpoint."""

from __future__ import annotations

import typing

import gradio as gr

from luthitune import facilitator as A
from luthitune.config import Config
from luthitune.errors import UsageError
from luthitune.ui import views


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
                    # no minimum: an empty field (practice.scenarios of luthitune.yaml) would be refused as 0
                    scenarios = gr.Number(label="Scenarios per cycle", value=None, precision=0)
                    turns = gr.Number(label="Interview turns (autopilot)", value=3, precision=0, minimum=1)
                    cycles = gr.Number(label="Cycles", value=1, precision=0, minimum=1)
                with gr.Row():
                    consent_rounds = gr.Number(label="Consent rounds", value=2, precision=0, minimum=1)
                    draft_rounds = gr.Number(label="Draft rounds", value=3, precision=0, minimum=1)
                    autopilot = gr.Checkbox(label="Autopilot (answer every approval from configuration)")
                    judge = gr.Checkbox(label="Judge pass on every pair")
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
        if scenarios is not None and scenarios < 1:
            raise UsageError("Scenarios per cycle must be at least 1 (or empty: practice.scenarios in luthitune.yaml).")
        settings = {
            "autopilot": bool(autopilot),
            "n_scenarios": int(scenarios) if scenarios else None,
            "judge": bool(judge) or None,
            "max_cycles": int(cycles or 1),
            "interview_turns": int(turns or 3),
            "max_consent_rounds": int(consent_rounds or 2),
            "max_draft_rounds": int(draft_rounds or 3),
        }
        run_id = p.start({k: v for k, v in settings.items() if v is not None}, run_id=(name or "").strip() or None)
        wb.submit(run_id, what="open the interview" if not autopilot else "run on autopilot")
        return gr.update(choices=views.run_choices(p), value=run_id), f"Started run **{run_id}**."

    start.click(
        guarded(start_run),
        [name, scenarios, turns, cycles, consent_rounds, draft_rounds, autopilot, judge],
        [page.run, page.notice],
    )

    def resume_run(run_id):
        st = views.status(wb.protocol(), run_id)
        if st is None:
            raise UsageError("Choose a run first.")
        if st.status in {"done", "ended"}:
            return f"Run {run_id} has finished ({st.status}); nothing to resume."
        if st.status == "waiting":
            return f"Run {run_id} waits for {st.interrupt['type']}: answer it in its tab."
        wb.submit(run_id, what="resume from the last completed step")
        return f"Resuming {run_id} from its last completed step."

    resume.click(guarded(resume_run), [page.run], [page.notice])

    def cancel_run(run_id):
        if not run_id or not wb.cancel(run_id):
            return "Nothing is running for this run."
        return f"Cancelling {run_id}: it stops at the next progress point; Resume continues it."

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
