"""Integration tab (DPO training: settings, the config file, start with confirmation, live curve, cancel, adapter and
manifest) and Evaluation tab (base vs adapter across cycles, answers side by side, report, provenance)."""

from __future__ import annotations

import json

import gradio as gr

from luthitune import actions as A
from luthitune.errors import UsageError
from luthitune.ui import views

# The original tool's fields, and the few that keep a CPU run short, by their short names (see training.config).
FIELDS = (
    ("learning_rate", "Learning rate (training.learning_rate)"),
    ("epochs", "Epochs (training.num_train_epochs)"),
    ("beta", "DPO beta (dpo.beta): lower is gentler"),
    ("batch_size", "Batch size (training.batch_size)"),
    ("max_steps", "Max steps (training.max_steps; -1: by epochs)"),
    ("max_length", "Max length in tokens (dpo.max_length)"),
)
SECTION = {
    "learning_rate": ("training", "learning_rate"),
    "epochs": ("training", "num_train_epochs"),
    "beta": ("dpo", "beta"),
    "batch_size": ("training", "batch_size"),
    "max_steps": ("training", "max_steps"),
    "max_length": ("dpo", "max_length"),
}
INTEGER = {"batch_size", "max_steps", "max_length"}


def run_training(p, run_id) -> dict:
    """The run's stored training settings, by section (as hyperparameters.yaml)."""
    return A.effective_training(views.context(p, run_id).get("train"), {})


def overrides(values) -> dict:
    out = {}
    for (key, label), v in zip(FIELDS, values, strict=True):
        if v is None or v == "":
            raise UsageError(f"{label} needs a value.")
        out[key] = int(v) if key in INTEGER else float(v)
    return out


def live_curve(p, run_id):
    df = views.training_curve(p, run_id)
    if df.empty:
        return None, "*No training steps yet.*"
    last = df[df["step"] == df["step"].max()]
    metrics = ", ".join(f"{r.metric} {r.value:.4f}" for r in last.itertuples())
    return df, f"Step **{int(df['step'].max())}**: {metrics}"


