"""Practice tab: scenario count and category mix, generation with live progress and cancel, kept pairs and the
quarantine with reasons, the human review of a sample, and export."""

from __future__ import annotations

import gradio as gr

from luthitune import facilitator as A
from luthitune.errors import UsageError
from luthitune.ui import views

TASKS = ("scenarios", "self-critique", "judge")


def live_text(wb, p, run_id) -> str:
    """Generation progress: the job's latest events, else what the database holds."""
    if not run_id or p.store.get("runs", run_id) is None:
        return ""
    ctx = views.context(p, run_id)
    job = wb.job(run_id)
    lines = []
    if job is not None and job.active:
        for task in TASKS:
            e = job.progress.get(task)
            if e:
                total = e.get("total") or 0
                pct = int(100 * e.get("done", 0) / total) if total else 0
                bar = "█" * (pct // 5) + "░" * (20 - pct // 5)
                lines.append(f"`{bar}` **{task}** {e.get('done', 0)}/{total}")
        if job.cancel_requested:
            lines.append("*Cancelling at the next finished item…*")
    s = p.store
    n = {
        "generated": s.count("scenarios", run_id=run_id, status="generated"),
        "failed": s.count("scenarios", run_id=run_id, status="failed"),
        "pairs": s.count("pairs", run_id=run_id),
        "kept": s.count("pairs", run_id=run_id, status="kept"),
        "quarantined": s.count("pairs", run_id=run_id, status="quarantined"),
    }
    mix = ctx.get("category_mix") or {}
    total = sum(mix.values()) or 1
    lines.append(
        "Category mix: " + (", ".join(f"{k} {v / total:.0%}" for k, v in mix.items()) or "every category alike")
    )
    lines.append(
        f"Planned **{ctx.get('n_scenarios')}** scenarios per cycle · generated **{n['generated']}** "
        f"(failed {n['failed']}) · pairs **{n['pairs']}**: kept **{n['kept']}**, quarantined **{n['quarantined']}**"
    )
    return "\n\n".join(lines)


def build(page) -> None:
    from luthitune.ui.app import guarded

    wb = page.wb
    gr.Markdown(
        "For each scenario the model writes a first impulse (rejected), a critique citing its principles, and a "
        "refined answer (chosen). Generation starts when the constitution is approved; every item is stored the "
        "moment it is final, so Cancel (or a crash) loses only the items in flight and **Resume** redoes the rest."
    )
    live = gr.Markdown(elem_id="practice-live")
    with gr.Row():
        resume = gr.Button("Generate / resume", elem_id="practice-resume")
        stop = gr.Button("Cancel", variant="stop", elem_id="practice-cancel")
        export = gr.Button("Export dataset", elem_id="export")
    with gr.Group(visible=False, elem_classes=["lt-pending"]) as review:
        gr.Markdown("### Review a sample before training\nTick the pairs that should **not** be trained on.")
        sample = gr.Markdown(elem_id="review-pairs")
        drop = gr.CheckboxGroup(label="Reject these pairs", choices=[], elem_id="review-reject")
        with gr.Row():
            submit = gr.Button("Submit review", variant="primary", elem_id="submit-review")
            accept_all = gr.Button("Accept all", elem_id="accept-all")
    with gr.Row():
        stats = gr.Markdown(elem_id="practice-stats")
        mix = gr.Dataframe(label="Category mix (newest cycle)", interactive=False, elem_id="category-mix")
    kept = gr.Dataframe(
        label="Kept pairs",
        interactive=False,
        wrap=True,
        max_height=420,
        elem_id="kept-pairs",
        column_widths=["9%", "5%", "10%", "19%", "17%", "20%", "20%"],
    )
    quarantine = gr.Dataframe(
        label="Quarantine: each rejected item with the rule and the model's raw text",
        interactive=False,
        wrap=True,
        max_height=320,
        elem_id="quarantine",
        column_widths=["10%", "7%", "11%", "24%", "22%", "26%"],
    )

    def refresh(p, run_id, st):
        i = views.waiting_for(st, "pair_review")
        ps = views.practice_stats(p, run_id)
        if ps:

            def listed(counts: dict[str, int]) -> str:
                return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"

            summary = (
                f"**Cycle {ps['cycle']}**: {ps['scenarios']} scenarios ({ps['scenarios_failed']} failed), "
                f"{ps['pairs']} pairs: {ps['kept']} kept, {ps['quarantined']} quarantined.  \n"
                f"Why requests failed: {listed(ps['scenario_reasons'])}. "
                f"Why pairs were quarantined: {listed(ps['by_reason'])}."
            )
        else:
            summary = "*No practice data yet.*"
        ids = [(views.short_id(pair["id"]), pair["id"]) for pair in (i or {}).get("pairs", [])]
        return [
            gr.update(visible=bool(i)),
            views.review_cards(i),
            gr.update(choices=ids, value=[]),
            summary,
            views.category_table(ps),
            views.pairs_table(p, run_id, "kept"),
            views.quarantine_table(p, run_id),
        ]

    page.part([review, sample, drop, stats, mix, kept, quarantine], refresh)
    page.part([live], lambda p, run_id, st: [live_text(wb, p, run_id)], live=True)

    def do_resume(run_id):
        if not run_id:
            raise UsageError("Choose a run first (Runs tab).")
        st = wb.protocol().resumable(run_id)
        wb.submit(run_id, what="generate practice data" if "generate_scenarios" in st.next else "resume")
        return "Working; progress shows above."

    resume.click(guarded(do_resume), [page.run], [page.notice])
    page.cancel_button(stop)
    stop.click(
        guarded(lambda run_id: "Cancelling…" if run_id and wb.cancel(run_id) else "Nothing is running."),
        [page.run],
        [page.notice],
    )

    def do_review(run_id, rejected):
        i = wb.pending(run_id, {"pair_review"})
        decisions = {pid: "reject" for pid in rejected or []}
        wb.submit(run_id, A.review_pairs(decisions, i["pairs"]), what="apply the pair review")
        return f"Review sent: {len(decisions)} rejected, {len(i['pairs']) - len(decisions)} accepted."

    def do_accept_all(run_id):
        wb.pending(run_id, {"pair_review"})
        wb.submit(run_id, A.approve(), what="accept the reviewed pairs")
        return "All sampled pairs accepted."

    submit.click(guarded(do_review), [page.run, drop], [page.notice])
    accept_all.click(guarded(do_accept_all), [page.run], [page.notice])

    def do_export(run_id):
        from luthitune.dataset import export as write

        rec = write(wb.ws, run_id)
        files = "\n".join(f"- {k}: `{v}`" for k, v in rec["files"].items())
        return (
            f"Exported run {rec['run_id']} cycle {rec['cycle']}: {rec['split']['train']} train + "
            f"{rec['split']['held_out']} held-out pairs.\n{files}"
        )

    export.click(guarded(do_export), [page.run], [page.notice])
