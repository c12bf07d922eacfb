"""Chat tab: talk to the base model and a trained adapter side by side, the same message to both.

The two are the models the protocol itself uses (:func:`luthitune.nodes.services.llm`): on the embedded backend the same
weights with the adapter off and on; on a server backend the base on the server and the adapter as ``luthitune export
ollama`` made it (else on the local copy of the trained weights). A playground: nothing said here is stored.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from luthitune.errors import UsageError
from luthitune.ui import views

TOKEN_FIELDS = ("max_new_tokens", "num_predict", "max_tokens")  # embedded, Ollama, OpenAI-compatible


def adapter_choices(p, run_id: str | None) -> list[tuple[str, str]]:
    """The run's trained adapters, newest first: (label, training run id)."""
    rows = [r for r in views.training_runs(p, run_id) if r["status"] == "done" and r.get("adapter_path")]
    return [(f"cycle {r['cycle']}: {r['adapter_name']}", r["id"]) for r in reversed(rows)]


def models(wb, row: dict | None, temperature: float, max_tokens: int) -> tuple[Any, Any]:
    """The base chat model and, with a training run ``row``, the trained one, at this temperature and length."""
    from langgraph.runtime import Runtime

    from luthitune.graph.state import Context, Seams
    from luthitune.nodes import services

    rt = Runtime(
        context=Context(workspace=str(wb.ws.root)).with_seams(Seams(ws=wb.ws, store=wb.protocol().store, **wb.inject))
    )

    def limited(model: Any) -> Any:
        fields = getattr(type(model), "model_fields", {})
        update = {f: int(max_tokens) for f in TOKEN_FIELDS if f in fields}
        return model.model_copy(update=update) if update else model

    base = limited(services.llm(rt, temperature=float(temperature)))
    trained = None
    if row is not None:
        trained = limited(services.llm(rt, row["adapter_name"], row["adapter_path"], float(temperature)))
    return base, trained


def conversation(system: str, history: list[dict], message: str) -> list:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    kinds = {"user": HumanMessage, "assistant": AIMessage}
    out = [SystemMessage(system.strip())] if system and system.strip() else []
    out += [kinds[m["role"]](m["content"]) for m in history if m["role"] in kinds]
    return [*out, HumanMessage(message)]


def build(page) -> None:
    from luthitune.backends.structured import chat
    from luthitune.ui.app import guarded

    wb = page.wb
    gr.Markdown(
        "Talk to the **base** model and the **trained adapter** side by side: each message goes to both, and each "
        "keeps its own conversation. Nothing here is stored; the protocol's own answers are in the other tabs."
    )
    with gr.Row():
        adapter = gr.Dropdown(label="Adapter (this run's trainings)", choices=[], scale=3, elem_id="chat-adapter")
        temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="Temperature", scale=2, elem_id="chat-temp")
        max_tokens = gr.Slider(16, 512, value=128, step=16, label="Max new tokens", scale=2, elem_id="chat-tokens")
    system = gr.Textbox(label="System prompt (optional)", lines=1, elem_id="chat-system")
    with gr.Row(equal_height=True):
        base_chat = gr.Chatbot(label="Base model (the interviewed weights)", height=420, elem_id="chat-base")
        adapter_chat = gr.Chatbot(label="Adapter (trained on the model's own preferences)", height=420,
                                  elem_id="chat-trained")  # fmt: skip
    with gr.Row():
        message = gr.Textbox(label="Message to both", lines=2, scale=5, elem_id="chat-message")
        with gr.Column(scale=1, min_width=140):
            send = gr.Button("Send to both", variant="primary", elem_id="chat-send")
            clear = gr.Button("Clear", elem_id="chat-clear")

    def refresh(p, run_id, st):
        choices = adapter_choices(p, run_id)
        note = "Adapter (this run's trainings)" if choices else "Adapter: none trained in this run yet (base only)"
        return [gr.update(choices=choices, value=choices[0][1] if choices else None, label=note)]

    page.part([adapter], refresh)

    def say(run_id, training_id, temp, tokens, prompt, text, base_hist, trained_hist):
        text = (text or "").strip()
        if not text:
            raise UsageError("Write a message first.")
        p = wb.protocol()
        row = p.store.get("training_runs", training_id) if training_id else None
        if row is not None and row["run_id"] != run_id:
            row = None
        base, trained = models(wb, row, temp, tokens)
        base_hist, trained_hist = list(base_hist or []), list(trained_hist or [])
        asked = {"role": "user", "content": text}
        base_hist.append(asked)
        trained_hist.append(asked)
        yield "", base_hist, trained_hist
        base_hist.append(
            {"role": "assistant", "content": str(chat(base, conversation(prompt, base_hist[:-1], text)).content)}
        )
        yield "", base_hist, trained_hist
        if trained is None:
            reply = "*No adapter chosen: train one in the Integration tab.*"
        else:
            reply = str(chat(trained, conversation(prompt, trained_hist[:-1], text)).content)
        trained_hist.append({"role": "assistant", "content": reply})
        yield "", base_hist, trained_hist

    inputs = [page.run, adapter, temperature, max_tokens, system, message, base_chat, adapter_chat]
    outputs = [message, base_chat, adapter_chat]
    send.click(guarded(say), inputs, outputs)
    message.submit(guarded(say), inputs, outputs)
    clear.click(lambda: ([], []), None, [base_chat, adapter_chat])