def build_integration(page) -> None:
    from luthitune.ui.app import guarded

    wb = page.wb
    gr.Markdown(
        "DPO with a LoRA adapter on the weights that were interviewed: the model is trained toward the answers it "
        "preferred itself. Settings below apply to this run (they start from `config/hyperparameters.yaml`)."
    )
    with gr.Group(visible=False, elem_classes=["lt-pending"]) as pending:
        pending_md = gr.Markdown(elem_id="training-pending")
        with gr.Row():
            start = gr.Button("Start training…", variant="primary", elem_id="start-training")
            decline = gr.Button("Decline training (end the run)", variant="stop", elem_id="decline-training")
        with gr.Row(visible=False) as confirm_row:
            confirm_md = gr.Markdown(elem_id="confirm-text")
            confirm = gr.Button("Confirm: train now", variant="primary", elem_id="confirm-training")
            back = gr.Button("Back", elem_id="confirm-back")
    with gr.Row():
        with gr.Column(scale=2):
            adapter = gr.Textbox(label="Adapter name", interactive=False, elem_id="adapter-name")
            with gr.Row():
                inputs = [gr.Number(label=label, elem_id=f"hp-{key}") for key, label in FIELDS]
            save = gr.Button("Save settings for this run", elem_id="save-training")
            with gr.Row():
                stop = gr.Button("Cancel training", variant="stop", elem_id="training-cancel")
                resume = gr.Button("Resume training", visible=False, elem_id="training-resume")
            live_md = gr.Markdown(elem_id="training-live")
            curve = gr.LinePlot(
                x="step",
                y="value",
                color="metric",
                title="Loss, reward margin and reward accuracy per step",
                show_label=False,
                elem_id="training-curve",
                height=320,
            )
            result = gr.Markdown(elem_id="training-result")
            manifest = gr.JSON(label="Adapter manifest (luthitune-manifest.json)", elem_id="manifest", open=True)
        with gr.Column(scale=1):
            yaml_text = gr.Code(
                label="config/hyperparameters.yaml (defaults for new runs)",
                language="yaml",
                interactive=True,
                lines=22,
                elem_id="hp-yaml",
            )
            with gr.Row():
                validate = gr.Button("Validate", elem_id="hp-validate")
                save_yaml = gr.Button("Save file", elem_id="hp-save")
                apply_yaml = gr.Button("Save and use for this run", elem_id="hp-apply")

    def refresh(p, run_id, st):
        i = views.waiting_for(st, "confirm_training")
        known = bool(run_id and p.store.get("runs", run_id))
        train = run_training(p, run_id) if known else {}
        values = [train[SECTION[k][0]][SECTION[k][1]] if train else None for k, _ in FIELDS]
        rows = views.training_runs(p, run_id)
        row = rows[-1] if rows else None
        if row and row["status"] == "done":
            done = f"**Adapter:** `{row['adapter_path']}` (cycle {row['cycle']}, dataset `{row['dataset_hash'][:12]}`)"
        elif row:
            done = f"Training of cycle {row['cycle']} is {row['status']}."
        else:
            done = ""
        pending_text = (
            f"### Ready to train\n{i['pairs']} pairs to train on, {i['held_out']} held out for evaluation. "
            "Check the settings, then start."
            if i
            else ""
        )
        stopped = bool(st and st.status == "interrupted" and "train_dpo" in st.next and not wb.busy(run_id))
        return [
            gr.update(visible=bool(i)),
            pending_text,
            gr.update(visible=stopped),
            gr.update(visible=False),
            row["adapter_name"] if row else "assigned by the training node when it starts (RUN-cCYCLE)",
            *values,
            done,
            views.manifest(row),
            A.hyperparameters_text(wb.ws),
        ]

    page.part([pending, pending_md, resume, confirm_row, adapter, *inputs, result, manifest, yaml_text], refresh)

    def do_resume(run_id):
        if not run_id:
            raise UsageError("Choose a run first (Runs tab).")
        wb.submit(run_id, what="resume training from its last checkpoint")
        return "Resuming training."

    resume.click(guarded(do_resume), [page.run], [page.notice])
    page.part([curve, live_md], lambda p, run_id, st: list(live_curve(p, run_id)), live=True)

    def save_settings(run_id, *values):
        if not run_id:
            raise UsageError("Choose a run first (Runs tab).")
        if wb.busy(run_id):
            raise UsageError(f"Run {run_id} is working; its settings were fixed when this step started.")
        A.update_settings(wb.protocol(), run_id, train=overrides(values))
        return "Training settings saved for this run."

    save.click(guarded(save_settings), [page.run, *inputs], [page.notice])

    def ask_confirm(run_id, *values):
        i = wb.pending(run_id, {"confirm_training"})
        o = overrides(values)
        text = (
            f"Train on **{i['pairs']}** pairs with learning rate {o['learning_rate']:g}, {o['epochs']:g} epoch(s), "
            f"beta {o['beta']:g}, batch {o['batch_size']}, max steps {o['max_steps']}, max length {o['max_length']}?"
        )
        return gr.update(visible=True), text

    start.click(guarded(ask_confirm), [page.run, *inputs], [confirm_row, confirm_md])
    back.click(lambda: gr.update(visible=False), None, [confirm_row])

    def do_train(run_id, *values):
        wb.pending(run_id, {"confirm_training"})
        A.update_settings(wb.protocol(), run_id, train=overrides(values))
        wb.submit(run_id, A.approve(), what="DPO training")
        return gr.update(visible=False), "Training started; the curve updates as steps finish."

    confirm.click(guarded(do_train), [page.run, *inputs], [confirm_row, page.notice])

    def do_decline(run_id):
        wb.pending(run_id, {"confirm_training"})
        wb.submit(run_id, A.reject(), what="decline training")
        return "Training declined; the run ends without training."

    decline.click(guarded(do_decline), [page.run], [page.notice])
    stop.click(
        guarded(lambda run_id: "Cancelling training…" if run_id and wb.cancel(run_id) else "Nothing is running."),
        [page.run],
        [page.notice],
    )

    def check_yaml(text):
        hp = A.validate_hyperparameters(wb.ws, text)
        t, d = hp.training, hp.dpo
        return f"Valid: learning rate {t.learning_rate:g}, {t.num_train_epochs:g} epoch(s), beta {d.beta:g}."

    def write_yaml(text):
        A.save_hyperparameters(wb.ws, text)
        return "Saved config/hyperparameters.yaml; new runs start from it."

    def use_yaml(run_id, text):
        hp = A.save_hyperparameters(wb.ws, text)
        if not run_id:
            raise UsageError("Saved the file; choose a run to apply it to.")
        if wb.busy(run_id):
            raise UsageError(f"Saved the file; run {run_id} is working, so its settings stay as they are.")
        A.update_settings(wb.protocol(), run_id, train=hp.model_dump(mode="json"))
        return f"Saved the file and applied it to {run_id}."

    validate.click(guarded(check_yaml), [yaml_text], [page.notice])
    save_yaml.click(guarded(write_yaml), [yaml_text], [page.notice])
    apply_yaml.click(guarded(use_yaml), [page.run, yaml_text], [page.notice])


