"""Integration tab (DPO training: settings, the config file, start with confirmation, live curve, cancel, adapter and
manifest) and Evaluation tab (base vs adapter across cycles, answers side by side, report, provenance)."""

from __future__ import annotations

import json

import gradio as gr

from luthitune import facilitator as A
from luthitune.errors import UsageError
from luthitune.ui import views

# The original tool's fields, LoRA's and quantisation (as LlamaBoard shows them), and the few that keep a CPU run
# short: (key, label, section, name in the section, kind).
FIELDS = (
    ("learning_rate", "Learning rate (training.learning_rate)", "training", "learning_rate", float),
    ("epochs", "Epochs (training.num_train_epochs)", "training", "num_train_epochs", float),
    ("beta", "DPO beta (dpo.beta): lower is gentler", "dpo", "beta", float),
    ("batch_size", "Batch size (training.batch_size)", "training", "batch_size", int),
    ("max_steps", "Max steps (training.max_steps; -1: by epochs)", "training", "max_steps", int),
    ("max_length", "Max length in tokens (dpo.max_length)", "dpo", "max_length", int),
    ("lora_r", "LoRA rank (lora.r)", "lora", "r", int),
    ("lora_alpha", "LoRA alpha (lora.lora_alpha)", "lora", "lora_alpha", int),
    ("target_modules", "LoRA target modules (lora.target_modules)", "lora", "target_modules", list),
    ("quantization", "Quantisation (model.load_in_4bit)", "model", "load_in_4bit", bool),
)
QUANTIZATION = {"none": False, "4-bit (QLoRA, CUDA)": True}
ALL_LINEAR = "all-linear"


EXPORT_MODES = {"default": None, "merged": "merged", "adapter": "adapter"}  # default: as the CLI chooses
CREATE = {"when Ollama answers": None, "yes": True, "no: write the files only": False}


def export_ollama(ws, adapter_path: str, name: str | None, mode: str | None, create: bool | None):
    """What `luthitune export ollama NAME --adapter PATH [--mode M] [--create/--no-create]` does."""
    from luthitune.export import export_ollama as export
    from luthitune.names import check_name

    name = (name or "").strip() or None
    if name is not None:
        check_name(name, "Ollama model name", ollama=True)
    return export(ws, adapter_path, name, mode=mode, create=create)


def export_summary(r) -> str:
    """An export's result in the words the CLI prints."""
    base = r.identity
    lines = [
        f"Exported **{r.name}** ({r.mode} mode): base {base.get('name')} {base.get('digest')} + adapter "
        f"{base['adapters'][0]}",
        f"- Modelfile: `{r.modelfile}`",
        *(f"- note: {n}" for n in r.notes),
    ]
    if r.created:
        lines.append(f"\nCreated **{r.name}** in Ollama at {r.url} ({r.status}). Talk to it: `ollama run {r.name}`")
    else:
        why = "Not created (you chose so)" if r.reachable else f"Ollama is not reachable at {r.url}"
        lines.append(f"\n{why}: create the model with\n\n```\n{r.command}\n```")
    return "\n".join(lines)


def run_training(p, run_id) -> dict:
    """The run's stored training settings, by section (as hyperparameters.yaml)."""
    return A.effective_training(views.context(p, run_id).get("train"), {})


def field_value(key: str, train: dict) -> object:
    """A form field's value from a run's training settings (by section)."""
    _, _, section, name, kind = next(f for f in FIELDS if f[0] == key)
    value = train[section][name]
    if kind is list:
        return value if isinstance(value, str) else ", ".join(value)
    if kind is bool:
        return next(label for label, on in QUANTIZATION.items() if on == bool(value))
    return value


