"""The workbench's web UI: a Gradio Blocks app with one tab per phase, over the same graph and database as the CLI.

``build_app(workbench)`` makes the page. A run selector at the top picks the run every tab shows; a timer polls
once a second: the status line and the live views (generation counts, the training curve) update on every tick,
and the whole page is re-read when the run's state changes (a node finished, a job ended, another process such as
the CLI wrote to it). Actions go through :mod:`luthitune.facilitator`, ``Protocol`` and the dataset / doctor modules;
long work is a background job of :class:`~luthitune.ui.jobs.Workbench`.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no calls home

import gradio as gr

from luthitune.errors import LuthiTuneError
from luthitune.ui import views
from luthitune.ui.jobs import Workbench

POLL_SECONDS = 1.0
CSS = """
.lt-status p { margin: 0; }
/* The status line is the run's own: Gradio's progress text ("processing | 0.4s", queue places) never covers it. */
#status [data-testid="status-tracker"] { display: none !important; }
.lt-pending { border-left: 4px solid var(--color-accent); padding-left: 8px; }
footer { display: none !important; }
#transcript button[aria-label="Clear"] { display: none; }  /* the transcript lives in the database */
#refresh { align-self: center; }
/* A table row as tall as its longest answer starts every cell at the top: centred, the id and the request of a
   kept pair sat below the table's scroll window and their cells looked empty. */
.body-cell .cell-wrap, td .cell-wrap { align-items: flex-start !important; }
"""


def guarded(fn: Callable) -> Callable:
    """Event handler wrapper: a LuthiTune error becomes one clear message in the page, never a stack trace."""

    if inspect.isgeneratorfunction(fn):  # a handler that streams (yields) its outputs

        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except LuthiTuneError as exc:
                raise gr.Error(str(exc), print_exception=False) from None

        return stream

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LuthiTuneError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return wrapper


@dataclass
class Page:
    """The components every tab shares, and the parts that are re-read when the run's state changes."""

    wb: Workbench
    run: Any = None  # the run selector (gr.Dropdown)
    notice: Any = None  # a line about the last action
    parts: list[tuple[list[Any], Callable]] = field(default_factory=list)
    live: list[tuple[list[Any], Callable]] = field(default_factory=list)
    forms: set[int] = field(default_factory=set)  # indexes into parts of the ones holding fields the user edits

    def part(self, outputs: list[Any], refresh: Callable, live: bool = False, form: bool = False) -> None:
        """Register components and the function (protocol, run id, status) → their values. A ``form`` part holds
        fields the user edits: when the run's state changes, only the values that changed since this page last sent
        them are sent again, so a refresh never puts back a stored value over what the user is typing."""
        if form and live:  # pragma: no cover - a wiring mistake
            raise ValueError("a form part is refreshed with the run's state, not by the live timer")
        if form:
            self.forms.add(len(self.parts))
        (self.live if live else self.parts).append((outputs, refresh))

    def cancel_button(self, button: Any) -> None:
        """``button`` cancels the selected run's job: it can be pressed only while that job is working."""
        self.part([button], lambda p, run_id, st: [gr.update(interactive=self.wb.busy(run_id))])

    @staticmethod
    def _values(parts, p, run_id, st) -> list:
        out: list = []
        for outputs, refresh in parts:
            values = refresh(p, run_id, st)
            if len(values) != len(outputs):  # pragma: no cover - a wiring mistake
                raise RuntimeError(f"{refresh.__name__} returned {len(values)} values for {len(outputs)} outputs")
            out += list(values)
        return out

    def outputs(self) -> list[Any]:
        return [c for outs, _ in self.parts for c in outs]

    def live_outputs(self) -> list[Any]:
        return [c for outs, _ in self.live for c in outs]

    def refresh(self, run_id: str | None, memo: dict | None = None) -> list:
        """Every part's values; with ``memo`` (the page's, updated here), a form part's unchanged ones are skipped."""
        p = self.wb.protocol()
        st = views.status(p, run_id)
        out: list = []
        for k, part in enumerate(self.parts):
            values = self._values([part], p, run_id, st)
            if memo is not None and k in self.forms:
                values = unchanged_skipped(values, memo, f"form{k}.")
            out += values
        return out

    def refresh_live(self, run_id: str | None) -> list:
        p = self.wb.protocol()
        return self._values(self.live, p, run_id, None)

    def stamp(self, run_id: str | None) -> str:
        """Changes whenever what the page shows of the run may have changed."""
        p = self.wb.protocol()
        job = self.wb.job(run_id)
        row = p.store.get("runs", run_id) if run_id else None
        counts = (
            [p.store.count(t, run_id=run_id) for t in ("messages", "constitution_versions", "consents")] if row else []
        )
        marks = [
            run_id,
            row and row["updated_at"],
            p.store.count("runs"),
            counts,
            job and [job.started, job.finished, job.node, job.outcome],
        ]
        return json.dumps(marks, default=str)


def fingerprint(value: Any) -> str:
    """What a sent value is made of (a chart: the data it was drawn from), to tell whether it changed."""
    found = getattr(value, "lt_fingerprint", None)
    if found is None:
        found = value.to_json() if hasattr(value, "to_json") else json.dumps(value, default=str)
    return found


def unchanged_skipped(values: list, memo: dict, prefix: str) -> list:
    """``values`` with each one equal to what ``memo`` says was sent last time replaced by ``gr.skip()``."""
    out = []
    for i, v in enumerate(values):
        key, found = f"{prefix}{i}", fingerprint(v)
        out.append(v if found != memo.get(key) else gr.skip())
        memo[key] = found
    return out


