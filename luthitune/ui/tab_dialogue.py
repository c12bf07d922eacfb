"""Interview and Constitution tabs: the dialogue, the consent record, and the drafts a human approves."""

from __future__ import annotations

import gradio as gr

from luthitune import facilitator as A
from luthitune.errors import UsageError
from luthitune.ui import views

REVIEWS = ("consent_review", "constitution_review", "revision_review", "constitution_write")
TITLES = {
    "consent_review": "The model answered the consent question",
    "constitution_review": "A constitution draft waits for your review",
    "revision_review": "The trained model proposes an amended constitution",
    "constitution_write": "The model's drafts were not usable: write the constitution, or end the run",
}


def build_interview(page) -> None:
    from luthitune.nodes.interview import DONE
    from luthitune.ui.app import guarded

    wb = page.wb
    gr.Markdown(
        "The facilitator (you) talks with the model about harm, refusals and agency; its words are kept verbatim. "
        f"Send `{DONE}` (or **End interview**) when the principles have come out; the consent question follows."
    )
    chat = gr.Chatbot(label="Transcript", height=460, elem_id="transcript", buttons=["copy"])
    hint = gr.Markdown(elem_id="interview-hint")
    with gr.Row():
        message = gr.Textbox(label="Your message", lines=2, scale=5, elem_id="message", interactive=False)
        with gr.Column(scale=1, min_width=160):
            send = gr.Button("Send", variant="primary", elem_id="send", interactive=False)
            done = gr.Button("End interview (/done)", elem_id="end-interview", interactive=False)
    autopilot = gr.Checkbox(
        label="Autopilot: the built-in question bank asks, and approvals are answered from configuration",
        elem_id="autopilot",
    )

    def refresh(p, run_id, st):
        waiting = views.waiting_for(st, "interview") if not wb.busy(run_id) else None
        ctx = views.context(p, run_id) if run_id and p.store.get("runs", run_id) else {}
        if waiting:
            note = f"Turn {waiting.get('turn', '?')}: the model waits for your next message."
        elif st is None:
            note = ""
        elif wb.busy(run_id):
            note = "The model is answering…"
        else:
            note = "The interview is not waiting for a message now."
        ready = gr.update(interactive=bool(waiting))  # Send and End interview only when a message is due
        return [views.transcript(p, run_id), note, gr.update(value=bool(ctx.get("autopilot"))), ready, ready, ready]

    page.part([chat, hint, autopilot, message, send, done], refresh)

    def say(run_id, text, history):
        text = (text or "").strip()
        if not text:
            raise UsageError(f"Write a message first (or {DONE} to end the interview).")
        wb.pending(run_id, {"interview"})
        wb.submit(run_id, text, what="the model answers" if text != DONE else "end the interview")
        shown = [*(history or []), {"role": "user", "content": text}]
        return "", shown, "Sent; the model is answering…" if text != DONE else "Interview ended; asking for consent…"

    send.click(guarded(say), [page.run, message, chat], [message, chat, page.notice])
    message.submit(guarded(say), [page.run, message, chat], [message, chat, page.notice])
    done.click(
        guarded(lambda run_id, history: say(run_id, DONE, history)), [page.run, chat], [message, chat, page.notice]
    )

    def toggle(run_id, on):
        if not run_id:
            return "Choose a run first."
        p = wb.protocol()
        if bool(views.context(p, run_id).get("autopilot")) == bool(on):
            return gr.skip()
        A.update_settings(p, run_id, autopilot=bool(on))
        st = p.status(run_id, record=False)
        if on and st.status == "waiting" and not wb.busy(run_id):
            # The pending step re-runs on autopilot and answers itself: the value sent is not asked for.
            wb.submit(run_id, A.approve(by="autopilot"), what="continue on autopilot")
            return "Autopilot on: the run continues by itself."
        return f"Autopilot {'on' if on else 'off'}: it applies from the run's next step."

    autopilot.input(guarded(toggle), [page.run, autopilot], [page.notice])