def overrides(values) -> dict:
    """The form's values as hyperparameters.yaml's sections, checked for presence (ranges are checked on merge)."""
    out: dict[str, dict] = {}
    for (_, label, section, name, kind), v in zip(FIELDS, values, strict=True):
        if v is None or v == "":
            raise UsageError(f"{label} needs a value.")
        if kind is list:
            parts = [m.strip() for m in str(v).split(",") if m.strip()]
            value = ALL_LINEAR if parts == [ALL_LINEAR] else parts
        elif kind is bool:
            if v not in QUANTIZATION:
                raise UsageError(f"{label}: choose one of {', '.join(QUANTIZATION)}.")
            value = QUANTIZATION[v]
        else:
            value = kind(v)
        out.setdefault(section, {})[name] = value
    return out


def command_preview(run_id: str | None, cycle: int, values) -> str:
    """The commands that train the same way outside the web UI, with these settings as a recipe file."""
    import yaml

    try:
        sections = overrides(values)
    except UsageError as exc:
        return f"# {exc}"
    recipe = yaml.safe_dump(sections, sort_keys=False, default_flow_style=None, width=100).rstrip()
    run = run_id or "RUN"
    return (
        "# The settings above as a recipe (hyperparameters.yaml's sections):\n"
        f"cat > recipe.yaml <<'EOF'\n{recipe}\nEOF\n\n"
        "# The same training outside the protocol, on this run's kept pairs:\n"
        f"luthitune data export --run {run} --cycle {cycle}\n"
        f"luthitune train data/exports/{run}-c{cycle} --config recipe.yaml\n\n"
        "# Or a new run that trains this way (the sections under a `train:` key of its recipe):\n"
        "luthitune run --config run.yaml"
    )