def status_line(wb: Workbench, run_id: str | None) -> str:
    p = wb.protocol()
    st = views.status(p, run_id)
    if st is None:
        return "No run selected. Start one in the **Runs** tab."
    from luthitune.narrate import cycle_label

    line = f"**{run_id}** · {cycle_label(st.status, st.values)} · "
    job = wb.job(run_id)
    if job is not None and job.active:
        line += f"**working** · {job.describe()}"
    elif st.status == "waiting":
        line += f"**waiting for {st.interrupt['type'].replace('_', ' ')}** · {st.interrupt.get('hint', '')}"
    elif st.status == "interrupted":
        line += f"**stopped inside {', '.join(st.next)}** · Resume (Runs or Practice tab) continues it"
    elif st.status == "ended":
        line += f"**ended** · {st.values.get('ended')}"
    elif st.status == "server":
        from luthitune.runs import server_note

        line += f"**in LangGraph's server** · {server_note(st)}"
    else:
        line += f"**{st.status}**"
    if job is not None and not job.active:
        line += f"  \n<small>{job.describe()}</small>"
    return line


def build_app(wb: Workbench) -> gr.Blocks:
    from luthitune.ui import tab_chat, tab_dialogue, tab_practice, tab_runs, tab_training

    page = Page(wb)
    with gr.Blocks(title="LuthiTune workbench", analytics_enabled=False) as demo:
        session = gr.State({})  # per browser tab: what it showed last (to skip unchanged updates)
        with gr.Row(equal_height=False):
            gr.Markdown("## LuthiTune workbench\n*Mentorship, not conditioning. Agency, not compliance.*", scale=3)
            page.run = gr.Dropdown(label="Run", choices=[], value=None, scale=2, elem_id="run-select")
            refresh_btn = gr.Button("↻ Refresh", scale=0, min_width=100, size="sm", elem_id="refresh")
        status = gr.Markdown(elem_id="status", elem_classes=["lt-status"])
        page.notice = gr.Markdown(elem_id="notice")
        page.part([page.run], lambda p, run_id, st: [gr.update(choices=views.run_choices(p))])
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
                tab_runs.build(page)
            with gr.Tab("Interview", id="interview", elem_id="tab-interview"):
                tab_dialogue.build_interview(page)
            with gr.Tab("Constitution", id="constitution", elem_id="tab-constitution"):
                tab_dialogue.build_constitution(page)
            with gr.Tab("Practice", id="practice", elem_id="tab-practice"):
                tab_practice.build(page)
            with gr.Tab("Integration", id="integration", elem_id="tab-integration"):
                tab_training.build_integration(page)
            with gr.Tab("Evaluation", id="evaluation", elem_id="tab-evaluation"):
                tab_training.build_evaluation(page)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                tab_chat.build(page)
            with gr.Tab("About", id="about", elem_id="tab-about"):
                gr.Markdown(about_text(), elem_id="about")

        full = page.outputs()
        live = page.live_outputs()

        def show(run_id, memo):
            # another run (or the page's first load): everything is sent, and what the forms show is noted
            memo = {"stamp": page.stamp(run_id), "status": status_line(wb, run_id)}
            values = page.refresh(run_id, memo=memo)  # an empty memo skips nothing, and notes what was sent
            return [memo, memo["status"], *values, *page.refresh_live(run_id)]

        def tick(run_id, memo):
            memo = dict(memo or {})
            out: list = []
            line = status_line(wb, run_id)
            out.append(line if line != memo.get("status") else gr.skip())
            memo["status"] = line
            stamp = page.stamp(run_id)
            out += page.refresh(run_id, memo) if stamp != memo.get("stamp") else [gr.skip()] * len(full)
            memo["stamp"] = stamp
            out += unchanged_skipped(page.refresh_live(run_id), memo, "live")
            return [memo, *out]

        def load(request: gr.Request):
            p = wb.protocol()
            ids = views.run_choices(p)
            wanted = request.query_params.get("run") if request else None
            return gr.update(choices=ids, value=wanted if wanted in ids else (ids[0] if ids else None))

        demo.load(load, None, page.run)
        # No progress overlay on these: Gradio's queue text ("processing | 0.4s") would cover the status line.
        everything = [session, status, *full, *live]
        page.run.change(guarded(show), [page.run, session], everything, show_progress="hidden")
        refresh_btn.click(guarded(show), [page.run, session], everything, show_progress="hidden")
        gr.Timer(POLL_SECONDS).tick(
            guarded(tick), [page.run, session], [session, status, *full, *live], show_progress="hidden"
        )
    return demo


def about_text() -> str:
    from importlib.resources import files

    return files("luthitune.ui").joinpath("about.md").read_text(encoding="utf-8")


def theme() -> Any:
    # System fonts: the default theme fetches web fonts, and this tool must work offline.
    return gr.themes.Default(
        primary_hue="orange", font=["system-ui", "Segoe UI", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )


def launch(wb: Workbench, host: str = "127.0.0.1", port: int | None = None, block: bool = True, **kw: Any) -> Any:
    """Serve the app on ``host:port`` (see :mod:`luthitune.ui.serve`: only the addresses it is bound to are answered
    unless ``allow_remote=True``). ``block=False`` returns at once (tests); ``.local_url`` is the address."""
    from luthitune.cli.ui import free_port
    from luthitune.ui.serve import serve

    demo = build_app(wb)
    demo.queue(default_concurrency_limit=8)
    served = serve(
        demo,
        host,
        port or free_port(host),
        allow_remote=bool(kw.get("allow_remote")),
        ssr_mode=False,
        show_error=True,
        theme=theme(),
        css=CSS,
        allowed_paths=[str(wb.ws.data_dir / "reports")],  # the evaluation report's chart
    )
    if block:
        try:
            while served.is_running:
                served.thread.join(0.5)
        finally:
            served.close()
    return served