def provenance(p, ws, run_id) -> dict | None:
    rows = views.training_runs(p, run_id)
    if not rows:
        return None
    row = rows[-1]
    out = {
        "training_run": {k: row[k] for k in ("id", "cycle", "adapter_name", "adapter_path", "status", "dataset_hash")},
        "metrics": json.loads(row["metrics_json"] or "{}"),
        "manifest": views.manifest(row),
    }
    run = p.run_row(run_id)
    out["model"] = {k: run[k] for k in ("backend", "chat_model", "base_model")}
    return out


def build_evaluation(page) -> None:
    wb = page.wb
    gr.Markdown("Base model versus the trained adapter, per cycle. Every number is a row of the `evaluations` table.")
    table = gr.Dataframe(label="Base vs adapter", interactive=False, elem_id="evaluation-table")
    chart = gr.BarPlot(
        x="bar",
        y="value",
        color="model",
        title="Newest cycle: base vs adapter",
        x_title="metric · model",
        show_label=False,
        sort=None,
        height=420,
        elem_id="evaluation-chart",
        x_label_angle=-45,
        color_map={"base": "#4c78a8", "adapter": "#f58518"},
    )
    trend = gr.LinePlot(
        x="cycle",
        y="adapter − base",
        color="metric",
        title="Across cycles: adapter − base",
        show_label=False,
        height=300,
        visible=False,
        elem_id="evaluation-trend",
    )
    with gr.Accordion("Answers side by side", open=True):
        answers = gr.Dataframe(
            label="Probe prompts: base vs adapter",
            interactive=False,
            wrap=True,
            elem_id="answers",
            max_height=480,
            column_widths=["5%", "7%", "20%", "24%", "10%", "24%", "10%"],
        )
        held_out = gr.Dataframe(
            label="Held-out pairs scored (chosen vs rejected)",
            interactive=False,
            wrap=True,
            elem_id="held-out",
            column_widths=["10%", "30%", "30%", "30%"],
        )
    with gr.Accordion("Report", open=True):
        report_md = gr.Markdown(elem_id="report")
    with gr.Accordion("Provenance", open=True):
        prov = gr.JSON(label="Training run, adapter manifest and model", elem_id="provenance", open=True)

    def refresh(p, run_id, st):
        rows = views.evaluations(p, run_id)
        answers_df = views.probe_answers(p, run_id)
        if answers_df.empty:  # no probe answers table: answers listed in an evaluation's details, if any
            answers_df = views.examples(rows)
        trend_df = views.evaluation_trend(rows)
        md, png = views.reports(wb.ws, run_id)
        return [
            views.evaluation_table(rows),
            views.evaluation_chart(rows),
            gr.update(value=trend_df, visible=trend_df is not None),
            gr.update(value=answers_df, visible=not answers_df.empty),
            views.held_out_examples(p, rows),
            views.report_markdown(md, png),
            provenance(p, wb.ws, run_id) if run_id and p.store.get("runs", run_id) else None,
        ]

    page.part([table, chart, trend, answers, held_out, report_md, prov], refresh)