def live_curve(p, run_id):
    from luthitune.ui.charts import training_figure

    df = views.training_curve(p, run_id)
    if df.empty:
        return None, "*No training steps yet.*"
    last = df[df["step"] == df["step"].max()]
    metrics = ", ".join(f"{r.metric} {r.value:.4f}" for r in last.itertuples())
    return training_figure(df), f"Step **{int(df['step'].max())}**: {metrics}"


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
            inputs = []
            with gr.Row():
                for key, label, _, _, kind in FIELDS[:6]:
                    inputs.append(gr.Number(label=label, elem_id=f"hp-{key}", precision=0 if kind is int else None))
            with gr.Row():
                for key, label, _, _, _ in FIELDS[6:8]:
                    inputs.append(gr.Number(label=label, elem_id=f"hp-{key}", precision=0))  # merge checks ranges
                inputs.append(
                    gr.Textbox(label=FIELDS[8][1], info="all-linear, or names: q_proj, v_proj", elem_id="hp-target")
                )
                inputs.append(gr.Dropdown(label=FIELDS[9][1], choices=list(QUANTIZATION), elem_id="hp-quant"))
            with gr.Accordion("Preview the command", open=False, elem_id="preview-accordion"):
                preview = gr.Code(language="shell", interactive=False, elem_id="command-preview", lines=14)
            save = gr.Button("Save settings for this run", elem_id="save-training")
            with gr.Row():
                stop = gr.Button("Cancel training", variant="stop", elem_id="training-cancel")
                resume = gr.Button("Resume training", visible=False, elem_id="training-resume")
            live_md = gr.Markdown(elem_id="training-live")
            curve = gr.Plot(show_label=False, elem_id="training-curve")
            result = gr.Markdown(elem_id="training-result")
            manifest = gr.JSON(label="Adapter manifest (luthitune-manifest.json)", elem_id="manifest", open=True)
            with gr.Accordion("Export to Ollama (as `luthitune export ollama`)", open=True, elem_id="export-ollama"):
                with gr.Row():
                    export_adapter = gr.Dropdown(label="Adapter", choices=[], scale=2, elem_id="export-adapter")
                    export_name = gr.Textbox(label="Ollama model name (optional)", scale=2, elem_id="export-name")
                    export_mode = gr.Dropdown(label="Mode", choices=list(EXPORT_MODES), value="default",
                                              scale=1, elem_id="export-mode")  # fmt: skip
                    export_create = gr.Dropdown(label="ollama create", choices=list(CREATE), scale=1,
                                                value="when Ollama answers", elem_id="export-create")  # fmt: skip
                export_btn = gr.Button("Export", elem_id="export-ollama-button")
                export_md = gr.Markdown(elem_id="export-result")
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
        values = [field_value(key, train) if train else None for key, *_ in FIELDS]
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
            command_preview(run_id, (st.values.get("cycle", 0) if st else 0), values),
            done,
            views.manifest(row),
            A.hyperparameters_text(wb.ws),
        ]

    page.part(
        [pending, pending_md, resume, confirm_row, adapter, *inputs, preview, result, manifest, yaml_text],
        refresh,
        form=True,  # the settings fields: a refresh keeps what the user has typed unless the stored value changed
    )

    def refresh_export(p, run_id, st):
        from luthitune.ui.tab_chat import adapter_choices

        choices = adapter_choices(p, run_id)
        return [gr.update(choices=choices, value=choices[0][1] if choices else None)]

    page.part([export_adapter], refresh_export)

    def do_export(run_id, training_id, name, mode, create):
        if not training_id:
            raise UsageError("Choose a trained adapter of this run (train one first).")
        row = wb.protocol().store.get("training_runs", training_id)
        if row is None or row["run_id"] != run_id or not row.get("adapter_path"):
            raise UsageError("Choose a trained adapter of this run.")
        return export_summary(export_ollama(wb.ws, row["adapter_path"], name, EXPORT_MODES[mode], CREATE[create]))

    export_btn.click(
        guarded(do_export), [page.run, export_adapter, export_name, export_mode, export_create], [export_md]
    )

    def show_preview(run_id, *values):
        st = views.status(wb.protocol(), run_id)
        return command_preview(run_id, st.values.get("cycle", 0) if st else 0, values)

    # One queue for every field's preview, one at a time in the order the edits were made: as separate listeners
    # they ran side by side, and on a busy machine a preview computed before the last edit could land after it.
    for field in inputs:
        field.change(
            guarded(show_preview),
            [page.run, *inputs],
            [preview],
            show_progress="hidden",
            concurrency_id="training-preview",
            concurrency_limit=1,
        )

    def do_resume(run_id):
        if not run_id:
            raise UsageError("Choose a run first (Runs tab).")
        wb.protocol().resumable(run_id)
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
        t, d, lora = o["training"], o["dpo"], o["lora"]
        text = (
            f"Train on **{i['pairs']}** pairs with learning rate {t['learning_rate']:g}, {t['num_train_epochs']:g} "
            f"epoch(s), beta {d['beta']:g}, batch {t['batch_size']}, max steps {t['max_steps']}, max length "
            f"{d['max_length']}, LoRA r {lora['r']} alpha {lora['lora_alpha']} on {lora['target_modules']}"
            f"{', 4-bit' if o['model']['load_in_4bit'] else ''}?"
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
    page.cancel_button(stop)
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


def evaluation_plot(rows: list[dict]):
    from luthitune.ui.charts import evaluation_figure

    data = views.evaluation_chart(rows)
    return None if data is None else evaluation_figure(data)


def build_evaluation(page) -> None:
    wb = page.wb
    gr.Markdown("Base model versus the trained adapter, per cycle. Every number is a row of the `evaluations` table.")
    table = gr.Dataframe(label="Base vs adapter", interactive=False, elem_id="evaluation-table")
    chart = gr.Plot(show_label=False, elem_id="evaluation-chart")
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
            evaluation_plot(rows),
            gr.update(value=trend_df, visible=trend_df is not None),
            gr.update(value=answers_df, visible=not answers_df.empty),
            views.held_out_examples(p, rows),
            views.report_markdown(md, png),
            provenance(p, wb.ws, run_id) if run_id and p.store.get("runs", run_id) else None,
        ]

    page.part([table, chart, trend, answers, held_out, report_md, prov], refresh)
