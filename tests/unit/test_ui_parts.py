"""The web UI's parts without a browser: intervals in the evaluation, the charts' axes, the consent record, the
training form and its command preview, the chat tab's models."""

from __future__ import annotations

import pandas as pd
import pytest
from fakes import SchemaFakeModel
from matplotlib.backends.backend_agg import FigureCanvasAgg

from luthitune.errors import UsageError
from luthitune.ui import charts, tab_chat, tab_training, views


def eval_rows() -> list[dict]:
    def row(model, metric, value, lo=None, hi=None, n=None, cycle=0):
        return {"cycle": cycle, "model": model, "metric": metric, "value": value, "lo": lo, "hi": hi, "n": n,
                "scorer": "rules", "details_json": "{}"}  # fmt: skip

    return [
        row("base", "probes.trap.humane_rate", 0.25, 0.1, 0.5, 12),
        row("adapter", "probes.trap.humane_rate", 0.5, 0.25, 0.75, 12),
        row("change", "probes.trap.humane_rate", 0.25, -0.05, 0.55, 12),
        row("base", "probes.benign.refusal_rate", 0.0, 0.0, 0.3, 8),
        row("adapter", "probes.benign.refusal_rate", 0.125, 0.02, 0.47, 8),
        row("adapter", "drift.kl_mean", 0.02),  # adapter only: in the table, not in the chart
    ]


def test_the_evaluation_table_shows_intervals_n_and_the_stored_change():
    table = views.evaluation_table(eval_rows())
    humane = table[table["metric"] == "probes.trap.humane_rate"].iloc[0]
    assert humane["base"] == "0.250 [0.100, 0.500] · n 12"
    assert humane["adapter"] == "0.500 [0.250, 0.750] · n 12"
    assert humane["change (adapter − base)"] == "0.250 [-0.050, 0.550] · n 12"  # the paired interval, not a - b
    assert "change" not in table.columns  # the change rows are a column of their metric, not a model
    assert table[table["metric"] == "drift.kl_mean"].iloc[0]["adapter"] == "0.020"


def test_the_evaluation_chart_has_bars_with_intervals_and_the_changes_against_zero():
    data = views.evaluation_chart(eval_rows())
    assert set(data["metric"]) == {"probes.trap.humane_rate", "probes.benign.refusal_rate"}
    fig = charts.evaluation_figure(data)
    bars, changes = fig.axes
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert labels == ["benign.refusal rate", "trap.humane rate"]  # horizontal: a long name has the room it needs
    kinds = [type(c).__name__ for c in bars.containers]
    assert len(bars.patches) == 4 and kinds.count("ErrorbarContainer") == 2  # base and adapter, with intervals
    assert any(abs(line.get_xdata()[0]) < 1e-9 for line in changes.lines)  # the zero line the intervals meet
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # it renders
    renderer = canvas.get_renderer()
    box = fig.bbox
    for label in bars.get_yticklabels():  # every label inside the figure
        extent = label.get_window_extent(renderer)
        assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1


def test_the_training_chart_has_one_axis_per_quantity_and_whole_steps():
    df = pd.DataFrame(
        [
            {"step": s, "value": v, "metric": m}
            for s in (1, 2)
            for m, v in (("loss", 0.69 - s / 100), ("margin", s / 50), ("accuracy", s / 2))
        ],
    )
    fig = charts.training_figure(df)
    assert [ax.get_ylabel() for ax in fig.axes] == ["DPO loss", "reward margin", "reward accuracy"]
    FigureCanvasAgg(fig).draw()
    ticks = [t for t in fig.axes[-1].get_xticks() if 1 <= t <= 2]
    assert ticks and all(float(t).is_integer() for t in ticks)  # 1 and 2, never 1.5
    assert fig.lt_fingerprint == df.to_json()  # the live view redraws only when the data changed


def test_the_consent_record_has_room_for_its_short_columns_and_says_why_unclear(workbench):
    p = workbench.protocol()
    run = p.start()
    p.store.upsert(
        "consents",
        {"id": f"{run}:c0:consent0", "run_id": run, "cycle": 0, "round": "0", "decision": "unclear",
         "reasons_json": "yes yes yes", "conditions_json": "", "checks_json": ["the reasons repeat one phrase"],
         "created_at": "2026-01-01T00:00:00"},
    )  # fmt: skip
    table = views.consents_table(p, run)
    assert list(table.columns) == views.CONSENT_COLUMNS and len(views.CONSENT_WIDTHS) == len(views.CONSENT_COLUMNS)
    row = table.iloc[0]
    assert row["decision"] == "unclear" and row["checks"] == "the reasons repeat one phrase"
    widths = dict(zip(views.CONSENT_COLUMNS, views.CONSENT_WIDTHS, strict=True))
    assert float(widths["cycle"].rstrip("%")) >= 6 and float(widths["reasons"].rstrip("%")) >= 25


FORM = [5e-5, 1, 0.1, 2, 2, 64, 8, 16, "q_proj, v_proj", "none"]