def build_constitution(page) -> None:
    from luthitune.ui.app import guarded

    wb = page.wb
    with gr.Group(visible=False, elem_classes=["lt-pending"]) as pending:
        pending_md = gr.Markdown(elem_id="pending")
        with gr.Row():
            approve = gr.Button("Approve", variant="primary", elem_id="approve")
            reject = gr.Button("Reject", variant="stop", elem_id="reject")
        feedback = gr.Textbox(label="Feedback for the redraft (with Reject)", lines=2, elem_id="feedback")
        with gr.Accordion(
            "Edit the text (the model is then asked to consent to it)", open=False, visible=False
        ) as editing:
            edited = gr.Textbox(label="Constitution text", lines=12, elem_id="edit-text")
            submit_edit = gr.Button("Submit edit", elem_id="submit-edit")
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Dataframe(label="Versions", interactive=False, elem_id="versions")
            shown = gr.Dropdown(label="Show version", choices=[], elem_id="show-version")
            text = gr.Markdown(elem_id="constitution-text")
        with gr.Column(scale=2):
            with gr.Row():
                old = gr.Dropdown(label="Diff from", choices=[])
                new = gr.Dropdown(label="to", choices=[])
            diff = gr.HTML(elem_id="diff")
    consents = gr.Dataframe(
        label="Consent record",
        interactive=False,
        wrap=True,
        elem_id="consents",
        column_widths=views.CONSENT_WIDTHS,
        value=views.frame([], views.CONSENT_COLUMNS),
    )

    def version_map(p, run_id):
        return {str(v["version"]): v for v in views.versions(p, run_id)}

    def pending_text(i):
        kind = i["type"]
        lines = [f"### {TITLES[kind]}", f"*{i.get('hint', '')}*", ""]
        if kind == "consent_review":
            lines += [f"**Decision:** {i['decision']}", f"**Reasons:** {i['reasons']}"]
            if i.get("conditions"):
                lines.append(f"**Conditions:** {i['conditions']}")
            if i.get("checks"):
                lines.append(f"**Why it is unclear:** {'; '.join(i['checks'])}")
            lines.append("\nA “no”, or an unclear answer, is respected either way: it is never counted as consent.")
        elif kind == "constitution_write":
            lines += [f"**Why:** {i.get('why', '')}", "", "Edit the starter below (or write your own) and submit it."]
        elif kind == "constitution_review":
            lines += [f"*Written by {i.get('author', 'the model')}.*", views.constitution_md(i["text"])]
        else:
            lines += [views.constitution_md(i["text"]), "", "**Amendments:**"]
            for a in i.get("amendments", {}).get("amendments", []):
                state = "applied" if a.get("applied") else f"not applied ({a.get('why', '')})"
                lines.append(f"- {a.get('action')} {a.get('principle_id', '')} {a.get('title', '')}: {state}")
        if i.get("conditions") and kind != "consent_review":
            lines += ["", "**The model's conditions for taking part:**", *(f"- {c}" for c in i["conditions"])]
        if i.get("problems"):
            lines += ["", "**Your last text was refused:**", *(f"- {c}" for c in i["problems"])]
        return "\n".join(lines)

    def refresh(p, run_id, st):
        vs = version_map(p, run_id)
        keys = list(vs)
        choices = views.version_choices(list(vs.values()))
        i = views.waiting_for(st, REVIEWS)
        is_draft = bool(i and i["type"] in A.EDITABLE)
        latest = keys[-1] if keys else None
        return [
            gr.update(visible=bool(i)),
            pending_text(i) if i else "",
            gr.update(value=""),
            gr.update(visible=is_draft),
            gr.update(value=i["text"] if is_draft else ""),
            views.versions_table(list(vs.values())),
            gr.update(choices=choices, value=latest),
            views.constitution_md(vs[latest]["text"]) if latest else "*No constitution yet: it follows the interview.*",
            gr.update(choices=choices, value=keys[-2] if len(keys) > 1 else latest),
            gr.update(choices=choices, value=latest),
            views.diff_html(vs.get(keys[-2]) if len(keys) > 1 else None, vs.get(latest)),
            views.consents_table(p, run_id),
        ]

    page.part([pending, pending_md, feedback, editing, edited, table, shown, text, old, new, diff, consents], refresh)

    def show_version(run_id, v):
        row = version_map(wb.protocol(), run_id).get(v)
        return views.constitution_md(row["text"]) if row else ""

    shown.change(guarded(show_version), [page.run, shown], [text])

    def show_diff(run_id, a, b):
        vs = version_map(wb.protocol(), run_id)
        return views.diff_html(vs.get(a), vs.get(b))

    old.change(guarded(show_diff), [page.run, old, new], [diff])
    new.change(guarded(show_diff), [page.run, old, new], [diff])

    def do_approve(run_id):
        i = wb.pending(run_id, REVIEWS)
        wb.submit(run_id, A.approve(), what=f"approved {i['type'].replace('_', ' ')}")
        return "Approved; the run continues."

    def do_reject(run_id, text):
        i = wb.pending(run_id, REVIEWS)
        wb.submit(run_id, A.reject(text or ""), what=f"rejected {i['type'].replace('_', ' ')}")
        return "Rejected." + (" The model redrafts with your feedback." if i["type"] == "constitution_review" else "")

    def do_edit(run_id, text):
        i = wb.pending(run_id, A.EDITABLE)
        answer = A.write(text) if i["type"] == "constitution_write" else A.edit(text, i["text"])
        if answer is None:
            return "No change made; the draft still waits for review."
        wb.submit(run_id, answer, what="the model ratifies the edited constitution")
        return "Edit sent; the model is asked to ratify it."

    approve.click(guarded(do_approve), [page.run], [page.notice])
    reject.click(guarded(do_reject), [page.run, feedback], [page.notice])
    submit_edit.click(guarded(do_edit), [page.run, edited], [page.notice])