def test_the_training_form_gives_lora_and_quantisation_sections_that_merge(workspace):
    from luthitune.facilitator import effective_training

    sections = tab_training.overrides(FORM)
    assert sections["lora"] == {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    assert sections["model"] == {"load_in_4bit": False}
    merged = effective_training({}, sections)  # validated as the run stores it
    assert merged["lora"]["r"] == 8 and merged["training"]["max_steps"] == 2
    assert tab_training.overrides([*FORM[:8], "all-linear", FORM[9]])["lora"]["target_modules"] == "all-linear"
    back = [tab_training.field_value(k, merged) for k, *_ in tab_training.FIELDS]
    assert back[6:] == [8, 16, "q_proj, v_proj", "none"]  # the form shows what is stored
    with pytest.raises(UsageError, match="LoRA rank"):
        tab_training.overrides([*FORM[:6], None, *FORM[7:]])


def test_the_command_preview_is_a_recipe_the_train_command_reads(workspace, tmp_path):
    import yaml

    from luthitune.training.config import merge

    text = tab_training.command_preview("run-1", 0, FORM)
    assert "luthitune train data/exports/run-1-c0 --config recipe.yaml" in text
    assert "luthitune data export --run run-1 --cycle 0" in text
    recipe = yaml.safe_load(text.split("<<'EOF'\n", 1)[1].split("\nEOF", 1)[0])
    hp = merge(workspace.hyperparameters(), recipe, source="recipe.yaml")  # what `luthitune train --config` does
    assert hp.lora.r == 8 and hp.lora.target_modules == ["q_proj", "v_proj"] and hp.dpo.max_length == 64
    assert tab_training.command_preview("run-1", 0, [None, *FORM[1:]]).startswith("# Learning rate")


def test_the_chat_tab_uses_the_protocols_models_and_keeps_each_side_apart(workbench):
    base, trained = tab_chat.models(workbench, None, 0.2, 32)
    assert isinstance(base, SchemaFakeModel) and trained is None  # the injected model, as every node gets it
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    msgs = tab_chat.conversation("Be brief.", history, "Why?")
    assert [type(m).__name__ for m in msgs] == ["SystemMessage", "HumanMessage", "AIMessage", "HumanMessage"]
    p = workbench.protocol()
    run = p.start()
    assert tab_chat.adapter_choices(p, run) == []
    p.store.upsert("training_runs", {"id": f"{run}:c0:train", "run_id": run, "cycle": 0, "status": "done",
                                     "adapter_name": f"{run}-c0", "adapter_path": "/x"})  # fmt: skip
    assert tab_chat.adapter_choices(p, run) == [(f"cycle 0: {run}-c0", f"{run}:c0:train")]


def test_a_server_run_is_shown_in_the_status_line(workspace):
    from langgraph.checkpoint.memory import InMemorySaver

    from luthitune.graph.builder import build_graph
    from luthitune.graph.state import Context
    from luthitune.ui.app import status_line
    from luthitune.ui.jobs import Workbench

    ctx = Context(str(workspace.root)).with_seams(llm=SchemaFakeModel())
    build_graph(InMemorySaver()).invoke({}, {"configurable": {"thread_id": "studio-thread"}}, context=ctx)
    line = status_line(Workbench(workspace), "studio-thread")
    assert "in LangGraph's server" in line and "waiting for interview" in line


@pytest.fixture
def workbench(workspace):
    from luthitune.ui.jobs import Workbench

    wb = Workbench(workspace, llm=SchemaFakeModel())
    yield wb
    wb.shutdown()


def test_a_refresh_sends_a_form_only_the_values_that_changed(workspace):
    """The training settings are a form: when the run's state changes, a stored value the page already showed is
    not sent again, so what the user has typed over it stays; a stored value that changed is sent."""
    import gradio as gr

    from luthitune.ui.app import Page
    from luthitune.ui.jobs import Workbench

    stored = {"lora_r": 16, "beta": 0.1}
    page = Page(Workbench(workspace))
    page.part(["r", "beta"], lambda p, run_id, st: [stored["lora_r"], stored["beta"]], form=True)
    page.part(["status"], lambda p, run_id, st: ["waiting"])
    memo: dict = {}
    assert page.refresh(None, memo) == [16, 0.1, "waiting"]  # the first time: everything
    skipped = page.refresh(None, memo)
    assert [type(v) for v in skipped[:2]] == [type(gr.skip())] * 2 and skipped[2] == "waiting"
    stored["beta"] = 0.2  # saved elsewhere: the new value is sent, the untouched field is left as the user has it
    again = page.refresh(None, memo)
    assert type(again[0]) is type(gr.skip()) and again[1] == 0.2
    assert page.refresh(None) == [16, 0.2, "waiting"]  # without a memo (another run chosen): everything


def test_a_cancel_button_can_be_pressed_only_while_the_run_s_job_works(workspace):
    """A finished or idle run's Cancel is greyed out; while its job works, Cancel can be pressed."""
    from luthitune.ui.app import Page
    from luthitune.ui.jobs import Workbench

    wb = Workbench(workspace)
    page = Page(wb)
    page.cancel_button("cancel")
    working = {"r1"}
    wb.busy = lambda run_id: run_id in working  # type: ignore[method-assign]
    assert page.refresh("r1")[0]["interactive"] is True
    working.clear()
    assert page.refresh("r1")[0]["interactive"] is False
    assert page.refresh(None)[0]["interactive"] is False
